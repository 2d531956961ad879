// lowbit stats --model M --layer L [calibration flags as quantize's] [--device cpu|cuda] -o OUT.safetensors
// The input statistics of one block's linears on calibration data (GPTQ's Hessian, per-channel
// abs-max and mean |x|) and the block's weights, for study and for reference implementations.
// On the CPU from fp32 activations with fp64 sums; on the GPU from bf16 activations with fp32
// sums (calib/block_driver_cuda.h).
#include "commands.h"

#include "backend/ops.h"
#include "calib/block_driver.h"
#include "calib/calib_data.h"
#include "core/error.h"
#include "formats/safetensors.h"
#include "formats/tokenizer.h"
#include "core/version.h"
#include "quant/quantize.h"
#include "backend/device_check.h"
#include "quant/quantize_device.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <cstring>
#include <set>

namespace lowbit::cli {

namespace {

struct Options {
  std::string model, out, device = "cpu";
  CalibrationFlags cal;
  int64_t layer = 0;
  int threads = 0;
};

Tensor f32_tensor(const float* p, std::vector<int64_t> shape) {
  Tensor t = Tensor::empty(DType::F32, std::move(shape));
  std::memcpy(t.mutable_data(), p, size_t(t.nbytes()));
  return t;
}

void run(const Options& o) {
  set_num_threads(o.threads);
  const Device dev = lowbit::parse_device(o.device);
  check_device_available(dev);  // before any work
  Checkpoint ck = open_model(o.model);
  const Calibration calib = load_calibration(o.cal, ck, o.model);
  LlamaModel model(std::move(ck));
  StatsRequest req;
  req.hessian = req.absmax = req.absmean = true;
  BlockWeights w;
  const BlockContext::StatsMap stats = layer_input_stats_on(dev, model, calib.windows, o.layer, req, &w);
  SafetensorsWriter out;
  std::set<const InputStats*> done;
  const char* site_names[] = {"qkv_input", "qkv_input", "qkv_input", "o_input", "gate_up_input", "gate_up_input",
                              "down_input"};
  for (LinearKind k : kAllLinears) {
    out.add(std::string("weight.") + linear_name(k), w[k]);
    const InputStats* st = stats.at(k).get();
    if (!done.insert(st).second) continue;
    const std::string site = site_names[int(k)];
    Tensor hs = Tensor::empty(DType::F64, {st->dim, st->dim});
    std::memcpy(hs.mutable_data(), st->hessian().data(), size_t(hs.nbytes()));
    out.add(site + ".hessian", hs);
    out.add(site + ".absmax", f32_tensor(st->absmax.data(), {st->dim}));
    std::vector<float> mean(st->absmean.begin(), st->absmean.end());
    out.add(site + ".absmean", f32_tensor(mean.data(), {st->dim}));
  }
  out.add("weight.input_layernorm", w.input_norm);
  out.add("weight.post_attention_layernorm", w.post_norm);
  const nlohmann::json meta = {{"model", o.model}, {"layer", o.layer}, {"calibration", calib.identity()},
                               {"hessian", "2/N sum X^T X over N windows (GPTQ)"},
                               {"device", dev.is_cuda() ? "cuda: bf16 activations, fp32 sums" : "cpu: fp32 activations, fp64 sums"},
                               {"lowbit", {{"version", kVersion}, {"commit", kGitCommit}}}};
  out.set_metadata("lowbit.stats", meta.dump());
  out.write(o.out);
  fmt::print("wrote {}: layer {} statistics on {} x {} tokens of {}\n", o.out, o.layer, calib.nsamples, calib.seqlen,
             calib.set.name);
}

}  // namespace

void register_stats(CLI::App& app) {
  auto o = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand("stats", "Input statistics of one block's linears on calibration data");
  cmd->add_option("--model", o->model, "model directory or checkpoint")->required();
  cmd->add_option("--layer", o->layer, "block index")->check(CLI::NonNegativeNumber);
  cmd->add_option("-o,--output", o->out, "output .safetensors file")->required();
  add_calibration_options(cmd, o->cal);
  cmd->add_option("--threads", o->threads, "CPU threads (0: all cores)")->check(CLI::NonNegativeNumber);
  add_device_option(cmd, o->device);
  cmd->callback([o] { run(*o); });
}

}  // namespace lowbit::cli
