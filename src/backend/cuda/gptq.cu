#include "backend/cuda/gptq.cuh"

#include "backend/cuda/column_blocks.cuh"

#include <cfloat>

namespace lowbit::cuda {

namespace {

__device__ __forceinline__ void affine_params(float xmin, float xmax, int maxq, bool sym, float& scale, float& zero) {
  xmin = fminf(xmin, 0.0f);
  xmax = fmaxf(xmax, 0.0f);
  if (sym) {
    xmax = fmaxf(fabsf(xmin), xmax);
    if (xmin < 0) xmin = -xmax;
  }
  if (xmin == 0.0f && xmax == 0.0f) {
    xmin = -1.0f;
    xmax = 1.0f;
  }
  scale = __fdiv_rn(xmax - xmin, float(maxq));
  zero = sym ? float(maxq + 1) / 2.0f : rintf(__fdiv_rn(-xmin, scale));
}

__global__ void row_params_kernel(const float* W, int64_t rows, int64_t cols, int64_t c0, int64_t n, int maxq,
                                  bool sym, float* scale, float* zero, int64_t stride, int64_t offset) {
  const int64_t r = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (r >= rows) return;
  float mn = 0.0f, mx = 0.0f;
  const float* w = W + r * cols + c0;
  for (int64_t c = 0; c < n; ++c) {
    mn = fminf(mn, w[c]);
    mx = fmaxf(mx, w[c]);
  }
  float s, z;
  affine_params(mn, mx, maxq, sym, s, z);
  scale[r * stride + offset] = s;
  zero[r * stride + offset] = z;
}

__global__ void zero_columns_kernel(float* W, int64_t rows, int64_t cols, const uint8_t* dead) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < rows * cols; i += int64_t(gridDim.x) * blockDim.x)
    if (dead[i % cols]) W[i] = 0.0f;
}

__global__ void permute_columns_kernel(const float* W, float* out, int64_t rows, int64_t cols, const int32_t* perm) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < rows * cols; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = W[(i / cols) * cols + perm[i % cols]];
}

__global__ void permute_scale_symmetric_kernel(const float* H, double* out, int64_t n, const int32_t* perm,
                                               double scale) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n * n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / n, c = i % n;
    // The factorization reads the upper triangle of this (row-major) matrix; it is taken from the
    // lower triangle of the permuted H, the half the host's factorization reads, so that the two
    // agree bit for bit on their inputs even where the sums are not exactly symmetric.
    const int64_t hi = r > c ? r : c, lo = r > c ? c : r;
    double v = double(H[int64_t(perm[hi]) * n + perm[lo]]) * scale;
    if (r == c && v == 0.0) v = 1.0;  // a dead input
    out[i] = v;
  }
}

__global__ void add_diagonal_kernel(double* A, int64_t n, double value) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i < n) A[i * n + i] += value;
}

__global__ void mirror_lower_kernel(double* A, int64_t n) {
  // Column-major: lower element (r, c), r > c, is at c * n + r; its mirror (c, r) at r * n + c.
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n * n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = i / n, r = i % n;
    if (r > c) A[r * n + c] = A[i];
  }
}

__global__ void f64_to_f32_kernel(const double* x, float* y, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y[i] = float(x[i]);
}

__global__ void diagonal_kernel(const float* A, float* d, int64_t n) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i < n) d[i] = A[i * n + i];
}

// One thread per row: the row's slice of the column block lives in local memory; the block of
// Hinv in shared memory. Rows are independent through the whole column block.
__global__ void __launch_bounds__(kColumnBlockRows) gptq_block_kernel(GptqBlockArgs a) {
  extern __shared__ float hs[];  // [count, count], Hinv[i1 + i, i1 + j]
  const int64_t count = a.count;
  stage_factor_block(hs, a.hinv, a.cols, a.i1, count);
  const int64_t r = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (r >= a.rows) return;
  float w1[kColumnBlockCols];
  float* wrow = a.W + r * a.cols;
  for (int64_t j = 0; j < count; ++j) w1[j] = wrow[a.i1 + j];
  float scale = 0.0f, zero = 0.0f;
  if (a.mode == 0) {
    scale = a.scale[r * a.ngroups];
    zero = a.zero[r * a.ngroups];
  }
  double loss = 0.0;
  for (int64_t i = 0; i < count; ++i) {
    const int64_t col = a.i1 + i;
    if (a.mode == 2) {
      const int64_t g = a.perm[col] / a.group_size;
      scale = a.scale[r * a.ngroups + g];
      zero = a.zero[r * a.ngroups + g];
    } else if (a.mode == 1 && col % a.group_size == 0) {
      // From the outer weights, which this block's updates have not reached (as the reference).
      const int64_t n = min(a.cols, col + a.group_size) - col;
      float mn = 0.0f, mx = 0.0f;
      for (int64_t c = 0; c < n; ++c) {
        mn = fminf(mn, wrow[col + c]);
        mx = fmaxf(mx, wrow[col + c]);
      }
      affine_params(mn, mx, a.maxq, a.sym, scale, zero);
      a.scale[r * a.ngroups + col / a.group_size] = scale;
      a.zero[r * a.ngroups + col / a.group_size] = zero;
    }
    const float w = w1[i];
    const float q = fminf(fmaxf(rintf(__fdiv_rn(w, scale)) + zero, 0.0f), float(a.maxq));
    const float qv = __fmul_rn(scale, q - zero);
    a.codes[r * a.cols + col] = uint8_t(q);
    const float d = hs[i * count + i];
    const float diff = w - qv;
    loss += double(diff) * double(diff) / (double(d) * double(d));
    const float e = __fdiv_rn(diff, d);
    a.err[r * count + i] = e;
    for (int64_t j = i + 1; j < count; ++j) w1[j] = __fsub_rn(w1[j], __fmul_rn(e, hs[i * count + j]));
  }
  a.loss[r] += loss;
}

