// The packed linears of a whole quantized model for CudaModel (model/cuda_model.h): each
// quantized linear repacked into the GPU layout pack/gpu_packed.h picks for it and uploaded.
#pragma once

#include "backend/cuda/packed_weight.cuh"
#include "model/cuda_model.h"
#include "pack/gpu_packed.h"

#include <memory>
#include <string>

namespace lowbit::pack {

// q repacked into its layout (gpu_packed_layout) and uploaded; throws lowbit::Error naming `what`
// for a linear no layout holds.
std::shared_ptr<const cuda::PackedWeight> upload_packed_linear(const QuantizedLinear& q, const std::string& what,
                                                               cudaStream_t s);

// The packed linears of `model`, a model opened from a quantized checkpoint: each quantized
// linear is repacked and uploaded when CudaModel asks for it; the others (unquantized linears)
// run from bf16. Throws lowbit::Error when the model is not quantized, and (when asked) for a
// quantized linear no layout holds, naming it, its format and the reason.
GpuPackedLinears gpu_packed_linears_of(const LlamaModel& model, cudaStream_t s);
// Makes every CudaModel that the evaluation sessions and `generate` build from here on run its
// model's quantized linears packed (set_gpu_packed_factory with gpu_packed_linears_of).
void use_gpu_packed_linears();

}  // namespace lowbit::pack
