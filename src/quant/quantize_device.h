// Where a quantization run happens: the one place that turns a Device into a driver. The CLI's
// quantize and the study runner both call quantize_model_on, so a method/device pair is accepted
// or refused the same way everywhere.
//
//   cpu                        quantize_model (the block-by-block driver of calib/)
//   cuda, data-free method     quantize_model on the host (nothing runs on a model), said in
//                              QuantizeRun::note
//   cuda, any other method     quantize_model with the GPU block driver (block_driver_cuda.h):
//                              the block's forwards and statistics on the GPU, the method's
//                              arithmetic where the method runs it (GPTQ's solve on the GPU too,
//                              gptq_quantize_on; the others' on the host)
// A configuration a device cannot run is refused by QuantMethod::check_device before any work.
#pragma once

#include "core/device.h"
#include "quant/quantize.h"

#include <string>

namespace lowbit {

struct QuantizeRun {
  std::string device_name;    // "cpu" or the GPU's name
  double peak_gpu_bytes = 0;  // the GPU driver's peak allocation (0 on the CPU)
  std::string note;           // e.g. that a data-free method ran on the host
};

// Throws (before any work) when the method cannot run on `d` or `d` is not available.
void check_quantize_device(const QuantMethod& method, const Device& d);

QuantizedModel quantize_model_on(const Device& d, LlamaModel& model, QuantMethod& method, const Calibration* calib,
                                 const DriverCallbacks& cb, QuantizeRun* run = nullptr);

// The input statistics of block `layer`'s linears (Hessian, max |x|, mean |x|) with the model run
// on `d` (calib/block_driver.h's layer_input_stats on the CPU, calib/block_driver_cuda.h's on a GPU),
// and the block's weights as quantization reads them into *weights.
BlockContext::StatsMap layer_input_stats_on(const Device& d, LlamaModel& model,
                                            const std::vector<std::vector<int32_t>>& windows, int64_t layer,
                                            const StatsRequest& req, BlockWeights* weights);

// The GPU halves of the two above, which they call for a CUDA device (after the checks):
// quantize_device_cuda.cpp, or in a build without CUDA quantize_device_none.cpp, which refuses.
QuantizedModel quantize_model_gpu(const Device& d, LlamaModel& model, QuantMethod& method, const Calibration& calib,
                                  const DriverCallbacks& cb, QuantizeRun& run);
BlockContext::StatsMap layer_input_stats_gpu(const Device& d, LlamaModel& model,
                                             const std::vector<std::vector<int32_t>>& windows, int64_t layer,
                                             const StatsRequest& req, BlockWeights* weights);

}  // namespace lowbit
