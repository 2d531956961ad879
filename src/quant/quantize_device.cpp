#include "quant/quantize_device.h"

#include "backend/device_check.h"
#include "core/error.h"

#ifdef LOWBIT_WITH_CUDA
#include "calib/block_driver_cuda.h"
#endif

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
#ifdef LOWBIT_WITH_CUDA
    LB_CHECK(calib != nullptr, "method '{}' needs calibration data", method.spec().text());
    cuda::Context ctx(d.index);
    r.device_name = ctx.name();
    QuantizedModel qm =
        quantize_model(model, method, calib, cb, [&](LlamaModel& m, const DriverPlan& plan, const DriverCallbacks& c) {
          run_block_by_block_cuda(m, plan, c, ctx);
        });
    r.peak_gpu_bytes = double(cuda::peak_device_bytes());
    return qm;
#endif
  }
  if (d.is_cuda()) r.note = method.spec().method() + " is data-free: it quantizes on the host";
  return quantize_model(model, method, method.needs_calibration() ? calib : nullptr, cb);
}

BlockContext::StatsMap layer_input_stats_on(const Device& d, LlamaModel& model,
                                            const std::vector<std::vector<int32_t>>& windows, int64_t layer,
                                            const StatsRequest& req, BlockWeights* weights) {
  check_device_available(d);
#ifdef LOWBIT_WITH_CUDA
  if (d.is_cuda()) {
    cuda::Context ctx(d.index);
    return layer_input_stats_cuda(model, windows, layer, req, weights, ctx);
  }
#endif
  return layer_input_stats(model, windows, layer, req, weights);
}

}  // namespace lowbit
