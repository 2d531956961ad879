#include "quant/method.h"

#include "core/error.h"

#include <fmt/ranges.h>

#include <cstring>
#include <map>

namespace lowbit {

namespace {

using Factory = std::unique_ptr<QuantMethod> (*)(QuantSpec);

const std::map<std::string, Factory>& registry() {
  static const std::map<std::string, Factory> m = {
      {"rtn", make_rtn},
      {"nf4", make_nf4},
      {"gptq", make_gptq},
      {"awq", make_awq},
      {"smoothquant", make_smoothquant},
      {"pbllm", make_pbllm},
      {"billm", make_billm},
  };
  return m;
}

}  // namespace

std::unique_ptr<QuantMethod> make_method(const std::string& spec_text) {
  QuantSpec spec = QuantSpec::parse(spec_text);
  auto it = registry().find(spec.method());
  LB_CHECK(it != registry().end(), "unknown method '{}' (known: {})", spec.method(), fmt::join(method_names(), ", "));
  return it->second(std::move(spec));
}

std::vector<std::string> method_names() {
  std::vector<std::string> out;
  for (const auto& [name, f] : registry()) out.push_back(name);
  return out;
}

std::vector<std::string> method_help(const std::string& name) {
  auto m = make_method(name);
  return m->spec().help();
}

DType linear_storage_dtype(const LlamaModel& model, int64_t layer, LinearKind k) {
  const WeightInfo* info = model.checkpoint().weights->info(linear_weight_name(layer, k));
  LB_ASSERT(info != nullptr);
  return info->dtype == DType::BF16 || info->dtype == DType::F16 ? info->dtype : DType::F32;
}

void finish_linear(BlockContext& ctx, LinearKind k, QuantizedLinear q, QuantizedBlock& out,
                   std::chrono::steady_clock::time_point started, const std::vector<double>* hessian,
                   const std::string& note) {
  q.validate(fmt::format("layer {} {}", ctx.layer(), linear_name(k)));
  Tensor deq = q.dequantize_f32();
  std::vector<float> v(size_t(deq.numel()));
  std::memcpy(v.data(), deq.data(), size_t(deq.nbytes()));
  finish_linear(ctx, k, std::move(q), v, out, started, hessian, note);
}

void finish_linear(BlockContext& ctx, LinearKind k, QuantizedLinear q, const std::vector<float>& deq,
                   QuantizedBlock& out, std::chrono::steady_clock::time_point started,
                   const std::vector<double>* hessian, const std::string& note) {
  Tensor& w = ctx.weights()[k];
  LB_ASSERT(w.dim(0) == q.rows && w.dim(1) == q.cols && int64_t(deq.size()) == q.rows * q.cols);
  LinearReport r;
  r.kind = k;
  r.weight_rel_err = relative_weight_error(w.data_as<float>(), deq.data(), q.rows * q.cols);
  if (hessian != nullptr && !hessian->empty())
    r.output_rel_err = relative_output_error(w.data_as<float>(), deq.data(), q.rows, q.cols, *hessian);
  std::memcpy(w.mutable_data(), deq.data(), deq.size() * sizeof(float));
  r.note = note;
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  out.linear[size_t(k)] = std::move(q);
  ctx.report(r);
}

}  // namespace lowbit
