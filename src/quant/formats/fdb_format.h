// The "fdb" storage format: DB-LLM's Flexible Dual Binarization (Chen et al. 2024, arXiv
// 2402.11960). Each weight is the sum of two binary planes with their own scales:
//
//   w[r, c] = (alpha1[s] * b1[r, c] + alpha2[s] * b2[r, c]) + beta[s],   b1, b2 in {0, 1},
//   s = r * (cols / group_size) + c / group_size   (per-row groups of group_size input columns)
//
// evaluated in fp32 in that order (the two products, their sum, then beta), and rounded to the
// model's dtype by QuantizedLinear.
//
// Why beta. The paper starts FDB from a 2-bit uniform quantizer with step s and sets
// alpha1 = 2s, alpha2 = -s, which gives the levels {-s, 0, s, 2s}: the 2-bit grid with its
// zero-point at code 1. GPTQ's asymmetric min-max grid (affine_grid.h), which RTN and GPTQ use,
// puts the zero-point z of each group anywhere in {0, 1, 2, 3}: its levels are s * (q - z),
// q in 0..3. Writing q - z = (q - 1) + (1 - z), the first part is the paper's split and the
// second a per-group offset beta = s * (1 - z). With
//
//   b1 = q >> 1,   b2 = 1 - (q & 1),   alpha1 = 2s,   alpha2 = -s,   beta = s * (1 - z)
//
//   q | b1 b2 | alpha1 b1 + alpha2 b2
//   0 |  0  1 | -s
//   1 |  0  0 |  0
//   2 |  1  1 |  s
//   3 |  1  0 |  2s
//
// the FDB weight equals the 2-bit weight s * (q - z) bit for bit: 2s, -s and s * (1 - z)
// (1 - z in {1, 0, -1, -2}) are exact in fp32, so is 2s - s, and the final sum is one rounding
// of the exact s * (q - z), the same single rounding as the int format's product.
// Without an offset (has_beta = false, beta stored as 0) the grid is the paper's {-s, 0, s, 2s}
// exactly as written, and a group's storage is two scales.
//
// A QuantizedLinear of this format holds:
//   bits = 2 (#W, the two planes), group_size, codes empty, scales/zeros empty;
//   extras:
//     fdb.b1     U8 [rows, ceil(cols / 8)]   bit plane b1 (formats/bit_plane.h layout)
//     fdb.b2     U8 [rows, ceil(cols / 8)]   bit plane b2
//     fdb.alpha  F32 [rows * cols / group_size, 3]   per group: alpha1, alpha2, beta
//   params: {"has_beta": true|false}
//
// Storage: 2 bits per weight for the planes plus 16 bits for each stored fp value of a group
// (alpha1, alpha2, and beta when has_beta): 2 + 32 / g (2.25 at g = 128, the paper's count) or
// 2 + 48 / g (2.375) with the offset. The values are held in fp32 in memory and counted at 16
// bits, as the int format counts its scales; the packed block below stores them in fp16.
#pragma once

#include "quant/quantized_linear.h"

#include <cstdint>
#include <string>
#include <vector>

namespace lowbit {

// The format's row is kFdbFormat (quant_format.h); these are its functions.
void fdb_dequantize(const QuantizedLinear& q, float* out);  // out: [rows, cols] row-major fp32
double fdb_bits_per_weight(const QuantizedLinear& q);
void fdb_validate(const QuantizedLinear& q, const std::string& what);

// The FDB form of an int-format 2-bit linear with per-row groups (RTN or GPTQ without
// act_order's g_idx), by the table above: dequantizes to the same values bit for bit. Throws
// lowbit::Error for any other input (bits, g_idx, groups that do not divide the columns).
// has_beta = false requires every zero-point to be 1 (the paper's grid).
QuantizedLinear fdb_from_int2(const QuantizedLinear& q, bool has_beta);

// Read access to one group's parameters: alpha[3 * s + {0, 1, 2}].
inline float* fdb_alpha(QuantizedLinear& q) { return q.extras.at("fdb.alpha").mutable_data_as<float>(); }
inline const float* fdb_alpha(const QuantizedLinear& q) { return q.extras.at("fdb.alpha").data_as<float>(); }

// Packed block of one group of 128 weights of a row (the inference layout; 38 bytes = 2.375
// bits per weight, the has_beta count; without an offset d[2] is 0 and a 36-byte variant
// without it would store the paper's 2.25):
//
//   byte  0..5    d[0], d[1], d[2]: alpha1, alpha2, beta as IEEE fp16, little-endian
//   byte  6..21   b1[16]: bit j of b1[i] = plane b1 of column 8 i + j of the group
//   byte 22..37   b2[16]: the same for plane b2
//
//   b1[i]:  bit 7  bit 6  ...  bit 1  bit 0
//           c0+7   c0+6        c0+1   c0       (c0 = 8 i, columns within the group)
struct BlockFdb128 {
  uint16_t d[3];
  uint8_t b1[16];
  uint8_t b2[16];
};
static_assert(sizeof(BlockFdb128) == 38, "BlockFdb128 must be 38 bytes: 3 fp16 and two 16-byte planes");

// Packs a group_size = 128 fdb linear into rows * cols / 128 blocks, row by row, group by
// group (alphas rounded to fp16), and reads them back into an fdb linear whose alphas are the
// fp16 values. Throws lowbit::Error when the group size is not 128.
std::vector<BlockFdb128> fdb_pack128(const QuantizedLinear& q);
QuantizedLinear fdb_unpack128(const std::vector<BlockFdb128>& blocks, int64_t rows, int64_t cols, bool has_beta,
                              DType dequant_dtype);

}  // namespace lowbit
