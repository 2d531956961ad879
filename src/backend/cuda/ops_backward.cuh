// The fp32 ops of training on the GPU: the CUDA twins of backend/ops_backward.h (and of the fp32
// forwards of backend/ops.h that the backward recomputes), for train/llama_backward_cuda.h.
//
// Everything here is fp32 in and out, row-major, like the CPU ops it mirrors; the products go
// through cuBLAS SGEMM in the default math mode (no TF32), so a GPU step and a CPU step differ by
// summation order only. Kernels are deliberately plain (one thread per output element or one
// block per row, no tiling): training spends its time in the GEMMs, and a plain kernel is easy to
// check against its CPU twin.
//
// Every launcher takes device pointers, sizes and a stream, and checks its launch.
// Conventions of backend/ops_backward.h: "=" overwrites, "+=" adds into the buffer.
#pragma once

#include "backend/cuda/cuda_util.h"

#include <cstdint>

namespace lowbit::cuda {

// y [rows, out] = alpha * x [rows, in] @ w [out, in]^T (+ y when accumulate).
void linear_f32(const Context& ctx, const float* x, const float* w, float* y, int64_t rows, int64_t in, int64_t out,
                float alpha = 1.0f, bool accumulate = false);
// The backward of y = alpha * x @ w^T for the upstream gradient dy [rows, out]:
//   dx [rows, in] = alpha * dy @ w   (+= when accumulate_dx; skipped when dx is null)
//   dw [out, in] += alpha * dy^T @ x (skipped when dw is null)
void linear_backward_f32(const Context& ctx, const float* x, const float* w, const float* dy, float* dx, float* dw,
                         int64_t rows, int64_t in, int64_t out, bool accumulate_dx, float alpha = 1.0f);

// y = x / rms(x) * w per row (ops::rmsnorm); y may alias x. The sum of squares is taken in fp64.
void rmsnorm_f32(const float* x, const float* w, float* y, int64_t rows, int64_t dim, float eps, cudaStream_t s);
// The same y, and yb [rows, dim] = its bf16 rounding (bit patterns, round to nearest even: what
// mixed_gemm.cuh's to_bf16 of y gives), in one pass for the bf16 training mode. y is bit for bit
// rmsnorm_f32's (one kernel's code, instantiated with and without the second store).
void rmsnorm_f32_bf16(const float* x, const float* w, float* y, uint16_t* yb, int64_t rows, int64_t dim, float eps,
                      cudaStream_t s);
// dx [rows, dim] = the gradient at x of y = rmsnorm(x) * w for dy (ops::rmsnorm_backward with a
// frozen w); dx must not alias x or dy.
void rmsnorm_backward_f32(const float* x, const float* w, const float* dy, float* dx, int64_t rows, int64_t dim,
                          float eps, cudaStream_t s);
// dx [rows, dim] += that gradient (a residual branch's, added to the stream's in one pass): bit
// for bit rmsnorm_backward_f32 into a buffer, then add_f32 of it into dx. dx must not alias x or
// dy.
void rmsnorm_backward_add_f32(const float* x, const float* w, const float* dy, float* dx, int64_t rows, int64_t dim,
                              float eps, cudaStream_t s);

// In place on `rows` rows (position of row r: r % T, i.e. B sequences of T rows starting at 0)
// of `heads` heads of hd = 2 * half values, row stride ld: transformers' rotate_half RoPE with
// the tables cos, sin [n_pos >= T, half] (RopeTable's), or its backward (inverse: the rotation by
// the opposite angle, ops::rope_backward).
void rope_f32(float* x, int64_t rows, int64_t T, int64_t heads, int64_t half, int64_t ld, const float* cos,
              const float* sin, bool inverse, cudaStream_t s);

// Causal GQA attention of one sequence (ops::attention with past = 0): q [T, nh*hd], k, v
// [T, nkv*hd] (after RoPE), out [T, nh*hd]. probs [nh, T, T] (workspace) receives the softmax
// (zero above the diagonal).
void attention_f32(const float* q, const float* k, const float* v, float* out, float* probs, int64_t T, int64_t nh,
                   int64_t nkv, int64_t hd, cudaStream_t s);
// Its backward (ops::attention_backward): dq [T, nh*hd] =, dk, dv [T, nkv*hd] = (the heads of a
// group summed into their key/value head, in a fixed order). probs and dprobs [nh, T, T] are
// workspace (the softmax is recomputed from q and k).
void attention_backward_f32(const float* q, const float* k, const float* v, const float* dout, float* dq, float* dk,
                            float* dv, float* probs, float* dprobs, int64_t T, int64_t nh, int64_t nkv, int64_t hd,
                            cudaStream_t s);

// The same two with their products as cuBLAS strided-batched GEMMs on the context's stream, for
// the tf32 and bf16 training modes (train/compute_precision.h): the scores of every pair computed
// (the softmax masks those above the diagonal), one call per head of a key/value group for each
// product. tf32 false: pure fp32 SGEMMs (the handle's default math), the kernels' results in
// another summation order; true: the products on tensor cores with TF32 operands (fp32
// accumulation; buffers, softmax and its gradient stay fp32). The fp32 mode keeps the kernels above.
void attention_gemm_f32(const Context& ctx, const float* q, const float* k, const float* v, float* out, float* probs,
                        int64_t T, int64_t nh, int64_t nkv, int64_t hd, bool tf32 = false);
void attention_backward_gemm_f32(const Context& ctx, const float* q, const float* k, const float* v,
                                 const float* dout, float* dq, float* dk, float* dv, float* probs, float* dprobs,
                                 int64_t T, int64_t nh, int64_t nkv, int64_t hd, bool tf32 = false);

// out [n] = silu(gate) * up; out may alias gate.
void swiglu_f32(const float* gate, const float* up, float* out, int64_t n, cudaStream_t s);
// dgate, dup [n] = the gradients of out = silu(gate) * up (ops::swiglu_backward); either may
// alias dout.
void swiglu_backward_f32(const float* gate, const float* up, const float* dout, float* dgate, float* dup, int64_t n,
                         cudaStream_t s);
// The same two with the outputs' bf16 roundings beside them (outb; dgateb, dupb: to_bf16 of
// out, dgate, dup), for the bf16 training mode: the fp32 outputs bit for bit the functions'
// above (the same kernels' code, instantiated with the extra stores). The bf16 outputs must not
// alias the inputs.
void swiglu_f32_bf16(const float* gate, const float* up, float* out, uint16_t* outb, int64_t n, cudaStream_t s);
void swiglu_backward_f32_bf16(const float* gate, const float* up, const float* dout, float* dgate, float* dup,
                              uint16_t* dgateb, uint16_t* dupb, int64_t n, cudaStream_t s);

// Cross-entropy of `rows` rows of logits [rows, V] (ops::cross_entropy_backward): dlogits =
// scale * (softmax - onehot(target)) for rows with a target >= 0, zero rows for the others;
// loss[r] = logsumexp(row) - row[target] (fp64; 0 for ignored rows). dlogits may alias logits.
// The targets must be < V (the caller checks them).
void cross_entropy_backward_f32(const float* logits, const int32_t* targets, float* dlogits, double* loss,
                                int64_t rows, int64_t V, float scale, cudaStream_t s);
// The same loss, with the gradient written only as its bf16 rounding dlogits16 [rows, V] (to_bf16
// of the fp32 dlogits above, bit for bit: one kernel's code), for the bf16 training mode, whose LM
// head backward reads nothing else. dlogits16 must not alias logits.
void cross_entropy_backward_bf16(const float* logits, const int32_t* targets, uint16_t* dlogits16, double* loss,
                                 int64_t rows, int64_t V, float scale, cudaStream_t s);

// LoRA dropout's mask (train/llama_backward.cpp's keep_scale, bit for bit): element i of a
// linear's input keeps keep(i) = (u(i) < p ? 0 : float(1 / (1 - p))) with
//   u(i) = (splitmix64(stream ^ i * 0x2545f4914f6cdd1d) >> 11) * 2^-53,
// stream = dropout seed ^ splitmix64(layer * 8 + kind + 1) (the caller computes it).
// y [n] = x * keep(i), or y += x * keep(i) with accumulate (the mask's backward).
void dropout_mask_f32(const float* x, float* y, int64_t n, uint64_t stream, double p, bool accumulate,
                      cudaStream_t s);

// Group means and their repeats, for IR-QLoRA's elastic connection (train/iec.h). Rows of `cols`
// values cut into r contiguous groups of cols / r (r divides cols):
//   group_mean_add_f32:      h [rows, r] += coef * mean of group k of x [rows, in]
//                            (each mean summed in fp32 in index order, as the CPU's iec_down)
//   repeat_add_f32:          y [rows, out] += coef * h [rows, r] at column o / (out / r)
//   group_mean_backward_f32: dx [rows, in] += coef * dh [rows, r] at column i / (in / r),
//                            divided by in / r (the means' backward)
void group_mean_add_f32(const float* x, float* h, int64_t rows, int64_t in, int64_t r, float coef, cudaStream_t s);
void repeat_add_f32(const float* h, float* y, int64_t rows, int64_t out, int64_t r, float coef, cudaStream_t s);
void group_mean_backward_f32(const float* dh, float* dx, int64_t rows, int64_t in, int64_t r, float coef,
                             cudaStream_t s);
// The repeat's backward for the upstream gradient dy [rows, out]: with c[t, k] = sum over output
// chunk k of float(scale * dy[t, j]) (fp64; train/iec.cpp's dys), dh [rows, r] += float(coef *
// c) and partial [rows * r] = c * h (fp64: the terms of the scalar b_s's gradient).
void chunk_sum_backward_f32(const float* dy, const float* h, float* dh, double* partial, int64_t rows, int64_t out,
                            int64_t r, float scale, float coef, cudaStream_t s);
// partial [rows * r] = dh[t, k] * mean of group k of x [rows, in] (fp64: the terms of the scalar
// a_s's gradient).
void group_dot_f32(const float* x, const float* dh, double* partial, int64_t rows, int64_t in, int64_t r,
                   cudaStream_t s);
// *out += float(sum of partial [n]), the sum taken in fp64 in a fixed order (one block).
void sum_into_f32(const double* partial, int64_t n, float* out, cudaStream_t s);

// y [n] += x; out [n] = a + b (out may alias a or b).
void add_f32(float* y, const float* x, int64_t n, cudaStream_t s);
void sum_f32(const float* a, const float* b, float* out, int64_t n, cudaStream_t s);

}  // namespace lowbit::cuda
