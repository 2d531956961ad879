// lowbit eval --model M --tasks piqa,arc_easy,... [--data-dir D] [--limit N] [--bos auto|on|off]
//             [--mmlu-shots 5] [--json]
#include "commands.h"
#include "progress.h"

#include "backend/ops.h"
#include "core/error.h"
#include "eval/identity.h"
#include "eval/multiple_choice.h"
#include "eval/tasks.h"
#include "formats/tokenizer.h"
#include "quant/lowbit_checkpoint.h"
#include "eval/eval_session.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <fstream>
#include <sstream>

namespace lowbit::cli {

namespace {

struct Options {
  std::string log_samples, adapter;
  std::string model, tasks = "piqa,arc_easy,arc_challenge,hellaswag,winogrande", data_dir, bos = "auto", spm = "auto",
              device = "cpu", mc_scoring = "auto";
  int64_t limit = 0, max_length = 0;
  int mmlu_shots = 5, threads = 0;
  bool json = false;
  PackedFlags packed;
};

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ','))
    if (!item.empty()) out.push_back(item);
  return out;
}

nlohmann::json metric_json(const Metric& m) { return {{"value", m.value}, {"stderr", m.stderr_}}; }

void run(const Options& o) {
  set_num_threads(o.threads);
  const auto session = open_eval_session(lowbit::parse_device(o.device));  // checked before any work
  const std::vector<std::string> names = split(o.tasks);
  LB_CHECK(!names.empty(), "--tasks names no task");
  for (const auto& n : names) {
    bool known = n.starts_with("mmlu_");
    for (const auto& k : task_names()) known = known || k == n;
    LB_CHECK(known, "unknown task '{}' (known: {}, and mmlu_SUBJECT for one MMLU subject)", n,
             fmt::format("{}", fmt::join(task_names(), ", ")));
  }
  const std::string data_dir = resolve_data_dir(o.data_dir);
  // Every task's data is read (and checked) before any evaluation starts.
  std::vector<McTask> tasks;
  for (const auto& n : names) tasks.push_back(load_task(n, data_dir, o.mmlu_shots));
  check_adapter_device(o.adapter, session->device().is_cuda());
  auto model = load_model(o.model);
  LB_CHECK(o.adapter.empty() || !o.packed.packed, "--adapter merges the adapter into 16-bit weights; it cannot run with --packed");
  const nlohmann::json adapter_id = apply_adapter(*model, o.adapter);
  const std::string execution = apply_packed(o.packed, *model, session->device().is_cuda(), o.json);
  LB_CHECK(!model->checkpoint().tokenizer_path.empty(), "model '{}' has no tokenizer beside it", o.model);
  TokenizerOptions topt;
  topt.spm = parse_spm_convention(o.spm);
  auto tok = load_tokenizer(model->checkpoint().tokenizer_path, topt);
  McOptions mo;
  mo.bos = parse_bos_mode(o.bos);
  mo.max_length = o.max_length;
  mo.limit = o.limit;
  mo.scoring = o.mc_scoring == "cached" ? McScoring::Cached : o.mc_scoring == "batched" ? McScoring::Batched
                                                                                        : McScoring::Auto;
  const int64_t max_length = o.max_length > 0 ? o.max_length : model->config().max_position_embeddings;
  LB_CHECK(max_length <= model->config().max_position_embeddings, "--max-length {} exceeds the model's context {}",
           max_length, model->config().max_position_embeddings);
  const std::string device_name = session->name();
  const auto placed = session->place(*model);
  const std::unique_ptr<McBackend> backend = placed->mc_backend(max_length);
  // Each task's entry is the identity a study stores for it (eval/identity.h) with its results.
  nlohmann::json model_id = model_identity(model->checkpoint(), model_display_name(o.model), o.model,
                                           weights_sha256(model->checkpoint()), *tok, o.spm);
  if (!adapter_id.is_null()) model_id["adapter"] = adapter_id;
  const nlohmann::json method = method_part(model->checkpoint());
  nlohmann::json out = {{"tasks", nlohmann::json::array()}};
  std::unique_ptr<std::ofstream> samples;
  if (!o.log_samples.empty()) {
    samples = std::make_unique<std::ofstream>(o.log_samples, std::ios::trunc);
    LB_CHECK(samples->good(), "cannot write '{}'", o.log_samples);
  }
  for (const McTask& t : tasks) {
    Progress progress(t.name);
    const McResult r = evaluate_multiple_choice(*backend, *tok, t, mo, [&](int64_t done, int64_t total, double s, double acc) {
      if (!o.json) progress.update(done, total, s, fmt::format("acc {:.4f}", acc));
    });
    if (samples) {
      for (size_t i = 0; i < r.items.size(); ++i) {
        const McItem& it = t.items[i];
        const McItemResult& ir = r.items[i];
        nlohmann::json j = {{"task", t.name}, {"id", it.id}, {"contexts", it.contexts},
                            {"continuations", it.continuations}, {"gold", it.gold}, {"loglik", ir.loglik},
                            {"greedy", ir.greedy}, {"pred", ir.pred}, {"pred_norm", ir.pred_norm}};
        *samples << j.dump() << "\n";
      }
      samples->flush();
    }
    RuntimeFacts facts;
    facts.seconds = r.seconds;
    facts.peak = peak_rss();
    facts.device = device_name;
    facts.gpu = session->device().is_cuda();
    facts.threads = num_threads();
    facts.peak_gpu_bytes = session->peak_memory_bytes();
    const MultipleChoiceSettings ms{multiple_choice_key(t.name, o.limit, o.bos, o.max_length, o.mmlu_shots, o.spm),
                                    o.limit, o.bos, max_length, false};
    nlohmann::json tj = result_identity(model_id, method, multiple_choice_identity(t, ms, r), runtime_part(facts));
    tj["task"] = t.name;
    tj["execution"] = execution;
    tj["n_available"] = t.items.size();
    tj["acc"] = metric_json(r.acc);
    tj["items_per_second"] = double(r.n) / r.seconds;
    if (t.has_acc_norm) tj["acc_norm"] = metric_json(r.acc_norm);
    std::string line = fmt::format("{} ({}, {} items): acc {:.4f} +/- {:.4f}", t.name, t.split, r.n, r.acc.value,
                                   r.acc.stderr_);
    if (t.has_acc_norm) line += fmt::format(", acc_norm {:.4f} +/- {:.4f}", r.acc_norm.value, r.acc_norm.stderr_);
    line += fmt::format("  ({:.1f} s, {:.1f} items/s)", r.seconds, double(r.n) / r.seconds);
    if (!r.subjects.empty()) {
      const MmluSummary s = summarize_mmlu(r);
      nlohmann::json subj = nlohmann::json::object();
      for (const auto& [k, v] : r.subjects) subj[k] = {{"acc", v.first}, {"n", v.second}};
      tj["mmlu"] = {{"categories_unweighted_over_subjects", s.category_unweighted},
                    {"categories_weighted_by_size", s.category_weighted},
                    {"average_unweighted_over_subjects", s.average_unweighted},
                    {"average_of_categories", s.average_of_categories},
                    {"harness_weighted_by_size", s.harness_weighted},
                    {"subjects", subj}};
      line += "\n  categories (unweighted mean over subjects):";
      for (const auto& [k, v] : s.category_unweighted) line += fmt::format(" {} {:.4f}", k, v);
      line += fmt::format("\n  average over subjects {:.4f}, of the four categories {:.4f}; harness (size-weighted) "
                          "{:.4f}",
                          s.average_unweighted, s.average_of_categories, s.harness_weighted);
    }
    out["tasks"].push_back(tj);
    if (!o.json) fmt::print("{}\n", line);
    std::fflush(stdout);
  }
  out["peak_rss_bytes"] = peak_rss_bytes();
  if (o.json) fmt::print("{}\n", out.dump(1));
}

}  // namespace

