// quantize_model_on and layer_input_stats_on on a GPU: the GPU block driver (block_driver_cuda.h)
// in one cuda::Context on the chosen device.
#include "calib/block_driver_cuda.h"
#include "quant/quantize_device.h"

namespace lowbit {

QuantizedModel quantize_model_gpu(const Device& d, LlamaModel& model, QuantMethod& method, const Calibration& calib,
                                  const DriverCallbacks& cb, QuantizeRun& r) {
  cuda::Context ctx(d.index);
  r.device_name = ctx.name();
  QuantizedModel qm =
      quantize_model(model, method, &calib, cb, [&](LlamaModel& m, const DriverPlan& plan, const DriverCallbacks& c) {
        run_block_by_block_cuda(m, plan, c, ctx);
      });
  r.peak_gpu_bytes = double(cuda::peak_device_bytes());
  return qm;
}

BlockContext::StatsMap layer_input_stats_gpu(const Device& d, LlamaModel& model,
                                             const std::vector<std::vector<int32_t>>& windows, int64_t layer,
                                             const StatsRequest& req, BlockWeights* weights) {
  cuda::Context ctx(d.index);
  return layer_input_stats_cuda(model, windows, layer, req, weights, ctx);
}

}  // namespace lowbit
