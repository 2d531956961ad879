// lowbit vlm-eval --model DIR --task ai2d|chartqa|docvqa|mmbench_en|mme --data FILE_OR_DIR
//                 [--limit N] [--max-new-tokens N] [--conversation llava|llava_hf] [--device cpu|cuda[:N]]
//                 [--predictions OUT.jsonl] [--json] [--store DB [--study NAME] [--name MODEL]]
//                 [--packed [--packed-act q8|f32] [--packed-head stored|q8]]
// A LLaVA-Next checkpoint on one vision-language benchmark with lmms-eval's conventions
// (eval/vlm/vlm_task.h): greedy answers, the task's scoring and aggregate. Every item and image
// is checked before the model runs; the predictions file is written only after the last item.
// --device cuda runs the vision tower, projector and language model on a GPU in bf16
// (model/llava_next_device.h).
// --packed runs a quantized language model from its packed codes (as `eval --packed`; refused for
// a 16-bit LLaVA-Next), the vision tower and projector as stored. The identity records the
// execution ("fake-quant", "packed-q8", "packed-w4a16", ...); a packed one is also part of the
// evaluation's key (eval/vlm/vlm_eval.h), so that --store keeps it beside the cell's fake-quant
// result, the number the study reports, instead of in its place.
// --store records the result in a study's results store (study/store.h) as one evaluation of the
// model's cell ("MODEL|METHOD|CALIBRATION", the 16-bit model's method being fp16), so that
// `lowbit report` lays it out as the paper's Table 8.
#include "commands.h"

#include "backend/device_check.h"
#include "backend/ops.h"
#include "core/device.h"
#include "core/error.h"
#include "eval/identity.h"
#include "eval/vlm/vlm_eval.h"
#include "quant/llava_next_quantized.h"
#include "quant/lowbit_checkpoint.h"
#include "study/grid.h"
#include "study/store.h"
#include "formats/tokenizer.h"
#include "model/llava_next.h"
#include "model/llava_next_device.h"

#include <fmt/format.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>

