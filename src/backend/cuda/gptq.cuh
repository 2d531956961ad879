// GPU kernels of GPTQ (quant/gptq.h defines the algorithm; quant/gptq_cuda.cpp drives these).
// Matrices are row-major; W is [rows, cols] fp32 in processing order (columns permuted for
// act_order); H and its inverse factor are [cols, cols].
#pragma once

#include "backend/cuda/ops.cuh"

#include <cstdint>

namespace lowbit::cuda {

// Per row, the affine grid (affine_grid.h) of W[r, c0 .. c0+n): scale/zero at out[r * stride + offset].
void gptq_row_params(const float* W, int64_t rows, int64_t cols, int64_t c0, int64_t n, int maxq, bool sym,
                     float* scale, float* zero, int64_t stride, int64_t offset, cudaStream_t s);
// W[:, c] = 0 where dead[c].
void zero_columns(float* W, int64_t rows, int64_t cols, const uint8_t* dead, cudaStream_t s);
// out[r, i] = W[r, perm[i]].
void permute_columns(const float* W, float* out, int64_t rows, int64_t cols, const int32_t* perm, cudaStream_t s);
// out[i, j] = H[perm[i], perm[j]] * scale (fp32 -> fp64); dead diagonal entries (0) become 1.
void permute_scale_symmetric(const float* H, double* out, int64_t n, const int32_t* perm, double scale,
                             cudaStream_t s);
void add_diagonal(double* A, int64_t n, double value, cudaStream_t s);
// Column-major lower triangle -> full symmetric.
void mirror_lower(double* A, int64_t n, cudaStream_t s);
void f64_to_f32(const double* x, float* y, int64_t n, cudaStream_t s);
void diagonal(const float* A, float* d, int64_t n, cudaStream_t s);

struct GptqBlockArgs {
  float* W;              // [rows, cols], the outer weights (read for dynamic group grids)
  const float* hinv;     // [cols, cols], upper Cholesky factor of H^-1 (row-major upper)
  uint8_t* codes;        // [rows, cols] processing order
  float* err;            // [rows, count]
  float* scale;          // [rows, ngroups] (dynamic groups written here; static/per-channel read)
  float* zero;
  double* loss;          // [rows], accumulated
  const int32_t* perm;   // [cols] original column of each processing position (static groups)
  int64_t rows, cols, i1, count, group_size, ngroups;
  int maxq;
  bool sym;
  int mode;              // 0 per-channel, 1 dynamic groups, 2 static groups
};
// Quantizes columns i1 .. i1+count-1 (count <= 128) row by row, propagating each column's error
// to the block's later columns; writes the block's scaled errors for the lazy update.
void gptq_block(const GptqBlockArgs& a, cudaStream_t s);

// out[r, c] = bf16(scale * (code - zero)) with the group of column c = g_idx[c] (or c / gs).
void gptq_dequantize(const uint8_t* codes, const float* scale, const float* zero, const int32_t* g_idx, int64_t rows,
                     int64_t cols, int64_t group_size, int64_t ngroups, bf16* out, cudaStream_t s);
// sums[0] += sum((a - b)^2), sums[1] += sum(a^2) in fp64 (the relative weight error's parts).
void error_sums(const bf16* a, const bf16* b, int64_t n, double* sums, cudaStream_t s);
// codes_out[r, perm[i]] = codes_in[r, i].
void unpermute_codes(const uint8_t* in, uint8_t* out, int64_t rows, int64_t cols, const int32_t* perm, cudaStream_t s);

}  // namespace lowbit::cuda
