// Quantizing a whole model with one method: the block-by-block driver (calib/block_driver.h)
// running the method on every block, and the quantized checkpoint that results.
//
// A quantized checkpoint is a directory: config.json, the tokenizer files, and model.safetensors
// holding, for every quantized linear "<base>" (e.g. model.layers.3.mlp.down_proj):
//   <base>.qcodes      U8   [rows, ceil(cols * bits / 8)]  codes, bit-packed LSB-first per row
//   <base>.scales      F32  [rows, groups] (or [blocks] for flat groups)
//   <base>.zeros       F32  same shape (Int format)
//   <base>.g_idx       I32  [cols] (act_order only)
//   <base>.codebook    F32  [2^bits] (Codebook format)
//   <base>.extra.NAME  method-specific tensors
// and every other tensor of the model under its usual name (in its source dtype, or in F32 when
// the method rewrote it). The safetensors metadata key "lowbit.quantization" holds a JSON object
// with the method (spec as given and resolved), #W/#A/#G, the calibration identity, the source
// model (path, SHA-256 of its weight files, dtype), the lowbit version and commit, timings, and
// each linear's layout. open_model() presents such a directory as an ordinary checkpoint whose
// linear weights are the dequantized (fake-quant) 16-bit weights.
#pragma once

#include "calib/block_driver.h"
#include "calib/calib_data.h"
#include "formats/checkpoint.h"
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
  double seconds = 0;
};

// Runs `method` over every block of `model`. `calib` may be null only for data-free methods.
QuantizedModel quantize_model(LlamaModel& model, QuantMethod& method, const Calibration* calib,
                              const DriverCallbacks& cb);

// Writes the quantized checkpoint directory `out_dir` (which must not exist unless `overwrite`):
// everything goes to a temporary directory beside it that is renamed into place when complete.
// `extra` is merged into the metadata (e.g. peak memory).
void write_quantized_checkpoint(const std::string& out_dir, const LlamaModel& source, const QuantizedModel& qm,
                                const nlohmann::json& extra, bool overwrite);

// Opens a model directory or file, quantized or not. For a quantized checkpoint, the weights are
// the dequantized linears plus the stored tensors, and Checkpoint::quantization holds the
// metadata object; for others it is null.
Checkpoint open_model(const std::string& path);

// Installs a quantized checkpoint's activation quantization (if any) as the model's forward
// hooks: what every evaluation of such a model must do.
void install_quantized_forward(LlamaModel& model);
// open_model(), a LlamaModel over it, install_quantized_forward().
std::unique_ptr<LlamaModel> load_model(const std::string& path);

// SHA-256 over the checkpoint's weight files, in order (the identity of a model in results).
std::string weights_sha256(const Checkpoint& ck);

}  // namespace lowbit
