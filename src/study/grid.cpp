#include "study/grid.h"

#include "eval/identity.h"
#include "eval/vlm/vlm_eval.h"
#include "quant/method.h"

#include <fmt/format.h>

namespace lowbit::study {

std::string cell_key(const std::string& model, const std::string& method, const std::string& calibration,
                     const std::string& training) {
  return model + "|" + method + "|" + calibration + (training.empty() ? "" : "|" + training);
}

StudyPlan expand_plan(const StudySpec& spec) {
  StudyPlan plan;
  const EvalSpec& e = spec.eval;
  // The tokenizer convention changes every number: the keys name it when it is not the default.
  for (const auto& d : e.ppl)
    plan.evaluations.push_back({EvalKind::Perplexity, d, perplexity_key(d, e.seqlen, e.limit, e.bos, spec.spm)});
  for (const auto& d : e.kld)
    plan.evaluations.push_back({EvalKind::KlDivergence, d, kl_divergence_key(d, e.seqlen, e.limit, e.bos, spec.spm)});
  for (const auto& t : e.tasks) {
    const int64_t limit = t.starts_with("mmlu") ? e.mmlu_limit : e.task_limit;
    plan.evaluations.push_back(
        {EvalKind::MultipleChoice, t, multiple_choice_key(t, limit, e.bos, e.max_length, e.mmlu_shots, spec.spm)});
  }
  for (const auto& t : e.vlm_tasks) {
    vlm::VlmEvalOptions o;
    o.max_new_tokens = e.vlm_max_new_tokens;
    o.conversation = vlm::parse_vlm_conversation(e.vlm_conversation);
    plan.evaluations.push_back({EvalKind::VisionLanguage, t, vlm::vlm_evaluation_key(vlm::vlm_task(t), o, e.vlm_limit)});
  }

  for (size_t m = 0; m < spec.models.size(); ++m) {
    for (const auto& mc : spec.methods) {
      Cell c;
      c.model = m;
      c.model_name = spec.models[m].name;
      c.method = mc.spec;
      c.method_name = mc.name;
      c.quantize_device = mc.device.empty() ? spec.device : mc.device;
      c.train = mc.train;
      if (const std::string q = mc.quant_spec(); !is_baseline_method(mc.name) && !q.empty()) {
        const auto method = make_method(q);
        c.calibrated = method->needs_calibration();
        c.w = method->weight_bits();
        c.a = method->activation_bits();
        c.g = method->group_size();
      }
      // DAD distills on the calibration windows, or on windows the model generates (named by the
      // training key), which no calibration text enters, also not the initialization's.
      if (mc.train.kind == TrainKind::Distill) c.calibrated = mc.train.distill.data == "calib";
      c.calibration = c.calibrated ? spec.calibration.key() : "none";
      if (c.calibrated && spec.spm != "auto") c.calibration += ",spm=" + spec.spm;
      c.key = cell_key(c.model_name, c.method, c.calibration, mc.train.key);
      plan.cells.push_back(std::move(c));
    }
  }
  return plan;
}

}  // namespace lowbit::study
