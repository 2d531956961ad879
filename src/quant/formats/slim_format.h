// The "slim" storage format: SliM-LLM's group-wise mixed precision (Aaronhuang-778/SliM-LLM).
//
// A QuantizedLinear of this format holds:
//   bits        the widest group's code width (N + 1 for a run at N bits): the storage width of
//               every code, one code per byte in `codes` ([rows * cols], row-major);
//   group_size  g, columns per group along the input dimension (the last group may be shorter);
//   scales, zeros  [rows * ngroups], index r * ngroups + c / g;
//   extras["group_bits"]  I8 [ngroups]: group j's bit width b_j (the same for every row).
//
// Group j of row r dequantizes as
//   b_j >= 2:  w = scale * (code - zero),   code in [0, 2^b_j - 1]      (zero in code units)
//   b_j == 1:  w = sign * alpha + mu,  alpha = scale, mu = zero, sign = -1, +1, 0 for codes
//              0, 1, 2. The reference binarizes with sign(w - mu), so a weight exactly at mu
//              keeps mu: code 2 records that case.
// Every value is computed in fp32 (QuantizedLinear::dequantize then rounds it to dequant_dtype,
// as the reference writes its fp32 result into the model's 16-bit weight). The row is
// kSlimFormat (quant_format.h).
#pragma once

#include "quant/quantized_linear.h"

#include <string>
#include <vector>

namespace lowbit {

// Per-group bit widths as stored in extras["group_bits"].
std::vector<int> slim_group_bits(const QuantizedLinear& q);
void slim_set_group_bits(QuantizedLinear& q, const std::vector<int>& bits);

// The format's scalar reference: out [rows, cols] row-major fp32.
void slim_dequantize(const QuantizedLinear& q, float* out);
// Code bits of every group (mean N), plus each group's fp16 scale and its zero-point (b_j bits
// for integer groups, a 16-bit mean for binary ones), plus the 8-bit group width table.
double slim_bits_per_weight(const QuantizedLinear& q);
// Sizes, the group width table and every code's range; throws lowbit::Error naming `what`.
void slim_validate(const QuantizedLinear& q, const std::string& what);

}  // namespace lowbit
