#include "quant/quantize_device.h"

#include "backend/device_check.h"
#include "core/error.h"

namespace lowbit {

void check_quantize_device(const QuantMethod& method, const Device& d) {
  LB_CHECK(!is_baseline_method(method.spec().method()), "method '{}' is the 16-bit model itself: nothing to quantize",
           method.spec().method());
  method.check_device(d);
  check_device_available(d);
}

QuantizedModel quantize_model_on(const Device& d, LlamaModel& model, QuantMethod& method, const Calibration* calib,
                                 const DriverCallbacks& cb, QuantizeRun* run) {
  check_quantize_device(method, d);
  QuantizeRun local;
  QuantizeRun& r = run ? *run : local;
  r.device_name = "cpu";
  if (d.is_cuda() && method.needs_calibration()) {
    LB_CHECK(calib != nullptr, "method '{}' needs calibration data", method.spec().text());
    return quantize_model_gpu(d, model, method, *calib, cb, r);
  }
  if (d.is_cuda()) r.note = method.spec().method() + " is data-free: it quantizes on the host";
  return quantize_model(model, method, method.needs_calibration() ? calib : nullptr, cb);
}

BlockContext::StatsMap layer_input_stats_on(const Device& d, LlamaModel& model,
                                            const std::vector<std::vector<int32_t>>& windows, int64_t layer,
                                            const StatsRequest& req, BlockWeights* weights) {
  check_device_available(d);
  if (d.is_cuda()) return layer_input_stats_gpu(d, model, windows, layer, req, weights);
  return layer_input_stats(model, windows, layer, req, weights);
}

}  // namespace lowbit
