#include "quant/quantize.h"

#include "core/error.h"

#include <chrono>
#include <cstring>

namespace lowbit {

using json = nlohmann::json;

QuantizedModel quantize_model(LlamaModel& model, QuantMethod& method, const Calibration* calib,
                              const DriverCallbacks& cb, const BlockDriver& driver) {
  LB_CHECK(!method.needs_calibration() || calib != nullptr, "method '{}' needs calibration data",
           method.spec().text());
  const auto t0 = std::chrono::steady_clock::now();
  QuantizedModel qm;
  qm.method = {{"spec", method.spec().text()}, {"resolved", method.spec().resolved()},
               {"name", method.spec().method()}, {"weight_bits", method.weight_bits()},
               {"activation_bits", method.activation_bits()}, {"group_size", method.group_size()}};
  qm.calibration = method.needs_calibration() ? calib->identity() : json(nullptr);
  qm.blocks.resize(size_t(model.config().num_hidden_layers));
  DriverPlan plan;
  plan.windows = method.needs_calibration() ? &calib->windows : nullptr;
  plan.propagate_quantized = method.propagates_quantized();
  plan.quantize_block = [&](BlockContext& ctx) {
    QuantizedBlock& out = qm.blocks[size_t(ctx.layer())];
    auto copy = [](const Tensor& t) {
      Tensor c = Tensor::empty(t.dtype(), t.shape());
      std::memcpy(c.mutable_data(), t.data(), size_t(t.nbytes()));
      return c;
    };
    const Tensor in_norm = copy(ctx.weights().input_norm), post_norm = copy(ctx.weights().post_norm);
    method.quantize_block(ctx, out);
    for (LinearKind k : kAllLinears)
      LB_CHECK(out.linear[size_t(k)].has_value(), "method '{}' left layer {} {} unquantized", method.spec().text(),
               ctx.layer(), linear_name(k));
    // Record the norms the method rewrote.
    auto changed = [](const Tensor& a, const Tensor& b) { return std::memcmp(a.data(), b.data(), size_t(a.nbytes())) != 0; };
    if (changed(in_norm, ctx.weights().input_norm)) out.rewritten[TensorKind::AttnNorm] = copy(ctx.weights().input_norm);
    if (changed(post_norm, ctx.weights().post_norm)) out.rewritten[TensorKind::FfnNorm] = copy(ctx.weights().post_norm);
  };
  if (driver)
    driver(model, plan, cb);
  else
    run_block_by_block(model, plan, cb);
  qm.activation = method.activation_config();
  qm.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return qm;
}

}  // namespace lowbit
