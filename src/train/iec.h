// IR-QLoRA's Information Elastic Connection (IEC; Qin et al. 2024, htqin/IR-QLoRA
// IRQLoraLinear4bit.forward): a LoRA path with two extra trainable scalars per linear, both
// starting at 0, that add parameter-free group means of the input:
//
//   h      = A x + a_s * mean_groups(x)      mean_groups: x's `in` features cut into r contiguous
//                                            groups of in / r, each averaged (an r-vector)
//   y_lora = (B h + b_s * repeat_interleave(h, out / r)) * scaling
//                                            output chunk k (out / r contiguous outputs) gets
//                                            b_s * h[k]
//   y      = base(x) + y_lora
//
// Requires in % r == 0 and out % r == 0 (LLaMA-3-8B's linears at r = 64). fp32, as the
// reference's script runs it (no --bf16).
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

// y [n, out] += the IEC LoRA path of x [n, in]; throws lowbit::Error naming the sizes when r does
// not divide in and out.
void iec_lora_forward(const IecLora& l, const float* x, int64_t n, float* y);

// Gradients of the path for the upstream gradient dy [n, out], added into: dx [n, in], da [r, in],
// db [out, r], *da_scale, *db_scale (any may be null). With h = A x + a_s m (m the group means):
//   dh = s (B^T dy + b_s sum of dy over each output chunk),   s = scaling
//   dB += s dy h^T,   d b_s += s sum_j dy_j h_(j / (out / r)),   dA += dh x^T,   d a_s += dh . m,
//   dx += A^T dh + a_s dh_(i / (in / r)) / (in / r).
// Sums over tokens in fp64.
struct IecGrads {
  float* dx = nullptr;
  float* da = nullptr;
  float* db = nullptr;
  float* da_scale = nullptr;
  float* db_scale = nullptr;
};
void iec_lora_backward(const IecLora& l, const float* x, const float* dy, int64_t n, const IecGrads& g);

}  // namespace lowbit::train
