// Backward passes of the ops in backend/ops.h, on fp32 row-major data, for training on the CPU.
//
// Each function takes the forward op's inputs (or what the forward saved) and the gradient of
// the loss with respect to the op's output (`dy`), and produces the gradients with respect to its
// inputs. Contracts shared by all of them:
//   - "+=" in a comment: the function adds into that buffer (the caller zeroes it once); this is
//     how a gradient reaching a tensor along several paths (a weight used by every row, the
//     residual stream) is summed. "=" : the buffer is overwritten.
//   - A gradient pointer documented as "may be null" is skipped when null (a frozen weight).
// A CUDA twin of an op takes the same pointers (device memory) and sizes plus a stream, and is
// checked against these functions.
#pragma once

#include "backend/ops.h"

#include <cstdint>

namespace lowbit::ops {

// Embedding rows: dtable[tokens[i], :] += dy[i, :] for i < n. dtable [V, dim].
void embedding_backward(const int32_t* tokens, const float* dy, float* dtable, int64_t n, int64_t dim);

// y = x / rms(x) * w (rmsnorm). dx [rows, dim] = ; dw [dim] += (may be null). dx may alias dy.
void rmsnorm_backward(const float* x, const float* w, const float* dy, float* dx, float* dw, int64_t rows,
                      int64_t dim, float eps);

// y = x @ w^T with x [rows, in], w [out, in].
//   dx [rows, in]  = dy @ w        (or += when accumulate_dx; may be null)
//   dw [out, in]  += dy^T @ x      (may be null: a frozen weight)
void linear_backward(const float* x, const float* w, const float* dy, float* dx, float* dw, int64_t rows,
                     int64_t in, int64_t out, bool accumulate_dx = false);

// RoPE is a rotation per (position, pair of dims); its backward rotates dy by the opposite angle,
// in place, with the same layout and arguments as ops::rope.
void rope_backward(float* dx, int64_t T, int64_t heads, int64_t ld, const RopeTable& rt, int64_t pos0);

// Causal GQA attention of one sequence (past = 0), backward. q [T, nh*hd], k, v [T, nkv*hd] as
// given to ops::attention (after RoPE), dout [T, nh*hd]. The softmax is recomputed from q and k
// (nothing but the inputs is saved). dq [T, nh*hd] = ; dk, dv [T, nkv*hd] = (the heads of a
// group summed into their shared key/value head).
void attention_backward(const float* q, const float* k, const float* v, const float* dout, float* dq, float* dk,
                        float* dv, int64_t T, int64_t nh, int64_t nkv, int64_t hd);

// out = silu(gate) * up elementwise. dgate, dup [n] = ; each may alias dout.
void swiglu_backward(const float* gate, const float* up, const float* dout, float* dgate, float* dup, int64_t n);

// Cross-entropy of `rows` rows of logits [rows, V] against targets; a target < 0 (-100 in
// transformers) is ignored. Writes dlogits [rows, V] = scale * (softmax(logits) - onehot(target))
// for rows with a target, 0 for ignored rows, and returns the sum of -log softmax[target] over the
// rows with a target (in double). For a mean over N target tokens pass scale = 1/N. dlogits may
// alias logits.
double cross_entropy_backward(const float* logits, const int32_t* targets, float* dlogits, int64_t rows, int64_t V,
                              float scale);

}  // namespace lowbit::ops
