// Runs lowbit's GPTQ on every linear of a block from a `lowbit stats` file (real weights and
// Hessians) and writes the codes, losses and times, for scripts/quant_reference.py --compare,
// which runs the PyTorch reference on the same inputs and reports the code mismatch rate.
//
//   gptq_layers STATS.safetensors OUT.safetensors
#include "formats/safetensors.h"
#include "quant/gptq.h"
#include "model/llama_model.h"

#include <fmt/format.h>

#include <chrono>
#include <cstring>

using namespace lowbit;

int main(int argc, char** argv) {
  if (argc != 3) {
    fmt::print(stderr, "usage: gptq_layers STATS.safetensors OUT.safetensors\n");
    return 2;
  }
  try {
    auto stats = SafetensorsFile::open(argv[1]);
    const char* sites[] = {"qkv_input", "qkv_input", "qkv_input", "o_input", "gate_up_input", "gate_up_input",
                           "down_input"};
    SafetensorsWriter out;
    struct Config {
      int bits;
      int64_t g;
      bool act;
    };
    for (LinearKind k : kAllLinears) {
      const Tensor w = stats->tensor(std::string("weight.") + linear_name(k));
      const Tensor h = stats->tensor(std::string(sites[int(k)]) + ".hessian");
      std::vector<double> hv(h.data_as<double>(), h.data_as<double>() + h.numel());
      for (const Config c : {Config{4, 128, false}, Config{3, 128, false}, Config{4, 128, true}}) {
        GptqOptions o;
        o.bits = c.bits;
        o.group_size = c.g;
        o.act_order = c.act;
        const auto t0 = std::chrono::steady_clock::now();
        GptqResult r = gptq_quantize(w.data_as<float>(), w.dim(0), w.dim(1), hv, o, DType::F32);
        const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        const std::string key = fmt::format("gptq.w{}.g{}.sym0.act{}.static0.{}", c.bits, c.g, int(c.act), linear_name(k));
        Tensor codes = Tensor::empty(DType::U8, {w.dim(0), w.dim(1)});
        std::memcpy(codes.mutable_data(), r.q.codes.data(), r.q.codes.size());
        Tensor loss = Tensor::empty(DType::F64, {1});
        loss.mutable_data_as<double>()[0] = r.loss;
        out.add(key + ".codes", codes);
        out.add(key + ".loss", loss);
        fmt::print("{:<40} {} {:.3f} s, loss {:.6g}\n", key, w.shape_str(), s, r.loss);
      }
    }
    out.write(argv[2]);
  } catch (const std::exception& e) {
    fmt::print(stderr, "gptq_layers: {}\n", e.what());
    return 1;
  }
  return 0;
}