__global__ void gptq_dequantize_kernel(const uint8_t* codes, const float* scale, const float* zero,
                                       const int32_t* g_idx, int64_t rows, int64_t cols, int64_t gs, int64_t ngroups,
                                       bf16* out) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < rows * cols; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / cols, c = i % cols;
    const int64_t g = g_idx ? g_idx[c] : c / gs;
    const float s = scale[r * ngroups + g], z = zero[r * ngroups + g];
    out[i] = __float2bfloat16(__fmul_rn(s, float(codes[i]) - z));
  }
}

__global__ void unpermute_codes_kernel(const uint8_t* in, uint8_t* out, int64_t rows, int64_t cols,
                                       const int32_t* perm) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < rows * cols; i += int64_t(gridDim.x) * blockDim.x)
    out[(i / cols) * cols + perm[i % cols]] = in[i];
}

__global__ void error_sums_kernel(const bf16* a, const bf16* b, int64_t n, double* sums) {
  double num = 0, den = 0;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const double x = double(__bfloat162float(a[i])), d = x - double(__bfloat162float(b[i]));
    num += d * d;
    den += x * x;
  }
  for (int o = 16; o > 0; o /= 2) {
    num += __shfl_xor_sync(0xffffffffu, num, o);
    den += __shfl_xor_sync(0xffffffffu, den, o);
  }
  if ((threadIdx.x & 31) == 0) {
    atomicAdd(&sums[0], num);
    atomicAdd(&sums[1], den);
  }
}

unsigned grid_for(int64_t n) { return unsigned(std::min<int64_t>((n + 255) / 256, 65536)); }

}  // namespace

void gptq_row_params(const float* W, int64_t rows, int64_t cols, int64_t c0, int64_t n, int maxq, bool sym,
                     float* scale, float* zero, int64_t stride, int64_t offset, cudaStream_t s) {
  row_params_kernel<<<unsigned((rows + 127) / 128), 128, 0, s>>>(W, rows, cols, c0, n, maxq, sym, scale, zero, stride,
                                                                 offset);
  LB_CUDA_LAUNCH_CHECK();
}

void zero_columns(float* W, int64_t rows, int64_t cols, const uint8_t* dead, cudaStream_t s) {
  zero_columns_kernel<<<grid_for(rows * cols), 256, 0, s>>>(W, rows, cols, dead);
  LB_CUDA_LAUNCH_CHECK();
}

void permute_columns(const float* W, float* out, int64_t rows, int64_t cols, const int32_t* perm, cudaStream_t s) {
  permute_columns_kernel<<<grid_for(rows * cols), 256, 0, s>>>(W, out, rows, cols, perm);
  LB_CUDA_LAUNCH_CHECK();
}

void permute_scale_symmetric(const float* H, double* out, int64_t n, const int32_t* perm, double scale,
                             cudaStream_t s) {
  permute_scale_symmetric_kernel<<<grid_for(n * n), 256, 0, s>>>(H, out, n, perm, scale);
  LB_CUDA_LAUNCH_CHECK();
}

void add_diagonal(double* A, int64_t n, double value, cudaStream_t s) {
  add_diagonal_kernel<<<unsigned((n + 255) / 256), 256, 0, s>>>(A, n, value);
  LB_CUDA_LAUNCH_CHECK();
}

void mirror_lower(double* A, int64_t n, cudaStream_t s) {
  mirror_lower_kernel<<<grid_for(n * n), 256, 0, s>>>(A, n);
  LB_CUDA_LAUNCH_CHECK();
}

void f64_to_f32(const double* x, float* y, int64_t n, cudaStream_t s) {
  f64_to_f32_kernel<<<grid_for(n), 256, 0, s>>>(x, y, n);
  LB_CUDA_LAUNCH_CHECK();
}

void diagonal(const float* A, float* d, int64_t n, cudaStream_t s) {
  diagonal_kernel<<<unsigned((n + 255) / 256), 256, 0, s>>>(A, d, n);
  LB_CUDA_LAUNCH_CHECK();
}

void gptq_block(const GptqBlockArgs& a, cudaStream_t s) { launch_column_block(gptq_block_kernel, a, "gptq", s); }

void gptq_dequantize(const uint8_t* codes, const float* scale, const float* zero, const int32_t* g_idx, int64_t rows,
                     int64_t cols, int64_t group_size, int64_t ngroups, bf16* out, cudaStream_t s) {
  gptq_dequantize_kernel<<<grid_for(rows * cols), 256, 0, s>>>(codes, scale, zero, g_idx, rows, cols, group_size,
                                                               ngroups, out);
  LB_CUDA_LAUNCH_CHECK();
}

void error_sums(const bf16* a, const bf16* b, int64_t n, double* sums, cudaStream_t s) {
  error_sums_kernel<<<unsigned(std::min<int64_t>((n + 255) / 256, 1024)), 256, 0, s>>>(a, b, n, sums);
  LB_CUDA_LAUNCH_CHECK();
}

void unpermute_codes(const uint8_t* in, uint8_t* out, int64_t rows, int64_t cols, const int32_t* perm, cudaStream_t s) {
  unpermute_codes_kernel<<<grid_for(rows * cols), 256, 0, s>>>(in, out, rows, cols, perm);
  LB_CUDA_LAUNCH_CHECK();
}

}  // namespace lowbit::cuda
