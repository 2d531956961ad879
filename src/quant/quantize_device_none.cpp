// Builds without CUDA: no GPU quantization driver (check_device_available refuses a CUDA device
// before quantize_model_on and layer_input_stats_on get here; this says so again for any other
// caller).
#include "quant/quantize_device.h"

#include "core/error.h"

namespace lowbit {

QuantizedModel quantize_model_gpu(const Device& d, LlamaModel&, QuantMethod&, const Calibration&,
                                  const DriverCallbacks&, QuantizeRun&) {
  fail("device {}: this lowbit was built without CUDA", d.str());
}

BlockContext::StatsMap layer_input_stats_gpu(const Device& d, LlamaModel&, const std::vector<std::vector<int32_t>>&,
                                             int64_t, const StatsRequest&, BlockWeights*) {
  fail("device {}: this lowbit was built without CUDA", d.str());
}

}  // namespace lowbit
