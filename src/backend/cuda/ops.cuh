// The ops of a LLaMA block on the GPU: the CUDA twins of backend/ops.h (tests/cuda compares each
// with its CPU version). Activations that feed matrix products are bf16; the residual stream,
// norms, softmax and reductions are fp32. Every launcher takes device pointers, sizes and a
// stream, and checks its launch.
//
// Shapes (row-major): hidden [rows, H]; q [B*T, nh*hd]; k, v [B*(past+T), nkv*hd].
#pragma once

#include "backend/cuda/cuda_util.h"

#include <cuda_bf16.h>

#include <cstdint>

namespace lowbit::cuda {

using bf16 = __nv_bfloat16;

// out[i, :] = table[ids[i], :] (bf16 table -> fp32 rows).
void embed(const int32_t* ids, const bf16* table, float* out, int64_t n, int64_t H, cudaStream_t s);
// y = bf16(x / rms(x) * w) per row, in fp32 (transformers' LlamaRMSNorm, rounded once).
void rmsnorm(const float* x, const bf16* w, bf16* y, int64_t rows, int64_t dim, float eps, cudaStream_t s);
// In place on B sequences of T rows each (row stride ld, sequence stride T*ld), positions pos0..:
// transformers' rotate_half RoPE with the angle tables cos/sin [n_pos, hd/2] (fp32). With pos0_dev
// (device), the kernel reads pos0 from there instead (a CUDA graph's position; pos0 is ignored).
void rope(bf16* x, int64_t B, int64_t T, int64_t heads, int64_t hd, int64_t ld, const float* cos, const float* sin,
          int64_t pos0, cudaStream_t s, const int32_t* pos0_dev = nullptr);
// A KV cache append at a position held on the device: rows pos .. pos+T-1 of cache_k and cache_v
// (row stride kvd) = the T rows of k and v (kvd values each, row stride ld), pos = *pos_dev. The
// same bytes as the cudaMemcpy2DAsync of the eager path, at a position a CUDA graph can change.
void kv_append(const bf16* k, const bf16* v, int64_t ld, bf16* cache_k, bf16* cache_v, int64_t kvd, int64_t T,
               const int32_t* pos_dev, cudaStream_t s);
// *x += by (one device int32: a CUDA graph's position, advanced at the end of its step).
void add_i32(int32_t* x, int32_t by, cudaStream_t s);
// out[r] = the index of the largest of x[r, 0:V] (fp32), the first one on ties: std::max_element's
// answer, NaN included (a NaN is never larger; a NaN at index 0 is kept). One block per row.
void argmax_rows(const float* x, int32_t* out, int64_t rows, int64_t V, cudaStream_t s);
// In place on rows [gate | up] of 2F values (the output of the stacked gate/up projection):
// gate_up[r, 0:F] = silu(gate_up[r, 0:F]) * gate_up[r, F:2F].
void swiglu_rows(bf16* gate_up, int64_t rows, int64_t F, cudaStream_t s);
// Symmetric fake quantization of activations in place (quant/activation_quant.h, in fp32 from
// bf16, rounded back to bf16): rows of `cols` values with row stride ld, x <- rint(x / s) * s with
// s = max(absmax, 1e-5) / (2^(bits-1) - 1) over each row (seg_rows 1: per token) or each
// segment of seg_rows rows (per tensor, one scale per sequence; seg_scratch holds
// rows / seg_rows values), or s = static_scale when it is > 0 (values clamped to
// [-qmax - 1, qmax]). cols and ld even.
void fake_quantize(bf16* x, int64_t rows, int64_t cols, int64_t ld, int bits, int64_t seg_rows, float static_scale,
                   unsigned* seg_scratch, cudaStream_t s);
// Per column of x [rows, cols] (row stride ld; cols and ld even): absmax[j] = max(absmax[j],
// max |x_j|) and abssum[j] += sum |x_j| (fp32): calibration statistics of a linear's input.
void column_abs_stats(const bf16* x, int64_t rows, int64_t cols, int64_t ld, float* absmax, float* abssum,
                      cudaStream_t s);
void f32_to_bf16(const float* x, bf16* y, int64_t n, cudaStream_t s);
// partial[0 .. kSquaredDiffBlocks) = sums of (a[i] - b[i])^2 (fp64) over fixed shares of the n
// values: their sum, taken in order on the host, is a deterministic sum of squared differences.
inline constexpr int kSquaredDiffBlocks = 512;
void squared_diff_partials(const float* a, const float* b, int64_t n, double* partial, cudaStream_t s);
// partial[0 .. kSquaredDiffBlocks) = sums of a[i] * b[i] (fp64 products and sums), in the shares
// and order of squared_diff_partials.
void dot_partials(const float* a, const float* b, int64_t n, double* partial, cudaStream_t s);
// x[i] = float(double(x[i]) * scale): fp32 values scaled in fp64 and rounded once, as the host
// rounds a double it computed from them.
void scale_f32_in_f64(float* x, int64_t n, double scale, cudaStream_t s);
void bf16_to_f32(const bf16* x, float* y, int64_t n, cudaStream_t s);
// out[r] = logsumexp(logits[r, :]) - logits[r, targets[r]] (fp32 logits, fp32 accumulation with
// a running max shift, one pass over the row), and argmax[r] (first index on ties) when argmax
// != nullptr.
void nll_rows(const float* logits, const int32_t* targets, float* out, int32_t* argmax, int64_t rows, int64_t V,
              cudaStream_t s);
// KL-divergence rows (eval/kl_divergence.h, the GPU twin of kld_rows plus both NLLs): for each row
// r of base logits b and model logits q [rows, V] (fp32), in fp64 from the fp32 values:
//   kld[r] = sum_v p_b(v) (log p_b(v) - log p_q(v)), agree[r] = argmax b == argmax q (first index
//   on ties), nll_b[r] = logsumexp(b) - b[targets[r]], nll_q[r] the same of q.
// One block per row; the reductions run in a fixed order, so equal rows give kld exactly 0.
void kld_rows(const float* base_logits, const float* logits, const int32_t* targets, double* kld, uint8_t* agree,
              double* nll_b, double* nll_q, int64_t rows, int64_t V, cudaStream_t s);
// SliM-LLM's bit-allocation search (calib/kl_search.h) on rows of fp32 linear outputs [rows, O],
// one block per row, fp64 from the fp32 values as the host code computes them (the max and
// z - max in fp32, exp/log/sums in fp64; reductions in a fixed order):
//   logq[r, o] = log(max(softmax(y[r, :])[o], 1e-6));
//   row_kl[r] = sum_o p (log p - logq[r, o]),  p = max(softmax(z[r, :])[o], 1e-6).
void clamped_log_softmax_rows(const float* y, double* logq, int64_t rows, int64_t O, cudaStream_t s);
void clamped_softmax_kl_rows(const float* z, const double* logq, double* row_kl, int64_t rows, int64_t O,
                             cudaStream_t s);
// *out = sum of v[0 .. n) (fp64, one block, a fixed order).
void sum_ordered(const double* v, int64_t n, double* out, cudaStream_t s);
// Causal GQA attention (flash-style, no materialized score matrix): B sequences, queries at
// positions past .. past+T-1 attending keys 0 .. past+t. q [B*T, nh*hd] (row stride ldq),
// k, v [B*(past+T), nkv*hd] (row stride ldk), out [B*T, nh*hd] (row stride ldo). hd: even, up to 256 (64 and 128 on tensor cores).
// With rope_cos/rope_sin (the rope() tables), q is rotated as it is read (RoPE at its positions,
// exactly as rope() would) and need not be rotated beforehand; k always must be. With past_dev
// (device), the kernels read past from there instead (a CUDA graph's position; the launch does
// not depend on past, and the arithmetic is the same as with the host value).
void attention(const bf16* q, const bf16* k, const bf16* v, bf16* out, int64_t B, int64_t T, int64_t past,
               int64_t nh, int64_t nkv, int64_t hd, int64_t ldq, int64_t ldk, int64_t ldo, cudaStream_t s,
               const float* rope_cos = nullptr, const float* rope_sin = nullptr, const int32_t* past_dev = nullptr);
// The tensor-core kernel attention() runs for head dim 128: Auto takes the Hopper (wgmma) kernel
// where the GPU and the build have it (sm_90a), else the mma.sync one. Tests and benchmarks pin
// one to compare them.
enum class AttentionKernel { Auto, MmaSync, Wgmma };
void set_attention_kernel(AttentionKernel kernel);
bool wgmma_attention_available();

// C [M, N] = A [M, K] . W [N, K]^T (a Linear), bf16 inputs, fp32 accumulation; C bf16 or fp32.
// lda, ldc: row strides of A and C (0: K and N). With accumulate (fp32 C), C += A . W^T: the
// residual add of o_proj and down_proj, in the GEMM's epilogue.
void linear(const Context& ctx, const bf16* A, const bf16* W, bf16* C, int64_t M, int64_t N, int64_t K,
            int64_t lda = 0, int64_t ldc = 0);
void linear(const Context& ctx, const bf16* A, const bf16* W, float* C, int64_t M, int64_t N, int64_t K,
            bool accumulate = false, int64_t lda = 0);
// H [K, K] += X^T X for X [M, K] bf16 (row stride ldx, 0: K; exact products, fp32 sums): the
// Gram matrix of a linear's inputs.
void gram_accumulate(const Context& ctx, const bf16* X, float* H, int64_t M, int64_t K, int64_t ldx = 0);
// C[M, N] = A[M, K] W[N, K]^T (or C += it with accumulate), all fp32 with fp32 products and sums
// (no TF32); row strides lda, ldw, ldc.
void linear_f32(const Context& ctx, const float* A, int64_t lda, const float* W, int64_t ldw, float* C, int64_t ldc,
                int64_t M, int64_t N, int64_t K, bool accumulate);

}  // namespace lowbit::cuda