namespace lowbit::cli {

namespace {

struct Options {
  std::string model, task, data, predictions, conversation = "llava", device = "cpu";
  std::string store, study = "vlm", name;
  int64_t limit = 0, max_new_tokens = 0;
  int threads = 0;
  bool json = false;
  PackedFlags packed;
};

std::string metric_text(const vlm::Json& v) {
  if (v.is_null()) return "n/a (no item)";
  if (v.is_number()) return fmt::format("{:.4f}", v.get<double>());
  return v.dump();
}

// The model's cell as a study stores it, from the checkpoint's quantization record (none: fp16).
study::CellRecord cell_record(const std::string& name, const std::string& path, const std::string& sha256,
                              const nlohmann::json& method_id) {
  study::CellRecord c;
  const nlohmann::json& m = method_id["method"];
  const nlohmann::json& cal = method_id["calibration"];
  c.model = name;
  c.model_path = path;
  c.model_sha256 = sha256;
  c.method = m.value("spec", std::string("fp16"));
  c.method_name = m.value("name", std::string("fp16"));
  c.resolved = m.value("resolved", c.method);
  c.w = m.value("weight_bits", 16.0);
  c.a = m.value("activation_bits", 16);
  c.g = m.value("group_size", int64_t(-1));
  // The calibration part of the key as a study writes it (CalibrationSpec::key), so that a quantized
  // checkpoint's result lands in the cell a study gives the same method and calibration.
  c.calibration = cal.is_object() ? fmt::format("{}:n={},seqlen={},seed={},bos={}", cal.value("set", std::string()),
                                                cal.value("nsamples", int64_t(0)), cal.value("seqlen", int64_t(0)),
                                                cal.value("seed", uint64_t(0)), cal.value("bos", std::string("auto")))
                                  : "none";
  c.calibration_json = cal.dump();
  c.key = study::cell_key(name, c.method, c.calibration);
  return c;
}

void run(const Options& o) {
  set_num_threads(o.threads);
  const Device device = parse_device(o.device);
  check_device_available(device);  // before any work
  const vlm::VlmTask& task = vlm::vlm_task(o.task);
  vlm::VlmEvalOptions opt;
  opt.max_new_tokens = o.max_new_tokens;
  opt.conversation = vlm::parse_vlm_conversation(o.conversation);
  const std::vector<vlm::VlmItem> items = vlm::load_vlm_items(task, o.data, o.limit);
  auto model = load_llava_next(o.model);  // 16-bit, or its language model quantized
  LB_CHECK(!model->tokenizer_path().empty(), "vlm-eval: model '{}' has no tokenizer (tokenizer.json)", o.model);
  auto tok = load_tokenizer(model->tokenizer_path());
  // Decode on the CPU reads every weight once per token (16-bit weights stay 16-bit); the GPU
  // holds its own bf16 copy.
  if (!device.is_cuda()) model->language_model().set_keep_16bit_weights(true);
  // Before the store is touched and before placing (a GPU runner uploads the packed linears).
  opt.execution = apply_packed(o.packed, model->language_model(), device.is_cuda(), o.json);
  const std::string data_file = vlm::vlm_data_file(task, o.data);
  const std::string eval_key = vlm::vlm_evaluation_key(task, opt, o.limit);
  const bool want_identity = o.json || !o.store.empty();
  const Checkpoint& ck = model->language_model().checkpoint();
  const std::string name = o.name.empty() ? model_display_name(o.model) : o.name;
  const std::string sha = want_identity ? weights_sha256(ck) : "";
  const nlohmann::json method_id = method_part(ck);

  // The store is opened, and the result's place in it checked, before the model runs.
  std::unique_ptr<study::Store> store;
  study::CellRecord cell;
  if (!o.store.empty()) {
    store = std::make_unique<study::Store>(o.store, study::Store::Mode::ReadWrite);
    store->lock();
    const auto existing = store->study_name();
    LB_CHECK(!existing || *existing == o.study, "results store '{}' belongs to study '{}', not '{}' (--study)",
             o.store, existing.value_or(""), o.study);
    if (!existing) store->set_study_name(o.study);
    // A quantized checkpoint's cell is its source model's (path and weights SHA-256), as a study
    // records the cells it quantizes from that model; the identity below names the file evaluated.
    const nlohmann::json& src = method_id["source_model"];
    const bool quantized = src.is_object() && src.contains("sha256");
    cell = cell_record(name, quantized ? src.value("path", o.model) : o.model,
                       quantized ? src["sha256"].get<std::string>() : sha, method_id);
    LB_CHECK(!store->stored_evaluations().count({cell.key, eval_key}),
             "results store '{}' already holds {} of cell {}", o.store, eval_key, cell.key);
  }

  const std::unique_ptr<LlavaNextRunner> runner = place_llava_next(*model, device);
  const std::string device_name = runner->device_name();
  const auto t0 = std::chrono::steady_clock::now();
  const vlm::VlmEvalResult r =
      vlm::evaluate_vlm(*model, *tok, task, items, opt, [&](size_t i, size_t n, const vlm::VlmPrediction& p) {
        const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        const double eta = s / double(i + 1) * double(n - i - 1);
        fmt::print(stderr, "[{}/{}] {}: {} -> {} ({:.0f} s, ETA {:.0f} s)\n", i + 1, n, p.where,
                   vlm::Json(p.prediction).dump(), p.record.dump(), s, eta);
      }, runner.get());
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  if (!o.predictions.empty()) {
    const std::string tmp = o.predictions + ".tmp";
    {
      std::ofstream f(tmp, std::ios::binary);
      LB_CHECK(f.good(), "vlm-eval: cannot write '{}'", tmp);
      for (const vlm::VlmPrediction& p : r.items)
        f << vlm::Json{{"item", p.where}, {"prediction", p.prediction}, {"record", p.record},
                       {"prompt_tokens", p.prompt_tokens}, {"new_tokens", p.new_tokens}}
                 .dump()
          << "\n";
      LB_CHECK(f.good(), "vlm-eval: writing '{}' failed", tmp);
    }
    std::filesystem::rename(tmp, o.predictions);
  }

  nlohmann::json identity;
  if (want_identity) {
    RuntimeFacts facts;
    facts.seconds = seconds;
    facts.peak = peak_rss();
    facts.threads = num_threads();
    facts.device = device_name;
    facts.gpu = device.is_cuda();
    facts.peak_gpu_bytes = runner->peak_memory_bytes();
    identity = result_identity(model_identity(ck, name, o.model, sha, *tok, "auto"), method_id,
                               nlohmann::json::parse(vlm::vlm_evaluation_identity(task, data_file, opt, o.limit, r).dump()),
                               runtime_part(facts));
  }
  if (store) {
    study::RunRecord rr;
    rr.spec_text = fmt::format("lowbit vlm-eval --model {} --task {} --data {} --limit {} --max-new-tokens {} "
                               "--conversation {} --device {}{}", o.model, o.task, o.data, o.limit, o.max_new_tokens,
                               o.conversation, o.device,
                               o.packed.packed ? fmt::format(" --packed --packed-act {} --packed-head {}",
                                                             o.packed.act, o.packed.head)
                                               : "");
    rr.device = device_name;
    rr.threads = num_threads();
    const int64_t run_id = store->begin_run(rr);
    nlohmann::json id = identity;
    id["study"] = o.study;
    id["cell"] = cell.key;
    id["run"] = run_id;
    study::EvalRecord er;
    er.eval = task.name;
    er.eval_key = eval_key;
    er.kind = "vision_language";
    er.seconds = seconds;
    er.peak_rss_bytes = identity.value("peak_rss_bytes", int64_t(0));
    er.device = device_name;
    er.threads = num_threads();
    er.run_id = run_id;
    er.identity = id.dump();
    std::vector<study::MetricValue> metrics;
    for (const auto& [k, v] : r.metrics.items())
      if (v.is_number()) metrics.push_back({k, v.get<double>(), std::nullopt, int64_t(r.items.size())});
    store->write_evaluation(cell, er, metrics);
    store->finish_run(run_id);
    fmt::print(stderr, "{} of cell {} written to {}\n", eval_key, cell.key, o.store);
  }
  if (o.json) {
    const vlm::Json out = {{"task", task.name},
                           {"lmms_eval_task", task.lmms_eval_task},
                           {"split", task.split},
                           {"model", o.model},
                           {"data", o.data},
                           {"items", r.items.size()},
                           {"max_new_tokens", r.max_new_tokens},
                           {"conversation", vlm::vlm_conversation_name(r.conversation)},
                           {"execution", opt.execution},
                           {"seconds", seconds},
                           {"metrics", r.metrics},
                           {"identity", vlm::Json::parse(identity.dump())}};
    fmt::print("{}\n", out.dump(2));
    return;
  }
  fmt::print("{} (lmms-eval {}, {} split, {} items, max_new_tokens {}, conversation {}, {}, {:.1f} s)\n",
             task.name, task.lmms_eval_task, task.split, r.items.size(), r.max_new_tokens,
             vlm::vlm_conversation_name(r.conversation), opt.execution, seconds);
  for (const auto& [k, v] : r.metrics.items()) fmt::print("  {} = {}\n", k, metric_text(v));
}

}  // namespace

void register_vlm_eval(CLI::App& app) {
  auto o = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand("vlm-eval", "Evaluate a LLaVA-Next model on a vision-language benchmark "
                                                 "(lmms-eval's prompts, greedy answers and scoring)");
  cmd->add_option("--model", o->model, "LLaVA-Next model directory (LlavaNextForConditionalGeneration, with its "
                                       "tokenizer)")
      ->required();
  cmd->add_option("--task", o->task, "ai2d, chartqa, docvqa, mmbench_en or mme")->required();
  cmd->add_option("--data", o->data, "the task's jsonl (scripts/vlm_parquet_to_jsonl.py), or a folder holding "
                                     "TASK.jsonl")
      ->required();
  cmd->add_option("--limit", o->limit, "evaluate only the first N items (0: all)")->check(CLI::NonNegativeNumber);
  cmd->add_option("--max-new-tokens", o->max_new_tokens, "tokens to generate at most (0: the task's, as lmms-eval)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--conversation", o->conversation, "the prompt: llava (lmms-eval's llava model, LLaVA-NeXT's "
                                                     "system turn) or llava_hf (its llava_hf model, user turn only)")
      ->check(CLI::IsMember({"llava", "llava_hf"}))
      ->capture_default_str();
  cmd->add_option("--predictions", o->predictions, "also write each item's answer and record to this jsonl");
  cmd->add_flag("--json", o->json, "print the result as JSON");
  cmd->add_option("--store", o->store, "also record the result in this study results store (SQLite file)");
  cmd->add_option("--study", o->study, "the study's name in --store")->capture_default_str();
  cmd->add_option("--name", o->name, "the model's name in --store and the identity (default: the directory's name)");
  cmd->add_option("--threads", o->threads, "CPU threads (0: all cores)")->check(CLI::NonNegativeNumber);
  add_device_option(cmd, o->device);
  add_packed_options(cmd, o->packed);
  cmd->callback([o] { run(*o); });
}

}  // namespace lowbit::cli
