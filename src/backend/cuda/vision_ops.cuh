// The ops of a CLIP ViT encoder and a LLaVA projector on the GPU, beside the LLaMA ops of
// backend/cuda/ops.cuh (whose linear() the tower's products use): the CUDA twins of
// backend/vision_ops.h. The residual stream, norms and softmax are fp32; what feeds a matrix
// product is bf16; weights (norm scales, biases) are bf16. Every launcher takes device
// pointers, sizes and a stream, and checks its launch.
#pragma once

#include "backend/cuda/ops.cuh"

#include <cstdint>

namespace lowbit::cuda {

// y[r, :] = (x[r, :] - mean) / sqrt(var + eps) * w + b per row (torch.nn.LayerNorm, biased
// variance; mean and variance in fp32 over the fp32 row, two passes), written as fp32 to y32
// and/or as bf16 to y16 (either may be null). x and y32 may alias.
void layernorm(const float* x, const bf16* w, const bf16* b, float* y32, bf16* y16, int64_t rows, int64_t dim,
               float eps, cudaStream_t s);

enum class VisionAct { None, QuickGelu, Gelu };
// y[r, c] = bf16(act(x[r, c] + b[c])) for x [rows, cols] fp32 (a linear's output before its bias):
// QuickGelu x * sigmoid(1.702 x) (transformers' quick_gelu), Gelu 0.5 x (1 + erf(x / sqrt(2)))
// (the exact form), in fp32. b may be null (no bias).
void bias_act(const float* x, const bf16* b, bf16* y, int64_t rows, int64_t cols, VisionAct act, cudaStream_t s);
// y[r, c] += b[c] for y [rows, cols] fp32.
void add_bias(float* y, const bf16* b, int64_t rows, int64_t cols, cudaStream_t s);

// CLIP's embeddings of N tiles of P patches: h [N*(P+1), D] fp32, tile n's row 0 = cls + pos[0],
// row 1 + g = patches[n*P + g] + pos[1 + g] for patches [N*P, D] fp32 (the patch convolution's
// output), cls [D] and pos [P+1, D] bf16.
void clip_embeddings(const float* patches, const bf16* cls, const bf16* pos, float* h, int64_t N, int64_t P, int64_t D,
                     cudaStream_t s);

// Scratch of attention_bidirectional, grown on demand: scores fp32 and probabilities bf16 of
// one sequence's heads [nh, T, T].
struct BidirectionalAttentionWorkspace {
  DeviceBuffer<float> scores;
  DeviceBuffer<bf16> probs;
};
// Bidirectional multi-head attention over S sequences of T tokens (ViT encoders): for each
// sequence and head h, out = softmax(q k^T / sqrt(hd)) v where q, k, v are the head's columns
// h*hd .. h*hd+hd-1 of rows [S*T, .] with row strides ldq, ldk (k and v), ldo. The products run
// through cuBLAS (bf16 in, fp32 accumulation), batched over the heads of one sequence; the scores
// and the softmax are fp32, the probabilities rounded to bf16 for the second product (as flash
// kernels round them for their tensor-core product).
void attention_bidirectional(const Context& ctx, const bf16* q, const bf16* k, const bf16* v, bf16* out, int64_t S,
                             int64_t T, int64_t nh, int64_t hd, int64_t ldq, int64_t ldk, int64_t ldo,
                             BidirectionalAttentionWorkspace& ws);

}  // namespace lowbit::cuda
