// Reductions over a thread block shared by the CUDA kernels (each result the same in every thread),
// and the grid size of a grid-stride loop. Two kinds, with different (each fixed) orders of sums,
// kept apart because kernels are tested bit for bit against what they were written with:
//   block_reduce<kMax>   warp shuffles, then the warps' partials by warp 0 (float; shared: 33
//                        floats; any block size up to 1024 threads);
//   block_tree_sum/_max  a halving tree over shared memory (kThreads threads, shared: kThreads
//                        values).
#pragma once

#include <cfloat>
#include <cstdint>

namespace lowbit::cuda {

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum (or max) over the block; every thread gets the result. shared: 33 floats.
template <bool kMax>
__device__ inline float block_reduce(float v, float* shared) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31) >> 5;
  v = kMax ? warp_max(v) : warp_sum(v);
  __syncthreads();
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  float r = threadIdx.x < nwarps ? shared[threadIdx.x] : (kMax ? -FLT_MAX : 0.0f);
  if (warp == 0) r = kMax ? warp_max(r) : warp_sum(r);
  if (threadIdx.x == 0) shared[32] = r;
  __syncthreads();
  return shared[32];
}

// Sum over a block of kThreads threads through shared memory, in a fixed order; every thread
// gets the result.
template <int kThreads, typename T>
__device__ inline T block_tree_sum(T v, T* shared) {
  shared[threadIdx.x] = v;
  __syncthreads();
  for (int w = kThreads / 2; w > 0; w >>= 1) {
    if (int(threadIdx.x) < w) shared[threadIdx.x] += shared[threadIdx.x + w];
    __syncthreads();
  }
  const T r = shared[0];
  __syncthreads();
  return r;
}

// Max over a block of kThreads threads, the same tree.
template <int kThreads>
__device__ inline float block_tree_max(float v, float* shared) {
  shared[threadIdx.x] = v;
  __syncthreads();
  for (int w = kThreads / 2; w > 0; w >>= 1) {
    if (int(threadIdx.x) < w) shared[threadIdx.x] = fmaxf(shared[threadIdx.x], shared[threadIdx.x + w]);
    __syncthreads();
  }
  const float r = shared[0];
  __syncthreads();
  return r;
}

// Blocks of `threads` threads for a grid-stride loop over n elements (at least 1, at most 2^20).
inline unsigned grid_stride_blocks(int64_t n, int threads) {
  const int64_t b = (n + threads - 1) / threads;
  return unsigned(b < 1 ? 1 : b > (int64_t(1) << 20) ? (int64_t(1) << 20) : b);
}

}  // namespace lowbit::cuda
