// Quantizing a whole model with one method: the block-by-block driver (calib/block_driver.h)
// running the method on every block. The result is written or held in memory as a lowbit
// quantized checkpoint (lowbit_checkpoint.h, quantized_in_memory.h).
#pragma once

#include "calib/block_driver.h"
#include "calib/calib_data.h"
#include "formats/checkpoint.h"
#include "quant/lowbit_checkpoint.h"
#include "quant/method.h"

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

namespace lowbit {

struct QuantizedModel {
  nlohmann::json method;       // {"spec", "resolved", "name", "weight_bits", "activation_bits", "group_size"}
  nlohmann::json calibration;  // Calibration::identity(), or null for data-free methods
  nlohmann::json activation;   // activation quantization (activation_quant.h), or null
  std::vector<QuantizedBlock> blocks;
  // Model-level tensors the method rewrote (embeddings, final norm, LM head), fp32.
  std::map<TensorKind, Tensor> rewritten;
  double seconds = 0;
};

// Runs `method` over every block of `model` with `driver` (the CPU's run_block_by_block when
// empty; quantize_model_on in quantize_device.h chooses by device). `calib` may be null only for
// data-free methods.
QuantizedModel quantize_model(LlamaModel& model, QuantMethod& method, const Calibration* calib,
                              const DriverCallbacks& cb, const BlockDriver& driver = {});

}  // namespace lowbit
