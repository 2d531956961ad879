// lowbit ppl --model M --dataset NAME|FILE [--data-dir D] [--seqlen 2048] [--limit N] [--kl-base BASE] [--json]
#include "commands.h"
#include "progress.h"

#include "backend/ops.h"
#include "core/error.h"
#include "quant/lowbit_checkpoint.h"
#include "eval/datasets.h"
#include "eval/identity.h"
#include "eval/kl_divergence.h"
#include "eval/perplexity.h"
#include "formats/tokenizer.h"
#include "model/llama_model.h"
#include "eval/eval_session.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>

namespace lowbit::cli {

namespace {

// The run's facts as results record them (one pass, this process's peak memory).
RuntimeFacts runtime_facts(double seconds, const EvalSession& session) {
  RuntimeFacts facts;
  facts.seconds = seconds;
  facts.peak = peak_rss();
  facts.device = session.name();
  facts.gpu = session.device().is_cuda();
  facts.threads = num_threads();
  facts.peak_gpu_bytes = session.peak_memory_bytes();
  return facts;
}

struct Options {
  std::string model, dataset = "wikitext2", data_dir, bos = "auto", spm = "auto", device = "cpu", kl_base, adapter;
  int64_t seqlen = 2048, limit = 0, batch = 4;
  int threads = 0;
  bool json = false, profile = false;
  PackedFlags packed;
};


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

// --kl-base: the base model on the same windows beside `model` (eval/kl_divergence.h). The base's
// tokenizer must cut the text into the same windows, token for token.
void run_kl_divergence(const Options& o, EvalSession& session, const TextSet& set,
                       const std::vector<std::vector<int32_t>>& windows, int64_t available, const LlamaModel& model,
                       const nlohmann::json& model_id, std::chrono::steady_clock::time_point t_start) {
  Checkpoint bck = open_model(o.kl_base);
  LB_CHECK(!bck.tokenizer_path.empty(), "--kl-base '{}' has no tokenizer beside it", o.kl_base);
  LB_CHECK(bck.config.vocab_size == model.config().vocab_size,
           "--kl-base '{}' has a vocabulary of {} tokens, model '{}' {}: KL-divergence compares next-token "
           "distributions over one vocabulary",
           o.kl_base, bck.config.vocab_size, o.model, model.config().vocab_size);
  TokenizerOptions topt;
  topt.spm = parse_spm_convention(o.spm);
  auto btok = load_tokenizer(bck.tokenizer_path, topt);
  LB_CHECK(btok->vocab_size() <= bck.config.vocab_size,
           "--kl-base: tokenizer '{}' has {} tokens, more than the base model's vocab_size {}", bck.tokenizer_path,
           btok->vocab_size(), bck.config.vocab_size);
  auto bwindows = eval_windows(set, *btok, o.seqlen, parse_bos_mode(o.bos));
  if (bwindows.size() > windows.size()) bwindows.resize(windows.size());
  for (size_t i = 0; i < windows.size(); ++i) {
    LB_CHECK(i < bwindows.size(), "--kl-base '{}': its tokenizer '{}' cuts {} into {} windows, model '{}''s into {}",
             o.kl_base, bck.tokenizer_path, set.name, bwindows.size(), o.model, windows.size());
    const auto diff = std::mismatch(windows[i].begin(), windows[i].end(), bwindows[i].begin());
    LB_CHECK(diff.first == windows[i].end(),
             "--kl-base '{}': its tokenizer '{}' gives other tokens than model '{}''s (window {}, position {}: token {} "
             "vs {}); KL-divergence needs both models to see the same windows",
             o.kl_base, bck.tokenizer_path, o.model, i, diff.first - windows[i].begin(), *diff.second, *diff.first);
  }
  nlohmann::json base_id = model_identity(bck, model_display_name(o.kl_base), o.kl_base, weights_sha256(bck), *btok,
                                          o.spm);
  const nlohmann::json base_method = method_part(bck);
  for (const auto& [k, v] : base_method.items()) base_id[k] = v;
  LlamaModel base(std::move(bck));
  install_quantized_forward(base);
  if (!o.json)
    fmt::print(stderr, "kld: {} against {} on {} ({}), {} windows of {} tokens{}, {} threads\n", o.model, o.kl_base,
               set.name, set.convention, windows.size(), o.seqlen,
               windows.size() < size_t(available) ? fmt::format(" (of {})", available) : "", num_threads());
  Progress progress("kld");
  auto on_progress = [&](int64_t done, int64_t total, double s, double k) {
    if (!o.json) progress.update(done, total, s, fmt::format("KLD {:.6f}", k));
  };
  const std::string device_name = session.name();
  const auto placed_base = session.place(base), placed = session.place(model);
  const KlDivergenceResult r = placed->kl_divergence(*placed_base, windows, on_progress);
  const KlDivergenceStats& k = r.kld;
  if (o.json) {
    const RuntimeFacts facts = runtime_facts(r.seconds, session);
    const PerplexitySettings ps{kl_divergence_key(set.name, o.seqlen, o.limit, o.bos, o.spm), o.seqlen, o.limit,
                                available, o.bos};
    nlohmann::json j = result_identity(model_id, method_part(model.checkpoint()),
                                       kl_divergence_identity(set, ps, r, base_id), runtime_part(facts));
    j["metric"] = "kl_divergence";
    j["kld_mean"] = k.mean;
    j["kld_stderr"] = k.stderr_;
    j["kld_median"] = k.median;
    j["kld_p99"] = k.p99;
    j["kld_max"] = k.max;
    j["top1_agreement"] = k.top1;
    j["top1_agreement_stderr"] = k.top1_stderr;
    j["positions"] = k.positions;
    j["ppl"] = r.ppl.ppl;
    j["ppl_stderr"] = r.ppl.ppl_stderr;
    j["mean_nll"] = r.ppl.mean_nll;
    j["base_ppl"] = r.base_ppl.ppl;
    j["base_ppl_stderr"] = r.base_ppl.ppl_stderr;
    j["windows"] = r.ppl.windows;
    j["tokens"] = r.ppl.tokens;
    j["wall_seconds"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
    fmt::print("{}\n", j.dump(1));
    return;
  }
  fmt::print("{} ({}), seqlen {}, {} windows, {} positions: {:.1f} s on {}\n", set.name, set.convention, o.seqlen,
             r.ppl.windows, k.positions, r.seconds, device_name);
  fmt::print("PPL = {:.4f} +/- {:.4f} (base {:.4f} +/- {:.4f})\n", r.ppl.ppl, r.ppl.ppl_stderr, r.base_ppl.ppl,
             r.base_ppl.ppl_stderr);
  fmt::print("KLD = {:.6f} +/- {:.6f}, top-1 agreement = {:.3f}% +/- {:.3f}%, KLD p99 = {:.6f}\n", k.mean, k.stderr_,
             100 * k.top1, 100 * k.top1_stderr, k.p99);
  fmt::print("KLD median = {:.6f}, max = {:.6f}\n", k.median, k.max);
}

void run(const Options& o) {
  set_num_threads(o.threads);
  const auto session = open_eval_session(lowbit::parse_device(o.device));
  const bool gpu = session->device().is_cuda();
  LB_CHECK(o.kl_base.empty() || !o.profile, "--profile times the GPU's perplexity pass; it does not apply to --kl-base");
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
  const std::string data_dir =
      is_named_dataset(o.dataset, DatasetRole::Evaluation) ? resolve_data_dir(o.data_dir) : o.data_dir;
  const TextSet set = resolve_eval_set(o.dataset, data_dir);
  auto windows = eval_windows(set, *tok, o.seqlen, parse_bos_mode(o.bos));
  const int64_t available = int64_t(windows.size());
  if (o.limit > 0 && o.limit < available) windows.resize(size_t(o.limit));

  nlohmann::json model_id = model_identity(ck, model_display_name(o.model), o.model, weights_sha256(ck), *tok, o.spm);
  check_adapter_device(o.adapter, gpu);
  LlamaModel model(std::move(ck));
  install_quantized_forward(model);
  LB_CHECK(o.adapter.empty() || !o.packed.packed, "--adapter merges the adapter into 16-bit weights; it cannot run with --packed");
  if (auto ad = apply_adapter(model, o.adapter); !ad.is_null()) model_id["adapter"] = ad;
  const std::string execution = apply_packed(o.packed, model, gpu, o.json);
  if (!o.kl_base.empty()) return run_kl_divergence(o, *session, set, windows, available, model, model_id, t_start);
  if (!o.json)
    fmt::print(stderr, "ppl: {} on {} ({}), {} windows of {} tokens{}, {} threads\n", o.model, set.name, set.convention,
               windows.size(), o.seqlen, windows.size() < size_t(available) ? fmt::format(" (of {})", available) : "",
               num_threads());
  Progress progress("ppl");
  auto on_progress = [&](int64_t done, int64_t total, double s, double ppl) {
    if (!o.json) progress.update(done, total, s, fmt::format("ppl {:.4f}", ppl));
  };
  LB_CHECK(!o.profile || gpu, "--profile times the GPU's ops: it needs --device cuda");
  const std::string device_name = session->name();
  const auto placed = session->place(model, o.profile);
  const PerplexityResult r = placed->perplexity(windows, o.batch, on_progress);
  const nlohmann::json profile = placed->profile(r);
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();

  if (o.json) {
    // The identity a study stores for this evaluation (eval/identity.h), then the pass's details.
    const RuntimeFacts facts = runtime_facts(r.seconds, *session);
    const PerplexitySettings ps{perplexity_key(set.name, o.seqlen, o.limit, o.bos, o.spm), o.seqlen, o.limit,
                                available, o.bos};
    nlohmann::json j = result_identity(model_id, method_part(model.checkpoint()), perplexity_identity(set, ps, r),
                                       runtime_part(facts));
    j["metric"] = "perplexity";
    j["ppl"] = r.ppl;
    j["ppl_stderr"] = r.ppl_stderr;
    j["mean_nll"] = r.mean_nll;
    j["windows"] = r.windows;
    j["tokens"] = r.tokens;
    j["wall_seconds"] = wall;
    j["tokens_per_second"] = double(r.tokens) / r.seconds;
    j["first_forward"] = {{"windows", r.first_windows}, {"seconds", r.first_seconds}};
    j["batch"] = gpu ? o.batch : 1;
    j["execution"] = execution;
    j["window_nll"] = r.window_nll;
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
  add_adapter_option(cmd, o->adapter);
  cmd->add_option("--dataset", o->dataset, "wikitext2, ptb (validation, GPTQ), ptb-new (test, GPTQ), c4, c4-new, "
                                           "or a text file");
  cmd->add_option("--data-dir", o->data_dir, "data directory (default: $LOWBIT_DATA)");
  cmd->add_option("--seqlen", o->seqlen, "tokens per window")->check(CLI::Range(int64_t(2), int64_t(1) << 20));
  cmd->add_option("--limit", o->limit, "windows: evaluate only the first N seqlen-token windows of the set (0: all)")->check(CLI::NonNegativeNumber);
  cmd->add_option("--threads", o->threads, "CPU threads (0: all cores)")->check(CLI::NonNegativeNumber);
  add_bos_option(cmd, o->bos, "the dataset");
  add_spm_convention_option(cmd, o->spm);
  cmd->add_option("--kl-base", o->kl_base, "also KL-divergence of the model's next-token distributions from this "
                                           "(16-bit) model's on the same windows: mean, p99, top-1 agreement");
  cmd->add_flag("--json", o->json, "print one JSON object with the result and its identity");
  add_device_option(cmd, o->device);
  add_packed_options(cmd, o->packed);
  cmd->add_option("--batch", o->batch, "windows per forward on the GPU")->check(CLI::PositiveNumber);
  cmd->add_flag("--profile", o->profile, "time each GPU op over the pass (events between ops) and print the table "
                                         "(in the JSON: \"profile\")");
  cmd->callback([o] { run(*o); });
}

}  // namespace lowbit::cli
