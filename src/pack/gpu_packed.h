// --packed on a CUDA device, for code that is built with or without the CUDA backend: which GPU
// layout runs each quantized linear from its codes, and switching a model's CudaModels to them.
//
//   int, 4-bit codes                        W4A16 tiles (pack/w4_tiles.h, backend/cuda/w4a16.cuh)
//   int, 1-3 or 5-8-bit codes               low-bit GEMV (pack/gemv_pack.h, backend/cuda/gemv_lowbit.cuh)
//   codebook, 1-4-bit codes (NF4)           low-bit GEMV
//   int of up to 4 bits that the GEMV       W4A16 tiles (act_order, group sizes that are not a
//     layout cannot hold                      multiple of 32; 2- and 3-bit codes then take 4 bits)
//   anything else                           refused, naming the linear and the reason: a packed
//                                           run never falls back to bf16 weights for a quantized
//                                           linear
#pragma once

#include "model/llama_model.h"
#include "quant/quantized_linear.h"

#include <string>

namespace lowbit::pack {

enum class GpuPackedLayout { W4A16, Gemv };

// The layout of the table above for q; throws lowbit::Error naming `what`, q's format and bits
// and why no layout holds it.
GpuPackedLayout gpu_packed_layout(const QuantizedLinear& q, const std::string& what);

// The layouts of every quantized linear of `model`, from the checkpoint's metadata (a linear with
// a g_idx, or one the metadata does not describe, is read): "packed-w4a16", "packed-gemv" or
// "packed-w4a16+gemv", the execution results record. Throws lowbit::Error when the model is not
// quantized, or naming the first linear no layout holds.
std::string gpu_packed_execution(const LlamaModel& model);

// Checks now that `model` is a quantized checkpoint whose every quantized linear has a layout
// (gpu_packed_execution, returned), and makes every CudaModel built from here on run its
// quantized linears packed. Throws lowbit::Error as gpu_packed_execution does, or when this
// build has no CUDA backend (pack/gpu_packed_none.cpp).
std::string enable_gpu_packed_linears(const LlamaModel& model);

}  // namespace lowbit::pack
