// Floating-point operations in the exact order of the PyTorch and numpy routines that the
// binarization references (PB-LLM, BiLLM) call, so that their discrete decisions (which mean,
// which threshold, which error is smallest) come out the same bit for bit.
//
//   torch_sum_f32          torch.sum / nansum / mean of one contiguous fp32 row on the CPU:
//                          ATen's cascade_sum (SumKernel.cpp) with 8-lane fp32 vectors (what
//                          PyTorch 2.x's CPU sum runs, measured on an AVX-512 machine against the
//                          fixtures): 8-lane partial sums of whole vectors, 4 interleaved
//                          accumulators over a 4-level cascade of 16-vector chunks, the 4
//                          accumulators added in order, then the scalar tail and the 8 lanes
//                          added left to right onto 0;
//   torch_column_sums_f32  torch.sum(x, dim=0) of a row-major [rows, cols] fp32 matrix (ATen's
//                          vectorized outer sum: 32-column strips with the same cascade over the
//                          rows, then 8-column strips and single columns with 4 interleaved row
//                          accumulators);
//   torch_linspace_f32     torch.linspace(start, end, steps) in fp32 (start + i * step below the
//                          midpoint, end - (steps - 1 - i) * step from it, step = (end - start) /
//                          (steps - 1) in fp32, each value rounded once as the fused vector code
//                          does);
//   numpy_quantile_f32     np.quantile(x, q, method="linear") of an fp32 array at an fp32 level:
//                          virtual index v = (n - 1) * q in fp32, i = floor(v), g = v - i, and
//                          lerp(x[i], x[i + 1], g) = x[i] + d * g when g < 0.5, else
//                          x[i + 1] - d * (1 - g), d = x[i + 1] - x[i], each step rounded to fp32.
//
// These sums are what PyTorch computes serially; above 32768 elements a full reduction may be
// split across threads (two-pass), which this does not model: the references ran on CUDA, whose
// order differs anyway, so only the CPU fixtures pin the order.
#pragma once

#include <cstdint>
#include <vector>

namespace lowbit {

// Sum of x[0..n); NaNs count as 0 when nan_as_zero (torch.nansum).
float torch_sum_f32(const float* x, int64_t n, bool nan_as_zero = false);
// out[c] = sum over r of x[r * cols + c].
void torch_column_sums_f32(const float* x, int64_t rows, int64_t cols, float* out);

// torch_sum_f32 of n values assembled from pieces, for sums whose terms several threads produce:
// the values fall into whole chunks of torch_sum_chunk_f32(n) values (ATen's level-0 cascade
// steps; 512 values up to n = 2^24) and the n % chunk values after them, and the sum is a fixed
// function of each whole chunk's kTorchSumPartials partial sums and of those last values.
// torch_sum_chunk_partials_f32 writes one chunk's partials (its values added onto 0, value q of
// every kTorchSumPartials onto partial q, in order); torch_sum_from_chunks_f32 takes
// partials [n / chunk][kTorchSumPartials] and rest [n % chunk] and returns torch_sum_f32 of the
// n values, bit for bit.
constexpr int kTorchSumPartials = 32;
int64_t torch_sum_chunk_f32(int64_t n);
void torch_sum_chunk_partials_f32(const float* x, int64_t chunk, float* partials);
float torch_sum_from_chunks_f32(const float* partials, const float* rest, int64_t n);

// torch_sum_f32 of many short rows at once, one row per lane of a GCC vector of floats V:
// t [n] vectors, lane i of t[j] row i's value j; lane i of the result is torch_sum_f32 of row i,
// bit for bit, for 8 <= n < 512 (torch_sum_f32_lanes_fits; no chunk is whole, so the order is
// 4 accumulators x 8 lanes over 32-value steps, the three empty cascade levels added, leftover
// 8-value vectors onto the first accumulator, the other three added, then the tail values and
// the 8 lanes left to right onto 0).
inline bool torch_sum_f32_lanes_fits(int64_t n) { return n >= 8 && n < torch_sum_chunk_f32(n); }
template <typename V>
V torch_sum_f32_lanes(const V* t, int64_t n) {
  const int64_t nvec = n / 8, size = nvec / 4;
  const V zero{};
  auto acc = [&](int64_t q) {
    V a = zero;
    for (int64_t i = 0; i < size; ++i) a += t[i * 32 + q];
    for (int j = 1; j < 4; ++j) a += zero;  // x + 0 is not x for x = -0
    return a;
  };
  V a = zero;
  for (int64_t k = nvec * 8; k < n; ++k) a += t[k];
  for (int64_t l = 0; l < 8; ++l) {
    V p = acc(l);
    for (int64_t v = size * 4; v < nvec; ++v) p += t[v * 8 + l];
    for (int64_t k = 1; k < 4; ++k) p += acc(k * 8 + l);
    a += p;
  }
  return zero + a;
}

std::vector<float> torch_linspace_f32(float start, float end, int64_t steps);
// sorted: ascending, no NaN, non-empty.
float numpy_quantile_f32(const std::vector<float>& sorted, float q);

}  // namespace lowbit
