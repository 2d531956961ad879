// dbllm: DB-LLM (Chen et al. 2024, arXiv 2402.11960), the Flexible Dual Binarization part as a
// post-training step: every linear quantized to 2 bits (RTN or GPTQ on the asymmetric min-max
// grid, affine_grid.h) and rewritten in the fdb format (formats/fdb_format.h) as two binary
// planes with two scales per group, alpha1 = 2s, alpha2 = -s, plus a per-group offset
// beta = s * (1 - z) that carries the asymmetric grid's zero-point.
//
// This is FDB's initialization, not DB-LLM: the method's accuracy comes from training the scales
// by Deviation-Aware Distillation from the 16-bit model (train/fdb_train.h, `lowbit distill`).
// An fdb model that was not trained dequantizes to the 2-bit RTN (or GPTQ) model bit for bit, and
// its study row is labelled "FDB init".
//
// No code of the paper was released; the choices below are lowbit's, each an option:
//   init=rtn|gptq   the 2-bit quantizer FDB starts from (the paper names a uniform quantizer);
//                   gptq runs with its defaults (damp 0.01, true_seq, no act_order: act_order's
//                   column groups cannot be split into fdb groups);
//   offset=1        store beta per group (exact for every zero-point; 2 + 48/g bits stored);
//   offset=0        the paper's grid {-s, 0, s, 2s} as written, zero-point fixed at 1, with the
//                   step s = max(-xmin, xmax / 2) of each group so that [xmin, xmax] is covered
//                   (2 + 32/g bits stored: 2.25 at g = 128, the count); init=rtn only.
//
//   spec: dbllm:g=128,init=rtn,offset=1
#pragma once

#include "quant/quantized_linear.h"

namespace lowbit {

// The offset-free 2-bit start: an int-format linear with every zero-point 1 and the step
// s = max(-xmin, xmax / 2) per group (s = 1 for an all-zero group), codes
// clamp(round(w / s) + 1, 0, 3) with round-half-to-even. w: [rows, cols] fp32.
QuantizedLinear rtn2_paper_grid(const float* w, int64_t rows, int64_t cols, int64_t group_size, DType dtype);

}  // namespace lowbit
