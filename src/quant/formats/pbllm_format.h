// The "pbllm" storage format: PB-LLM's partially binarized weight (hahnyuan/PB-LLM, GPTQ-PB).
//
// Every weight of W [rows, cols] is either binarized (about low_frac of them) or salient (kept on
// a high_bit affine grid). A QuantizedLinear of this format holds:
//   bits = 1, codes [rows * cols]  one per byte: the sign of a binarized weight, 1 = +alpha,
//                                  0 = -alpha (0 at salient positions); packed 1 bit per weight
//                                  when saved;
//   group_size = g                 columns per binarizer group (mu, alpha), ngroups = cols / g;
//   scales, zeros [rows]           the salient weights' per-row asymmetric grid (fp32, zero in
//                                  code units), found over the whole row;
//   extras:
//     mask     U8 [rows, ceil(cols / 8)]  bit plane (formats/bit_plane.h): 1 = binarized
//     high     U8 [n_salient]   the salient weights' codes, row-major over the mask's 0 bits
//     at_mean  I32 [1 + m]      m, then the flat indices r * cols + c (ascending) of binarized
//                               weights that sit exactly at their mean: the reference binarizes
//                               with sign(w - mu), whose sign(0) = 0 gives mu, a third state
//     mu, alpha  F32 [rows, ngroups]
//   params: {"high_bit": b}          the salient grid's width (codes 0 .. 2^b - 1)
//
// Dequantization, in fp32 as the reference computes it (QuantizedLinear rounds to dequant_dtype):
//   binarized:  s * alpha[r, c / g] + mu[r, c / g],   s = +1, -1, or 0 (at_mean)
//   salient:    scale[r] * (code - zero[r])
#pragma once

#include "quant/quantized_linear.h"

#include <string>

namespace lowbit {

// The format's row is kPbllmFormat (quant_format.h); these are its functions.
// out: [rows, cols] row-major fp32.
void pbllm_dequantize(const QuantizedLinear& q, float* out);
// The bits stored per weight: the sign and mask planes, the salient codes (8 bits each, as
// stored), the at-mean list, the fp32 (mu, alpha) pairs and the per-row fp32 scale and zero.
double pbllm_bits_per_weight(const QuantizedLinear& q);
// Sizes, the mask against the salient code count, code ranges and the at-mean list; throws
// lowbit::Error naming `what`.
void pbllm_validate(const QuantizedLinear& q, const std::string& what);

}  // namespace lowbit
