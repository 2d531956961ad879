// The "billm" storage format: BiLLM's residual binarization with structural salient columns
// (Aaronhuang-778/BiLLM, BRAGPTQ with method "braq").
//
// The columns of W [rows, cols] fall into blocks of group_size (128) columns. In each block some
// columns are salient (binarized twice: a sign plane for the weight and one for the residual);
// every other weight of the block is binarized once, in one of two groups split by saliency.
// A QuantizedLinear of this format holds:
//   bits = 1, codes [rows * cols]  one per byte: the first-order sign, 1 = +alpha, 0 = -alpha;
//                                  packed 1 bit per weight when saved;
//   group_size = block             columns per block, nblk = cols / block;
//   scales, zeros                  empty;
//   extras:
//     salient  U8 [1, ceil(cols / 8)]      column bit plane (formats/bit_plane.h): 1 = salient
//     group    U8 [rows, ceil(cols / 8)]   bit plane: 1 = the larger-saliency group (mask2),
//                                          0 = the smaller (mask1); 0 in salient columns
//     sign2    U8 [rows, ceil(nsal / 8)]   bit plane of the residual's signs over the salient
//                                          columns only, in ascending column order (nsal of them)
//     at_mean  I32 [1 + m]   m, then entries 2 * (r * cols + c) + o (ascending) for weights whose
//                            order-o binarization (o = 0 first, 1 residual) met its mean exactly:
//                            the reference's sign(0) = 0 leaves the mean, a third state
//     params   F32 [rows, nblk, 8]   per row and block: mu1, alpha1 (mask1), mu2, alpha2
//                                    (mask2), mu3a, alpha3a, mu3b, alpha3b (salient, first order
//                                    and residual); 0 for a group with no weight in the row
//
// Dequantization, in fp32 in the reference's order (QuantizedLinear rounds to dequant_dtype):
//   mask1 / mask2:  s * alpha + mu
//   salient:        b1 + b2,  b1 = s * alpha3a + mu3a,  b2 = s2 * alpha3b + mu3b
// with s = +1, -1, or 0 (at_mean); a result of -0 reads +0, as the reference's sums of masked
// parts make it.
#pragma once

#include "quant/quantized_linear.h"

#include <string>

namespace lowbit {

// The format's row is kBillmFormat (quant_format.h); these are its functions.
// out: [rows, cols] row-major fp32.
void billm_dequantize(const QuantizedLinear& q, float* out);
// The bits stored per weight: the sign and group planes, the residual signs of the salient
// columns, the salient column plane, the at-mean list and the 8 fp32 parameters per row and block.
double billm_bits_per_weight(const QuantizedLinear& q);
void billm_validate(const QuantizedLinear& q, const std::string& what);

}  // namespace lowbit
