// CPU decode speed at batch 1: 16-bit against packed 4-bit and 2-bit, side by side in one run.
//
//   bench_decode --model DIR [--threads 2] [--rounds 6] [--prompt 128] [--new 128]
//                [--q4 QUANTIZED_DIR] [--q2 QUANTIZED_DIR] [--variants LIST] [--packed-head stored|q8]
//                [--json]
//
// Each variant runs what `lowbit generate` runs: the prompt in one forward through the KV cache,
// then one token per step (forward_cached, LM head on the last row, argmax), greedy. Prompt
// tokens are random ids (seed 0), as llama-bench uses, so every variant sees the same input.
// Variants, alternated within each round so that a noisy neighbour hits all of them alike:
//   fp32          the 16-bit checkpoint widened to fp32 at load (lowbit's ppl/eval path)
//   16-bit        the checkpoint's bf16/fp16 linears kept as stored (generate's CPU path)
//   packed-4bit   --q4 (default: RTN w4 g128 of --model, written to a temporary directory),
//                 run from its packed codes with 8-bit activations
//   packed-2bit   --q2 (default: RTN w2 g64), likewise
// The packed variants' LM head: --packed-head stored (default: as the checkpoint holds it) or q8
// (packed to 8 bits per block of 32 at load, as llama.cpp runs a Q8_0 output tensor).
// --variants picks some of them (comma-separated names, e.g. `packed-4bit`), in that order; a
// script alternating this program with another (llama.cpp's llama-bench) runs one round at a time.
// Reported: the median over rounds of prompt tokens/s and decode tokens/s (the steps after the
// prompt's forward), and the packed linears' bytes.
#include "backend/ops.h"
#include "core/error.h"
#include "model/llama_model.h"
#include "pack/packed_model.h"
#include "quant/lowbit_checkpoint.h"
#include "quant/method.h"
#include "quant/quantize.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <chrono>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

namespace {

using namespace lowbit;

struct Args {
  std::string model, q4, q2;
  std::vector<std::string> variants = {"fp32", "16-bit", "packed-4bit", "packed-2bit"};
  int threads = 2, rounds = 6;
  int64_t prompt = 128, n_new = 128;
  bool json = false;
  pack::PackedHead head = pack::PackedHead::Stored;
};

const std::vector<std::string> kVariants = {"fp32", "16-bit", "packed-4bit", "packed-2bit"};

std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  size_t b = 0;
  while (b <= s.size()) {
    const size_t e = std::min(s.find(',', b), s.size());
    const std::string name = s.substr(b, e - b);
    LB_CHECK(std::find(kVariants.begin(), kVariants.end(), name) != kVariants.end(),
             "bench_decode: --variants '{}': '{}' is not one of fp32, 16-bit, packed-4bit, packed-2bit", s, name);
    out.push_back(name);
    b = e + 1;
  }
  return out;
}

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    auto val = [&]() -> std::string {
      LB_CHECK(i + 1 < argc, "bench_decode: {} needs a value", k);
      return argv[++i];
    };
    if (k == "--model") a.model = val();
    else if (k == "--q4") a.q4 = val();
    else if (k == "--q2") a.q2 = val();
    else if (k == "--threads") a.threads = std::stoi(val());
    else if (k == "--rounds") a.rounds = std::stoi(val());
    else if (k == "--prompt") a.prompt = std::stoll(val());
    else if (k == "--new") a.n_new = std::stoll(val());
    else if (k == "--variants") a.variants = split_list(val());
    else if (k == "--packed-head") a.head = pack::parse_packed_head(val());
    else if (k == "--json") a.json = true;
    else throw Error(fmt::format("bench_decode: unknown option '{}'", k));
  }
  LB_CHECK(!a.model.empty(), "bench_decode: --model is required");
  LB_CHECK(a.rounds > 0 && a.prompt > 0 && a.n_new > 1, "bench_decode: --rounds, --prompt and --new must be positive");
  return a;
}

