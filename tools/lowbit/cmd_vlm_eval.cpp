// lowbit vlm-eval --model DIR --task ai2d|chartqa|docvqa|mmbench_en|mme --data FILE_OR_DIR
//                 [--limit N] [--max-new-tokens N] [--conversation llava|llava_hf]
//                 [--predictions OUT.jsonl] [--json]
// A LLaVA-Next checkpoint on one vision-language benchmark with lmms-eval's conventions
// (eval/vlm/vlm_task.h): greedy answers, the task's scoring and aggregate. Every item and image
// is checked before the model runs; the predictions file is written only after the last item.
#include "commands.h"

#include "backend/ops.h"
#include "core/error.h"
#include "eval/identity.h"
#include "eval/vlm/vlm_eval.h"
#include "quant/lowbit_checkpoint.h"
#include "formats/tokenizer.h"
#include "model/llava_next.h"

#include <fmt/format.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>

namespace lowbit::cli {

namespace {

struct Options {
  std::string model, task, data, predictions, conversation = "llava";
  int64_t limit = 0, max_new_tokens = 0;
  int threads = 0;
  bool json = false;
};

std::string metric_text(const vlm::Json& v) {
  if (v.is_null()) return "n/a (no item)";
  if (v.is_number()) return fmt::format("{:.4f}", v.get<double>());
  return v.dump();
}

void run(const Options& o) {
  set_num_threads(o.threads);
  const vlm::VlmTask& task = vlm::vlm_task(o.task);
  vlm::VlmEvalOptions opt;
  opt.max_new_tokens = o.max_new_tokens;
  opt.conversation = vlm::parse_vlm_conversation(o.conversation);
  const std::vector<vlm::VlmItem> items = vlm::load_vlm_items(task, o.data, o.limit);
  auto model = LlavaNextModel::open(o.model);
  LB_CHECK(!model->tokenizer_path().empty(), "vlm-eval: model '{}' has no tokenizer (tokenizer.json)", o.model);
  auto tok = load_tokenizer(model->tokenizer_path());
  model->language_model().set_keep_16bit_weights(true);  // decode reads every weight once per token

  const auto t0 = std::chrono::steady_clock::now();
  const vlm::VlmEvalResult r =
      vlm::evaluate_vlm(*model, *tok, task, items, opt, [&](size_t i, size_t n, const vlm::VlmPrediction& p) {
        const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        const double eta = s / double(i + 1) * double(n - i - 1);
        fmt::print(stderr, "[{}/{}] {}: {} -> {} ({:.0f} s, ETA {:.0f} s)\n", i + 1, n, p.where,
                   vlm::Json(p.prediction).dump(), p.record.dump(), s, eta);
      });
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

  if (o.json) {
    RuntimeFacts facts;
    facts.seconds = seconds;
    facts.peak = peak_rss();
    facts.threads = num_threads();
    const Checkpoint& ck = model->language_model().checkpoint();
    const nlohmann::json identity = result_identity(
        model_identity(ck, model_display_name(o.model), o.model, weights_sha256(ck), *tok, "auto"), method_part(ck),
        nlohmann::json::parse(vlm::vlm_evaluation_identity(task, vlm::vlm_data_file(task, o.data), opt, o.limit, r).dump()),
        runtime_part(facts));
    const vlm::Json out = {{"task", task.name},
                           {"lmms_eval_task", task.lmms_eval_task},
                           {"split", task.split},
                           {"model", o.model},
                           {"data", o.data},
                           {"items", r.items.size()},
                           {"max_new_tokens", r.max_new_tokens},
                           {"conversation", vlm::vlm_conversation_name(r.conversation)},
                           {"seconds", seconds},
                           {"metrics", r.metrics},
                           {"identity", vlm::Json::parse(identity.dump())}};
    fmt::print("{}\n", out.dump(2));
    return;
  }
  fmt::print("{} (lmms-eval {}, {} split, {} items, max_new_tokens {}, conversation {}, {:.1f} s)\n", task.name,
             task.lmms_eval_task, task.split, r.items.size(), r.max_new_tokens,
             vlm::vlm_conversation_name(r.conversation), seconds);
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
  cmd->add_option("--threads", o->threads, "CPU threads (0: all cores)")->check(CLI::NonNegativeNumber);
  cmd->callback([o] { run(*o); });
}

}  // namespace lowbit::cli
