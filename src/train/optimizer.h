// The optimizer side of training LoRA adapters (every tensor LoraAdapters::for_each visits: A, B
// and IEC's scalars, one parameter group), with torch's and transformers' semantics:
//   - AdamW (torch.optim.AdamW, decoupled weight decay, bias-corrected moments, fp32 state):
//       p *= 1 - lr * wd;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
//       p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
//   - gradient clipping by the global L2 norm (torch.nn.utils.clip_grad_norm_): every gradient
//     is multiplied by min(1, max_norm / (norm + 1e-6));
//   - the constant schedule with linear warmup (transformers' get_constant_schedule_with_warmup,
//     warmup steps = ceil(warmup_ratio * total steps) as TrainingArguments computes them): the
//     learning rate of optimizer step s (0-based) is lr * s / warmup for s < warmup, else lr. The
//     first step of a warmup therefore has learning rate 0, as in transformers.
#pragma once

#include "train/lora.h"

#include <cstdint>
#include <vector>

namespace lowbit::train {

struct AdamWOptions {
  double lr = 2e-4;
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  double weight_decay = 0.0;
};

// First and second moments, shaped like the adapters, and the number of steps taken.
struct AdamWState {
  int64_t step = 0;
  LoraAdapters m, v;
  static AdamWState zeros_like(const LoraAdapters& params);
};

// The fp32 coefficients of one AdamW update at optimizer step `step` (1-based) and learning rate
// `lr`: torch computes the bias corrections in Python floats (double) and applies them to fp32
// tensors, so they are computed in double and rounded once. adamw_update and the GPU's twin
// (backend/cuda/adamw.cuh) both take these.
struct AdamWCoefficients {
  float step_size = 0;     // lr / (1 - beta1^step)
  float decay = 1;         // 1 - lr * weight_decay
  float one_minus_b1 = 0;  // 1.0f - float(beta1)
  float b2 = 0, one_minus_b2 = 0, eps = 0;
  float bc2_sqrt = 1;      // sqrt(1 - beta2^step)
};
AdamWCoefficients adamw_coefficients(int64_t step, const AdamWOptions& opt, double lr);

// One AdamW update of one parameter vector p from its gradient g and moments m, v, at optimizer
// step `step` (1-based, after incrementing) and learning rate `lr`.
void adamw_update(std::vector<float>& p, const std::vector<float>& g, std::vector<float>& m, std::vector<float>& v,
                  int64_t step, const AdamWOptions& opt, double lr);

// One AdamW update of `params` from `grads` at learning rate `lr` (the scheduled one).
void adamw_step(LoraAdapters& params, const LoraAdapters& grads, AdamWState& state, const AdamWOptions& opt,
                double lr);

// The global L2 norm of all gradients (accumulated in double), and the clipping above when
// max_norm > 0. Returns the norm before clipping.
double clip_grad_norm(LoraAdapters& grads, double max_norm);
// The factor clipping multiplies every gradient by for a global norm `norm`: float(min(1,
// max_norm / (norm + 1e-6))), or 1 when max_norm <= 0 (no clipping).
float clip_coefficient(double norm, double max_norm);

// warmup steps = ceil(ratio * total_steps).
int64_t warmup_steps(double warmup_ratio, int64_t total_steps);
// The learning rate of optimizer step `step` (0-based) under the constant-with-warmup schedule.
double constant_with_warmup_lr(double lr, int64_t step, int64_t warmup);

}  // namespace lowbit::train
