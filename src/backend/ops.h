// The ops a LLaMA block needs, on fp32 data in row-major layout, for the CPU.
// `ops::` is the fast path (OpenBLAS GEMM, vectorized loops, OpenMP threads); `ref::` holds plain
// scalar references written straight from the definitions, which tests compare the fast path to.
#pragma once

#include "core/dtype.h"
#include "formats/llama_config.h"

#include <cstdint>
#include <vector>

namespace lowbit {

// RoPE angles for positions [0, n_pos): cos/sin of pos * inv_freq[i] for i < head_dim/2, with
// the config's scaling (default, linear, llama3) applied to inv_freq as transformers does.
struct RopeTable {
  int64_t n_pos = 0, half = 0;
  std::vector<float> inv_freq;  // [half]
  std::vector<float> cos, sin;  // [n_pos, half]
};
RopeTable make_rope_table(const LlamaConfig& c, int64_t n_pos);
// inv_freq alone (after scaling), for tests and for other backends.
std::vector<float> rope_inv_freq(const LlamaConfig& c);

// Threads used by the ops (OpenMP) and by OpenBLAS. 0 = all cores.
void set_num_threads(int n);
int num_threads();

namespace ops {

// y[r, :] = x[r, :] / rms(x[r, :]) * w   for r < rows; x and y may alias.
void rmsnorm(const float* x, const float* w, float* y, int64_t rows, int64_t dim, float eps);
// y[rows, out] = x[rows, in] @ w[out, in]^T (a torch Linear without bias); a few rows go to gemv.
void linear(const float* x, const float* w, float* y, int64_t rows, int64_t in, int64_t out);
// y[rows, out] = x[rows, in] @ w[out, in]^T for 1 <= rows <= gemv_max_rows() (decode), with w
// stored as F32, BF16 or F16 (converted exactly to fp32 as it is read; products and sums in fp32).
// Each weight row is read once for all rows of x.
void gemv(const float* x, const void* w, DType wt, float* y, int64_t rows, int64_t in, int64_t out);
int64_t gemv_max_rows();
// Rotates, in place, `heads` heads of head_dim = 2*half at each of T positions: x[t, h*hd + i]
// with row stride ld. Position of row t is pos0 + t. transformers' rotate_half convention.
void rope(float* x, int64_t T, int64_t heads, int64_t ld, const RopeTable& rt, int64_t pos0);
// Causal GQA attention for one sequence: q [T, nh*hd] (positions past .. past+T-1), k/v
// [past+T, nkv*hd] (positions 0 .. past+T-1, e.g. a KV cache followed by the new tokens),
// out [T, nh*hd]. softmax(q k^T / sqrt(hd) + causal mask) v, fp32 throughout; query t sees keys
// 0 .. past + t.
void attention(const float* q, const float* k, const float* v, float* out, int64_t T, int64_t nh, int64_t nkv,
               int64_t hd, int64_t past = 0);
// out = silu(gate) * up, elementwise over n values; out may alias gate.
void swiglu(const float* gate, const float* up, float* out, int64_t n);
// -log softmax(logits)[target] for each of `rows` rows of width V, accumulated in double.
void nll_rows(const float* logits, const int32_t* targets, double* out, int64_t rows, int64_t V);
// acc[cols, cols] += x^T x for x [rows, cols] (fp32 products, summed into double): the Gram
// matrix of a linear's inputs, from which GPTQ's Hessian is formed. Both triangles are written.
void gram_accumulate(const float* x, int64_t rows, int64_t cols, double* acc);

// Dense linear algebra on row-major fp64 matrices (LAPACK through OpenBLAS).
// Cholesky factor of a symmetric positive-definite n x n matrix, in place: A = L L^T (lower) or
// A = U^T U (upper); the other triangle is zeroed. Returns false (a left as LAPACK leaves it)
// when a is not positive definite.
bool cholesky(double* a, int64_t n, bool upper);
// A^{-1} (full, symmetric) from A's lower Cholesky factor L, in place.
void cholesky_inverse(double* l, int64_t n);

}  // namespace ops

namespace ref {

void rmsnorm(const float* x, const float* w, float* y, int64_t rows, int64_t dim, float eps);
void linear(const float* x, const float* w, float* y, int64_t rows, int64_t in, int64_t out);
void rope(float* x, int64_t T, int64_t heads, int64_t ld, const RopeTable& rt, int64_t pos0);
void attention(const float* q, const float* k, const float* v, float* out, int64_t T, int64_t nh, int64_t nkv,
               int64_t hd, int64_t past = 0);
void swiglu(const float* gate, const float* up, float* out, int64_t n);
void nll_rows(const float* logits, const int32_t* targets, double* out, int64_t rows, int64_t V);
void gram_accumulate(const float* x, int64_t rows, int64_t cols, double* acc);

}  // namespace ref

}  // namespace lowbit
