// The "quip" storage format: QuIP's incoherence-processed weights (Cornell-RelaxML/QuIP, qfn b).
//
// A QuantizedLinear of this format holds, in the rotated basis:
//   bits        b (2..4); codes [rows * cols], one per byte, k in [0, 2^b - 1];
//   scales      [1]: the grid's scale (an fp16 value; one per matrix);
//   group_size  cols (no groups);
// and as extras:
//   "s"          F32 [cols]: the diagonal rescaling (absent: none);
//   U = quip_random_butterfly(rows, params["u_seed"]) (quip.h), or, without that seed, explicitly
//   "u_perm_in", "u_perm_out" I32 [rows], "u_blocks0", "u_blocks1" F32 (the block rotations);
//   the same with "v" for V (dimension cols). No U and V: no projection.
// Dequantization, with the reference's fp16 round trips (fp16(.) rounds to fp16):
//   Wq  = fp16((2 k / maxq - 1) * scale)          computed as ((k / maxq) * 2 - 1) * scale
//   W   = fp16(U^T Wq V)                          fp32 products, (U^T Wq) V
//   out = fp16(W / s)                             per column
// (QuantizedLinear::dequantize then rounds to the model's dtype.) The row is kQuipFormat.
#pragma once

#include "quant/quip.h"
#include "quant/quantized_linear.h"

#include <optional>
#include <string>
#include <vector>

namespace lowbit {

// fp16((2k/maxq - 1) * scale) as the reference computes it.
float quip_grid_value(uint8_t code, float scale, int maxq);

// Records s (when given) and U, V (when given; by seed in params when they carry one, else as
// extras).
void quip_store_transform(QuantizedLinear& q, const std::vector<float>* s, const Butterfly* u, const Butterfly* v);
// The stored U ("u") or V ("v"), or nullopt without projection.
std::optional<Butterfly> quip_stored_butterfly(const QuantizedLinear& q, const std::string& which);

// out: [rows, cols] fp32 holding fp16 values.
void quip_dequantize(const QuantizedLinear& q, float* out);
double quip_bits_per_weight(const QuantizedLinear& q);
void quip_validate(const QuantizedLinear& q, const std::string& what);

}  // namespace lowbit
