// The ops a ViT (CLIP) encoder and a LLaVA projector need beside the LLaMA ops of backend/ops.h,
// on fp32 row-major data, for the CPU. Each has a plain scalar version in `ref::` that tests
// compare the fast one to.
#pragma once

#include <cstdint>

namespace lowbit {
namespace ops {

// y[r, :] = (x[r, :] - mean) / sqrt(var + eps) * w + b (torch.nn.LayerNorm, biased variance);
// mean and variance accumulated in double. x and y may alias.
void layernorm(const float* x, const float* w, const float* b, float* y, int64_t rows, int64_t dim, float eps);
// y[r, :] += b for r < rows.
void add_bias(float* y, const float* b, int64_t rows, int64_t dim);
// x * sigmoid(1.702 x) in place (transformers' quick_gelu).
void quick_gelu(float* x, int64_t n);
// 0.5 x (1 + erf(x / sqrt(2))) in place (torch.nn.functional.gelu, the exact form).
void gelu(float* x, int64_t n);
// Bidirectional multi-head attention over S sequences of T tokens each: q, k, v, out [S*T, nh*hd]
// (head h in columns h*hd .. h*hd+hd-1); every token sees every token of its own sequence:
// out = softmax(q k^T / sqrt(hd)) v per sequence and head, fp32 throughout.
void attention_bidirectional(const float* q, const float* k, const float* v, float* out, int64_t S, int64_t T,
                             int64_t nh, int64_t hd);

}  // namespace ops

namespace ref {

void layernorm(const float* x, const float* w, const float* b, float* y, int64_t rows, int64_t dim, float eps);
void attention_bidirectional(const float* q, const float* k, const float* v, float* out, int64_t S, int64_t T,
                             int64_t nh, int64_t hd);

}  // namespace ref
}  // namespace lowbit