struct Variant {
  std::string name;
  std::unique_ptr<LlamaModel> model;
  int64_t packed_bytes = 0, head_bytes = 0;
  std::vector<double> prompt_tps, decode_tps;
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// One generation: returns {prompt tokens/s, decode tokens/s}.
std::pair<double, double> run_once(const LlamaModel& m, const std::vector<int32_t>& prompt, int64_t n_new) {
  const int64_t H = m.config().hidden_size, V = m.config().vocab_size;
  KvCache cache = m.make_kv_cache(int64_t(prompt.size()) + n_new);
  std::vector<float> hidden(prompt.size() * size_t(H)), logits(static_cast<size_t>(V));
  using clock = std::chrono::steady_clock;
  auto t0 = clock::now();
  m.forward_cached(prompt, cache, hidden.data());
  m.lm_head(hidden.data() + (int64_t(prompt.size()) - 1) * H, 1, logits.data());
  int32_t next = int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
  const double prompt_s = std::chrono::duration<double>(clock::now() - t0).count();
  t0 = clock::now();
  for (int64_t i = 1; i < n_new; ++i) {
    m.forward_cached(std::span<const int32_t>(&next, 1), cache, hidden.data());
    m.lm_head(hidden.data(), 1, logits.data());
    next = int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
  }
  const double decode_s = std::chrono::duration<double>(clock::now() - t0).count();
  return {double(prompt.size()) / prompt_s, double(n_new - 1) / decode_s};
}

std::string quantize_rtn(const std::string& model, const std::string& spec, const std::string& out) {
  LlamaModel m(open_model(model));
  auto method = make_method(spec);
  write_quantized_checkpoint(out, m, quantize_model(m, *method, nullptr, {}), nlohmann::json::object(), true);
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Args a = parse(argc, argv);
    set_num_threads(a.threads);
    const std::filesystem::path tmp =
        std::filesystem::temp_directory_path() / fmt::format("lowbit-bench-decode-{}", ::getpid());
    struct Cleanup {
      std::filesystem::path p;
      ~Cleanup() {
        std::error_code ec;
        std::filesystem::remove_all(p, ec);
      }
    } cleanup{tmp};
    std::filesystem::create_directories(tmp);
    auto wanted = [&](const char* n) { return std::find(a.variants.begin(), a.variants.end(), n) != a.variants.end(); };
    const std::string q4 = !wanted("packed-4bit") || !a.q4.empty() ? a.q4
                                                                   : quantize_rtn(a.model, "rtn:w=4,g=128", (tmp / "q4").string());
    const std::string q2 = !wanted("packed-2bit") || !a.q2.empty() ? a.q2
                                                                   : quantize_rtn(a.model, "rtn:w=2,g=64", (tmp / "q2").string());

    std::vector<Variant> vs;
    for (const std::string& name : a.variants) {
      Variant v;
      v.name = name;
      if (name == "fp32" || name == "16-bit") {
        v.model = std::make_unique<LlamaModel>(open_model(a.model));
        v.model->set_keep_16bit_weights(name == "16-bit");
      } else {
        v.model = load_model(name == "packed-4bit" ? q4 : q2);
        const pack::PackedSummary ps = pack::install_packed_linears(*v.model, pack::PackedActivations::Q8, a.head);
        v.packed_bytes = ps.packed_bytes;
        v.head_bytes = ps.head_bytes;
      }
      vs.push_back(std::move(v));
    }
    std::mt19937 g(0);
    std::vector<int32_t> prompt(static_cast<size_t>(a.prompt));
    for (auto& t : prompt) t = int32_t(g() % uint32_t(vs[0].model->config().vocab_size));
    for (auto& v : vs) run_once(*v.model, prompt, 8);  // warm-up: weights converted, pages touched
    for (int r = 0; r < a.rounds; ++r)
      for (auto& v : vs) {
        const auto [p, d] = run_once(*v.model, prompt, a.n_new);
        v.prompt_tps.push_back(p);
        v.decode_tps.push_back(d);
      }

    // The machine's load while measuring: other processes on few cores slow the threaded variants
    // unevenly (a parallel region waits for its slowest thread), so a reading needs its load.
    double load[3] = {0, 0, 0};
    if (std::FILE* f = std::fopen("/proc/loadavg", "r")) {
      if (std::fscanf(f, "%lf %lf %lf", &load[0], &load[1], &load[2]) != 3) load[0] = load[1] = load[2] = -1;
      std::fclose(f);
    }
    nlohmann::json out = {{"model", a.model}, {"threads", num_threads()}, {"rounds", a.rounds},
                          {"load_average_1m", load[0]},
                          {"prompt_tokens", a.prompt}, {"new_tokens", a.n_new},
                          {"packed_kernels", pack::isa_name(pack::best_isa())},
                          {"packed_head", a.head == pack::PackedHead::Q8 ? "q8" : "stored"}, {"variants", nlohmann::json::array()}};
    // Speeds relative to the 16-bit variant when it ran, else to the first.
    const auto base_it = std::find_if(vs.begin(), vs.end(), [](const Variant& v) { return v.name == "16-bit"; });
    const double base = median((base_it != vs.end() ? *base_it : vs.front()).decode_tps);
    if (!a.json)
      fmt::print("decode at batch 1, {} threads, prompt {} + {} new tokens, medians of {} alternated rounds "
                 "(packed kernels: {}, LM head {}; load average {:.2f} at the end)\n{:<12} {:>14} {:>14} {:>12} {:>14}\n",
                 num_threads(), a.prompt, a.n_new, a.rounds, pack::isa_name(pack::best_isa()),
                 a.head == pack::PackedHead::Q8 ? "8-bit in the packed variants" : "as stored", load[0], "variant",
                 "prompt tok/s", "decode tok/s", base_it != vs.end() ? "vs 16-bit" : "vs first", "packed linears");
    for (const auto& v : vs) {
      const double p = median(v.prompt_tps), d = median(v.decode_tps);
      out["variants"].push_back({{"name", v.name}, {"prompt_tokens_per_s", p}, {"decode_tokens_per_s", d},
                                 {"decode_rounds", v.decode_tps}, {"packed_bytes", v.packed_bytes},
                                 {"packed_head_bytes", v.head_bytes}});
      if (!a.json)
        fmt::print("{:<12} {:>14.1f} {:>14.1f} {:>11.2f}x {:>14}\n", v.name, p, d, d / base,
                   v.packed_bytes ? fmt::format("{:.1f} MB", double(v.packed_bytes) / 1e6) : "-");
    }
    if (a.json) fmt::print("{}\n", out.dump(1));
    return 0;
  } catch (const std::exception& e) {
    fmt::print(stderr, "bench_decode: {}\n", e.what());
    return 1;
  }
}
