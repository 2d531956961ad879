// --packed on a CUDA device, for code that is built with or without the CUDA backend: the
// W4A16 GEMM (backend/cuda/w4a16.cuh) for a quantized model's int linears (pack/w4_tiles.h).
#pragma once

#include "model/llama_model.h"

namespace lowbit::pack {

// Checks now that `model` is a quantized checkpoint (each linear's layout is checked, and a
// layout the tiles cannot hold refused naming the linear, when the model is placed on the GPU),
// and makes every CudaModel built from here on run its quantized linears packed. Throws
// lowbit::Error when the model is not quantized, or when this build has no CUDA backend
// (pack/gpu_packed_none.cpp).
void enable_gpu_packed_linears(const LlamaModel& model);

}  // namespace lowbit::pack
