// The GPU AdamW step's constants (backend/cuda/adamw.cuh) from the host's (train/optimizer.h):
// one conversion, so the device update and adamw_update use the same values field for field.
#pragma once

#include "backend/cuda/adamw.cuh"
#include "train/optimizer.h"

namespace lowbit::train {

// grad_scale: the gradient clipping coefficient (clip_coefficient) applied to every gradient.
inline cuda::AdamWStepF32 adamw_step_f32(const AdamWCoefficients& k, float grad_scale) {
  cuda::AdamWStepF32 c;
  c.grad_scale = grad_scale;
  c.decay = k.decay;
  c.one_minus_b1 = k.one_minus_b1;
  c.b2 = k.b2;
  c.one_minus_b2 = k.one_minus_b2;
  c.bc2_sqrt = k.bc2_sqrt;
  c.eps = k.eps;
  c.step_size = k.step_size;
  return c;
}

}  // namespace lowbit::train
