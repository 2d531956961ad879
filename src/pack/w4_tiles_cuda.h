// W4Tiles (pack/w4_tiles.h) on the GPU: uploading one matrix for backend/cuda/w4a16.cuh's GEMM,
// and the packed linears of a whole quantized model for CudaModel (model/cuda_model.h).
#pragma once

#include "backend/cuda/w4a16.cuh"
#include "model/cuda_model.h"
#include "pack/w4_tiles.h"

#include <string>

namespace lowbit::pack {

inline cuda::W4A16Weight upload_w4_tiles(const W4Tiles& t, const std::string& what, cudaStream_t s) {
  return cuda::upload_w4a16(t.n, t.k, t.group_slots, t.groups, t.codes, t.scales, t.source_col, what.c_str(), s);
}

// The packed linears of `model`, a model opened from a quantized checkpoint: each quantized
// linear is repacked into W4A16 tiles and uploaded when CudaModel asks for it; the others
// (unquantized linears) run from bf16. Throws lowbit::Error when the model is not quantized, and
// (when asked) for a quantized linear the tiles cannot hold, naming it and its format.
GpuPackedLinears gpu_packed_linears_of(const LlamaModel& model, cudaStream_t s);
// Makes every CudaModel that the evaluation sessions and `generate` build from here on run its
// model's quantized linears packed (set_gpu_packed_factory with gpu_packed_linears_of).
void use_gpu_packed_linears();

}  // namespace lowbit::pack
