// What the column-block kernels of GPTQ and the methods built on it (gptq.cu, pbllm.cu) share:
// one thread per row walks a batch of at most kColumnBlockCols columns, its slice of the row in
// local memory, the batch's [count, count] block of the inverse factor staged in shared memory
// (more than the 48 KiB a launch gets by default, hence the opt-in per launch).
#pragma once

#include "backend/cuda/cuda_util.h"

#include <cstdint>
#include <string>

namespace lowbit::cuda {

constexpr int kColumnBlockCols = 128;  // the largest column batch
constexpr int kColumnBlockRows = 128;  // rows (threads) per thread block

// hs[i * count + j] = hinv[(i1 + i) * cols + i1 + j], by every thread of the block, then a barrier.
__device__ inline void stage_factor_block(float* hs, const float* hinv, int64_t cols, int64_t i1, int64_t count) {
  for (int64_t idx = threadIdx.x; idx < count * count; idx += blockDim.x) {
    const int64_t i = idx / count, j = idx % count;
    hs[idx] = hinv[(i1 + i) * cols + i1 + j];
  }
  __syncthreads();
}

// Launches kernel(a) over a.rows rows for a batch of a.count columns; `method` names the caller in
// the error for a batch outside 1..kColumnBlockCols.
template <typename Args>
void launch_column_block(void (*kernel)(Args), const Args& a, const char* method, cudaStream_t s) {
  if (a.count < 1 || a.count > kColumnBlockCols)
    throw_error(std::string(method) + " on the GPU: column blocks of 1.." + std::to_string(kColumnBlockCols) +
                ", not " + std::to_string(a.count));
  const size_t smem = size_t(a.count * a.count) * sizeof(float);
  // Per launch: the opt-in to more than 48 KiB of shared memory holds for the current device only.
  LB_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                     int(kColumnBlockCols * kColumnBlockCols * sizeof(float))));
  kernel<<<unsigned((a.rows + kColumnBlockRows - 1) / kColumnBlockRows), kColumnBlockRows, smem, s>>>(a);
  LB_CUDA_LAUNCH_CHECK();
}

}  // namespace lowbit::cuda
