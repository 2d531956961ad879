#include "quant/method.h"

#include "core/error.h"
#include "core/phase_profile.h"

#include <fmt/ranges.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <optional>

namespace lowbit {

const std::vector<MethodInfo>& method_registry() {
  // name, display, paper order, factory, group label, example, grid axes, baseline
  static const std::vector<MethodInfo> r = {
      {"fp16", "FP16", 0, make_baseline, "g", "fp16", {}, true},
      {"rtn", "RTN", 10, make_rtn, "g", "rtn:w=3,g=64,sym=1", {"w", "a", "g"}},
      {"gptq", "GPTQ", 20, make_gptq, "g", "gptq:w=3,g=64,act_order=1", {"w", "g"}},
      {"awq", "AWQ", 30, make_awq, "g", "awq:w=3,g=64", {"w", "g"}},
      {"slim", "SliM-LLM", 40, make_slim, "g", "slim:w=3,g=64,lambda=2", {"w", "g"}},
      {"quip", "QuIP", 50, make_quip, "g", "quip:w=3,npasses=1,seed=1", {"w"}},
      {"dbllm", "DB-LLM (FDB init)", 60, make_dbllm, "g", "dbllm:g=64,offset=0", {"g"}},
      {"pbllm", "PB-LLM", 70, make_pbllm, "g", "pbllm:low_frac=0.8,high_bit=4,metric=magnitude,g=64,block=64",
       {"low_frac", "high_bit", "g", "block"}},
      {"billm", "BiLLM", 80, make_billm, "g", "billm:block=64,metric=magnitude,up_lim=20", {}},
      {"smoothquant", "SmoothQuant", 90, make_smoothquant, "g", "smoothquant:w=8,a=8,alpha=0.5", {"w", "a"}},
      {"nf4", "NormalFloat", 100, make_nf4, "block", "nf4:dq=1", {"b"}},
      {"icq", "ICQ (IR-QLoRA)", 110, make_icq, "block", "icq:tau_range=0.1,tau_n=100", {}},
  };
  return r;
}

const MethodInfo& method_info(const std::string& name) {
  for (const MethodInfo& m : method_registry())
    if (name == m.name) return m;
  fail("unknown method '{}' (known: {})", name, fmt::join(method_names(), ", "));
}

bool is_baseline_method(const std::string& name) {
  for (const MethodInfo& m : method_registry())
    if (name == m.name) return m.baseline;
  return false;
}

std::unique_ptr<QuantMethod> make_method(const std::string& spec_text) {
  QuantSpec spec = QuantSpec::parse(spec_text);
  return method_info(spec.method()).make(std::move(spec));
}

std::vector<std::string> method_names() {
  std::vector<std::string> out;
  for (const MethodInfo& m : method_registry()) out.push_back(m.name);
  return out;
}

std::vector<std::string> method_help(const std::string& name) {
  auto m = make_method(name);
  return m->spec().help();
}

void QuantMethod::check_device(const Device& d) const {
  std::vector<std::string> kinds;
  for (Device::Kind k : {Device::Kind::Cpu, Device::Kind::Cuda})
    if (runs_on(k)) kinds.emplace_back(device_kind_name(k));
  LB_CHECK(runs_on(d.kind), "method '{}' does not run on {} (it runs on: {})", spec_.method(), d.str(),
           fmt::join(kinds, ", "));
}

DType linear_storage_dtype(const LlamaModel& model, int64_t layer, LinearKind k) {
  const WeightInfo* info = model.checkpoint().weights->info(linear_weight_name(layer, k));
  LB_ASSERT(info != nullptr);
  return info->dtype == DType::BF16 || info->dtype == DType::F16 ? info->dtype : DType::F32;
}

void finish_linear(BlockContext& ctx, LinearKind k, QuantizedLinear q, QuantizedBlock& out,
                   std::chrono::steady_clock::time_point started, const InputStats* stats,
                   const std::string& note) {
  const PhaseScope phase("finish_linear");
  Tensor& w = ctx.weights()[k];
  LB_ASSERT(w.dim(0) == q.rows && w.dim(1) == q.cols);
  LB_ASSERT(w.writable() && w.dtype() == DType::F32 && w.is_contiguous());
  std::optional<PhaseScope> sub(std::in_place, "finish_linear/validate, dequantize");
  q.validate(fmt::format("layer {} {}", ctx.layer(), linear_name(k)));
  const int64_t n = q.rows * q.cols;
  float* deq = ctx.dequant_scratch(n);
  q.dequantize(deq);
  sub.emplace("finish_linear/errors");
  LinearReport r;
  r.kind = k;
  if (stats != nullptr && stats->has_hessian())
    r.output_rel_err = ctx.output_error(w.data_as<float>(), deq, q.rows, q.cols, *stats);
  sub.emplace("finish_linear/weight error, store");
  r.weight_rel_err = relative_weight_error_and_store(w.mutable_data_as<float>(), deq, n);
  r.note = note;
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  out.linear[size_t(k)] = std::move(q);
  ctx.report(r);
}

}  // namespace lowbit
