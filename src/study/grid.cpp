#include "study/grid.h"

#include "quant/method.h"

#include <fmt/format.h>

namespace lowbit::study {

std::string cell_key(const std::string& model, const std::string& method, const std::string& calibration) {
  return model + "|" + method + "|" + calibration;
}

StudyPlan expand_plan(const StudySpec& spec) {
  StudyPlan plan;
  const EvalSpec& e = spec.eval;
  for (const auto& d : e.ppl)
    plan.evaluations.push_back(
        {EvalKind::Perplexity, d, fmt::format("{}:seqlen={},limit={},bos={}", d, e.seqlen, e.limit, e.bos)});
  for (const auto& t : e.tasks) {
    const bool mmlu = t.starts_with("mmlu");
    std::string key = fmt::format("{}:limit={},bos={},max_length={}", t, mmlu ? e.mmlu_limit : e.task_limit, e.bos,
                                  e.max_length);
    if (mmlu) key += fmt::format(",shots={}", e.mmlu_shots);
    plan.evaluations.push_back({EvalKind::MultipleChoice, t, key});
  }
  // The tokenizer convention changes every number; name it when it is not the default.
  if (spec.spm != "auto")
    for (auto& ev : plan.evaluations) ev.key += ",spm=" + spec.spm;

  for (size_t m = 0; m < spec.models.size(); ++m) {
    for (const auto& mc : spec.methods) {
      Cell c;
      c.model = m;
      c.model_name = spec.models[m].name;
      c.method = mc.spec;
      c.method_name = mc.name;
      c.quantize_device = mc.device.empty() ? spec.device : mc.device;
      if (!is_baseline_method(mc.name)) {
        const auto method = make_method(mc.spec);
        c.calibrated = method->needs_calibration();
        c.w = method->weight_bits();
        c.a = method->activation_bits();
        c.g = method->group_size();
      }
      c.calibration = c.calibrated ? spec.calibration.key() : "none";
      if (c.calibrated && spec.spm != "auto") c.calibration += ",spm=" + spec.spm;
      c.key = cell_key(c.model_name, c.method, c.calibration);
      plan.cells.push_back(std::move(c));
    }
  }
  return plan;
}

}  // namespace lowbit::study
