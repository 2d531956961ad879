// smoothquant: SmoothQuant (Xiao et al. 2023) as its reference code (mit-han-lab/smoothquant,
// smooth.py, fake_quant.py) defines it for LLaMA-style models.
//
//   - per-channel maxima of |x| at the inputs of q/k/v and of gate/up, on the 16-bit model's
//     activations (every block calibrated on the unmodified model, as get_act_scales does);
//   - smoothing factors s_j = max|X_j|^alpha / max|W_j|^(1-alpha) (both clamped to >= 1e-5,
//     max|W_j| over all rows of the linears sharing the input), folded in: the RMSNorm weight
//     divided by s, the linears' columns multiplied by s;
//   - weights: per output channel, symmetric, scale = max(max|w|, 1e-5) / (2^(w-1) - 1),
//     w = round(w / scale) * scale;
//   - activations: fake-quantized at the input of every linear in the forward, symmetric,
//     scale = max(max|x|, 1e-5) / (2^(a-1) - 1) per token (act=per_token, the default), per
//     tensor of the current input (act=per_tensor), or per tensor fixed from the calibration
//     maxima (act=per_tensor_static).
//
//   spec: smoothquant:w=8,a=8,alpha=0.5,act=per_token
#pragma once

#include "calib/block_driver.h"
#include "quant/quantized_linear.h"

#include <vector>

namespace lowbit {

// Smoothing factors for linears sharing one input: act_absmax [in], weights [rows_i, in] each.
std::vector<float> smoothquant_factors(const std::vector<float>& act_absmax, const std::vector<const Tensor*>& weights,
                                       double alpha);

// Collects the block's input maxima (on its current weights), folds the smoothing factors into
// the norms and q/k/v, gate/up, and returns them with the maxima (before smoothing).
struct SmoothingResult {
  std::vector<float> qkv, gate_up;     // factors [hidden]
  BlockContext::StatsMap stats;        // absmax of every linear's input
};
SmoothingResult smoothquant_smooth_block(BlockContext& ctx, double alpha);

// Per-channel symmetric absmax weight quantization (stored as unsigned codes with zero-point
// 2^(bits-1)).
QuantizedLinear smoothquant_weight(const float* w, int64_t rows, int64_t cols, int bits, DType dtype);

}  // namespace lowbit