void register_eval(CLI::App& app) {
  auto o = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand("eval", "Zero-shot tasks and MMLU with lm-evaluation-harness semantics");
  cmd->add_option("--model", o->model, "model directory or checkpoint (16-bit or quantized)")->required();
  add_adapter_option(cmd, o->adapter);
  cmd->add_option("--tasks", o->tasks, "comma-separated: piqa, arc_easy, arc_challenge, hellaswag, winogrande, mmlu "
                                       "(or mmlu_SUBJECT for one subject); hellaswag_derived: llama.cpp's "
                                       "derived HellaSwag text, not the harness's preprocessing");
  cmd->add_option("--data-dir", o->data_dir, "data directory (default: $LOWBIT_DATA)");
  cmd->add_option("--limit", o->limit, "items: evaluate only the first N items (questions) of each task (0: all)")
      ->check(CLI::NonNegativeNumber);
  add_bos_option(cmd, o->bos, "the requests (auto as the current harness, off as older ones)");
  cmd->add_option("--max-length", o->max_length, "context tokens (0: the model's max_position_embeddings)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--mc-scoring", o->mc_scoring, "cached: prefix reuse through the KV cache, one run at a time; "
                                                "batched: whole requests in padded batches; auto: batched on a "
                                                "GPU, cached on the CPU (scores equal up to rounding)")
      ->check(CLI::IsMember({"auto", "cached", "batched"}));
  cmd->add_option("--mmlu-shots", o->mmlu_shots, "MMLU few-shot examples from dev")->check(CLI::Range(0, 5));
  add_spm_convention_option(cmd, o->spm);
  cmd->add_option("--threads", o->threads, "CPU threads (0: all cores)")->check(CLI::NonNegativeNumber);
  cmd->add_flag("--json", o->json, "print one JSON object with the results and their identity");
  add_device_option(cmd, o->device);
  add_packed_options(cmd, o->packed);
  cmd->add_option("--log-samples", o->log_samples, "write every item's requests and per-choice log-likelihoods "
                                                    "to this JSONL file");
  cmd->callback([o] { run(*o); });
}

}  // namespace lowbit::cli
