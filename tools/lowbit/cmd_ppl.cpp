// lowbit ppl --model M --dataset NAME|FILE [--data-dir D] [--seqlen 2048] [--limit N] [--json]
#include "commands.h"
#include "progress.h"

#include "backend/ops.h"
#include "core/error.h"
#include "quant/lowbit_checkpoint.h"
#include "core/hash.h"
#include "core/mapped_file.h"
#include "eval/datasets.h"
#include "eval/perplexity.h"
#include "lowbit/version.h"
#include "formats/tokenizer.h"
#include "model/llama_model.h"
#ifdef LOWBIT_WITH_CUDA
#include "eval/cuda_eval.h"
#endif

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <sys/resource.h>

#include <chrono>
#include <cmath>
#include <ctime>

namespace lowbit::cli {

namespace {

struct Options {
  std::string model, dataset = "wikitext2", data_dir, bos = "auto", spm = "auto", device = "cpu";
  int64_t seqlen = 2048, limit = 0, batch = 4;
  int threads = 0;
  bool json = false, profile = false;
};

#ifdef LOWBIT_WITH_CUDA
// The GPU time of each op, per window and as a share of the pass's seconds.
nlohmann::json profile_json(const cuda::OpProfile& p, const PerplexityResult& r) {
  nlohmann::json ops = nlohmann::json::array();
  double busy = 0;
  for (const auto& e : p.totals()) {
    ops.push_back({{"op", e.name}, {"calls", e.calls}, {"seconds", e.ms / 1e3}});
    busy += e.ms / 1e3;
  }
  // Past the first forward when there was more than one (perplexity_cuda resets the profile then).
  const bool rest = r.windows > r.first_windows;
  return {{"ops", ops}, {"gpu_seconds", busy},
          {"pass_seconds", rest ? r.seconds - r.first_seconds : r.seconds},
          {"windows", rest ? r.windows - r.first_windows : r.windows},
          {"scope", rest ? "after the first forward" : "the whole pass"}};
}
#endif

void print_profile(const nlohmann::json& p) {
  const double pass = p["pass_seconds"].get<double>(), windows = double(p["windows"].get<int64_t>());
  fmt::print("GPU time per op, {} ({} windows, {:.3f} s):\n", p["scope"].get<std::string>(), p["windows"].get<int64_t>(),
             pass);
  fmt::print("{:<24} {:>8} {:>10} {:>12} {:>7}\n", "op", "calls", "seconds", "ms/window", "share");
  for (const auto& e : p["ops"]) {
    const double sec = e["seconds"].get<double>();
    fmt::print("{:<24} {:>8} {:>10.3f} {:>12.3f} {:>6.1f}%\n", e["op"].get<std::string>(), e["calls"].get<int64_t>(),
               sec, sec * 1e3 / windows, 100.0 * sec / pass);
  }
  const double busy = p["gpu_seconds"].get<double>();
  fmt::print("{:<24} {:>8} {:>10.3f} {:>12.3f} {:>6.1f}%\n", "(GPU waiting for host)", "", pass - busy,
             (pass - busy) * 1e3 / windows, 100.0 * (pass - busy) / pass);
}

void run(const Options& o) {
  set_num_threads(o.threads);
  const DeviceChoice dev = parse_device(o.device);
  const auto t_start = std::chrono::steady_clock::now();
  Checkpoint ck = open_model(o.model);
  LB_CHECK(!ck.tokenizer_path.empty(), "model '{}' has no tokenizer beside it", o.model);
  LB_CHECK(o.seqlen <= ck.config.max_position_embeddings,
           "--seqlen {} exceeds the model's max_position_embeddings ({})", o.seqlen, ck.config.max_position_embeddings);
  TokenizerOptions topt;
  topt.spm = parse_spm_convention(o.spm);
  auto tok = load_tokenizer(ck.tokenizer_path, topt);
  LB_CHECK(tok->vocab_size() <= ck.config.vocab_size, "tokenizer '{}' has {} tokens, more than the model's vocab_size {}",
           ck.tokenizer_path, tok->vocab_size(), ck.config.vocab_size);
  const std::string data_dir = o.dataset == "wikitext2" || o.dataset == "ptb" || o.dataset == "ptb-new" ||
                                       o.dataset.rfind("c4", 0) == 0
                                   ? resolve_data_dir(o.data_dir)
                                   : o.data_dir;
  const TextSet set = resolve_eval_set(o.dataset, data_dir);
  auto windows = eval_windows(set, *tok, o.seqlen, parse_bos(o.bos));
  const int64_t available = int64_t(windows.size());
  if (o.limit > 0 && o.limit < available) windows.resize(size_t(o.limit));

  Sha256 model_hash;
  for (const auto& f : ck.weights->files()) {
    auto m = MappedFile::open(f);
    model_hash.update(m->data(), m->size());
  }
  const std::string model_sha = model_hash.hex_digest();

  LlamaModel model(std::move(ck));
  install_quantized_forward(model);
  if (!o.json)
    fmt::print(stderr, "ppl: {} on {} ({}), {} windows of {} tokens{}, {} threads\n", o.model, set.name, set.convention,
               windows.size(), o.seqlen, windows.size() < size_t(available) ? fmt::format(" (of {})", available) : "",
               num_threads());
  Progress progress("ppl");
  auto on_progress = [&](int64_t done, int64_t total, double s, double ppl) {
    if (!o.json) progress.update(done, total, s, fmt::format("ppl {:.4f}", ppl));
  };
  LB_CHECK(!o.profile || dev.cuda, "--profile times the GPU's ops: it needs --device cuda");
  PerplexityResult r;
  std::string device_name = "cpu";
  double gpu_peak = 0;
  nlohmann::json profile = nullptr;
#ifdef LOWBIT_WITH_CUDA
  if (dev.cuda) {
    cuda::Context ctx(dev.index);
    device_name = ctx.name();
    CudaModel gpu(model, ctx);
    if (o.profile) gpu.enable_profile();
    r = perplexity_cuda(gpu, windows, o.batch, on_progress);
    gpu_peak = double(cuda::peak_device_bytes());
    if (o.profile) profile = profile_json(*gpu.profile(), r);
  } else
#endif
  {
    r = perplexity(model, windows, on_progress);
  }
  struct rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();

  const nlohmann::json& q = model.checkpoint().quantization;
  if (o.json) {
    nlohmann::json files = nlohmann::json::array();
    for (const auto& f : set.files) files.push_back({{"path", f.path}, {"sha256", f.sha256}});
    nlohmann::json j = {
        {"metric", "perplexity"}, {"ppl", r.ppl}, {"ppl_stderr", r.ppl_stderr}, {"mean_nll", r.mean_nll},
        {"model", {{"path", o.model}, {"format", model.checkpoint().format}, {"weights_sha256", model_sha},
                   {"dtype", model.config().torch_dtype}, {"parameters", model.config().parameter_count()}}},
        {"method", q.is_null() ? nlohmann::json("none (16-bit)") : q["method"]},
        {"calibration", q.is_null() ? nlohmann::json(nullptr) : q["calibration"]},
        {"activation", q.is_null() ? nlohmann::json(nullptr) : q.value("activation", nlohmann::json(nullptr))},
        {"source_model", q.is_null() ? nlohmann::json(nullptr) : q["source"]},
        {"dataset", {{"name", set.name}, {"convention", set.convention}, {"files", files}}},
        {"tokenizer", {{"path", model.checkpoint().tokenizer_path}, {"kind", tok->kind()}, {"bos", o.bos}}},
        {"seqlen", o.seqlen}, {"windows", r.windows}, {"windows_available", available}, {"tokens", r.tokens},
        {"seconds", r.seconds}, {"wall_seconds", wall}, {"tokens_per_second", double(r.tokens) / r.seconds},
        {"first_forward", {{"windows", r.first_windows}, {"seconds", r.first_seconds}}},
        {"threads", num_threads()}, {"device", device_name},
        {"compute_dtype", dev.cuda ? "bfloat16 GEMMs, float32 accumulation and residual" : "float32"},
        {"batch", dev.cuda ? o.batch : 1}, {"peak_gpu_bytes", gpu_peak},
        {"peak_rss_bytes", int64_t(ru.ru_maxrss) * 1024},
        {"lowbit", {{"version", kVersion}, {"commit", kGitCommit}}},
        {"window_nll", r.window_nll}};
    if (!profile.is_null()) j["profile"] = profile;
    fmt::print("{}\n", j.dump(1));
    return;
  }
  if (!profile.is_null()) print_profile(profile);
  fmt::print("{} ({}), seqlen {}, {} windows, {} tokens: {:.1f} s, {:.0f} tokens/s on {}\n", set.name,
             set.convention, o.seqlen, r.windows, r.tokens, r.seconds, double(r.tokens) / r.seconds, device_name);
  fmt::print("PPL = {:.4f} +/- {:.4f}\n", r.ppl, r.ppl_stderr);
}

}  // namespace

void register_ppl(CLI::App& app) {
  auto o = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand("ppl", "Perplexity under GPTQ's protocol (WikiText2, PTB, C4 or a text file)");
  cmd->add_option("--model", o->model, "model directory or checkpoint")->required();
  cmd->add_option("--dataset", o->dataset, "wikitext2, ptb (validation, GPTQ), ptb-new (test, GPTQ), c4, c4-new, "
                                           "or a text file");
  cmd->add_option("--data-dir", o->data_dir, "data directory (default: $LOWBIT_DATA)");
  cmd->add_option("--seqlen", o->seqlen, "tokens per window")->check(CLI::Range(int64_t(2), int64_t(1) << 20));
  cmd->add_option("--limit", o->limit, "windows: evaluate only the first N seqlen-token windows of the set (0: all)")->check(CLI::NonNegativeNumber);
  cmd->add_option("--threads", o->threads, "CPU threads (0: all cores)")->check(CLI::NonNegativeNumber);
  add_bos_option(cmd, o->bos, "the dataset");
  add_spm_convention_option(cmd, o->spm);
  cmd->add_flag("--json", o->json, "print one JSON object with the result and its identity");
  add_device_option(cmd, o->device);
  cmd->add_option("--batch", o->batch, "windows per forward on the GPU")->check(CLI::PositiveNumber);
  cmd->add_flag("--profile", o->profile, "time each GPU op over the pass (events between ops) and print the table "
                                         "(in the JSON: \"profile\")");
  cmd->callback([o] { run(*o); });
}

}  // namespace lowbit::cli
