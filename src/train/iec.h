// IR-QLoRA's Information Elastic Connection (IEC; Qin et al. 2024, htqin/IR-QLoRA
// IRQLoraLinear4bit.forward): a LoRA path with two extra trainable scalars per linear, both
// starting at 0, that add parameter-free group means of the input:
//
//   h      = A drop(x) + a_s * mean_groups(x)   mean_groups: x's `in` features cut into r
//                                               contiguous groups of in / r, each averaged (an
//                                               r-vector); the means read x itself, not the
//                                               dropped-out input (as the reference does)
//   y_lora = (B h + b_s * repeat_interleave(h, out / r)) * scaling
//                                               output chunk k (out / r contiguous outputs)
//                                               gets b_s * h[k]
//   y      = base(x) + y_lora
//
// Requires in % r == 0 and out % r == 0 (LLaMA-3-8B's linears at r = 64). fp32, as the
// reference's script runs it (no --bf16).
//
// The path is linear in x, so it merges into the base weight exactly (without dropout):
//   W' = W + scaling * (B + b_s R)(A + a_s M),  M [r, in] the group-mean matrix (1 / (in / r) on
//   group k's columns in row k), R [out, r] the repeat matrix (1 where o / (out / r) == k).
#pragma once

#include <cstdint>

namespace lowbit::train {

struct IecLora {
  const float* a = nullptr;  // [r, in]
  const float* b = nullptr;  // [out, r]
  int64_t r = 0, in = 0, out = 0;
  float a_scale = 0, b_scale = 0;  // the two IEC scalars
  float scaling = 0;               // lora_alpha / r
};

// Throws lowbit::Error naming the sizes when r does not divide in and out (or r <= 0).
void check_iec_shape(int64_t r, int64_t in, int64_t out);

// h [n, r] = xd A^T + a_s * mean_groups(x). xd is the input the A path reads (dropout applied;
// pass x when there is none); x [n, in] feeds the group means.
void iec_down(const IecLora& l, const float* x, const float* xd, int64_t n, float* h);
// y [n, out] += (h B^T + b_s * repeat_interleave(h, out / r)) * scaling.
void iec_up(const IecLora& l, const float* h, int64_t n, float* y);

// y [n, out] += the IEC LoRA path of x [n, in] without dropout (iec_down then iec_up).
void iec_lora_forward(const IecLora& l, const float* x, int64_t n, float* y);

// Gradients of the path for the upstream gradient dy [n, out], added into (any may be null):
//   dxd [n, in]   through the A path (the gradient at drop(x); the caller applies the mask),
//   dx  [n, in]   through the group means (dxd and dx may be the same buffer without dropout),
//   da [r, in], db [out, r], *da_scale, *db_scale.
// With h = A xd + a_s m (m the group means of x):
//   dh = s (B^T dy + b_s sum of dy over each output chunk),   s = scaling
//   dB += s dy h^T,   d b_s += s sum_j dy_j h_(j / (out / r)),   dA += dh xd^T,   d a_s += dh . m,
//   dxd += A^T dh,    dx_i += a_s dh_(i / (in / r)) / (in / r).
// The scalars' sums over tokens are in fp64.
struct IecGrads {
  float* dx = nullptr;
  float* da = nullptr;
  float* db = nullptr;
  float* da_scale = nullptr;
  float* db_scale = nullptr;
  float* dxd = nullptr;
};
// h [n, r] is iec_down's output for the same inputs (null: recomputed).
void iec_lora_backward(const IecLora& l, const float* x, const float* xd, const float* h, const float* dy, int64_t n,
                       const IecGrads& g);
// Without dropout (xd = x; the A path's input gradient also goes into dx).
void iec_lora_backward(const IecLora& l, const float* x, const float* dy, int64_t n, const IecGrads& g);

// The merged delta (B + b_s R)(A + a_s M) * scaling added into w [out, in] (see above).
void iec_merge(const IecLora& l, float* w);

}  // namespace lowbit::train
