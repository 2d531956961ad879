// W4A16 tiles: an "int" QuantizedLinear of at most 4 bits repacked, once at load, into the layout
// the GPU's W4A16 GEMM streams (pack/w4_tiles_layout.h draws it): 4-bit codes in mma-fragment
// order, one bf16 (scale, 128 + zero) pair per column and group.
//
// Input order. The K input columns are visited group by group as `slots`: group g occupies slots
// [g * group_slots, (g + 1) * group_slots), holding the columns c of group g (g_idx[c] == g for
// GPTQ's act_order, else c / group_size) in increasing c, then padding. group_slots is the
// largest group's size rounded up to 16. When the slot order is the identity (no g_idx and a
// group size that is a multiple of 16) `source_col` is empty and slot k reads column k (slots
// from K on are padding); otherwise source_col[slot] is the input column (-1: padding, read as
// 0), and the GPU gathers the activations into slot order once per product: an act_order
// weight costs one gather of x, never a permuted copy of W.
//
// Numbers. Codes (< 16, so 1- to 4-bit codes all fit) are kept exactly; each scale is rounded to
// bf16 (the tensor cores' input type), zeros must be integers in [-128, 127] (what lowbit's
// affine grids produce: zero = round(-min / scale)). The tiles dequantize to
//   w[n, c] = bf16(bf16(scale) * (code - zero)),
// which equals the fake-quant bf16 weight (QuantizedLinear::dequantize with dequant_dtype BF16)
// whenever the scale is a bf16 value, and differs from it by at most the scale's rounding (2^-9
// relative) otherwise.
#pragma once

#include "pack/w4_tiles_layout.h"
#include "quant/quantized_linear.h"

#include <cstdint>
#include <string>
#include <vector>

namespace lowbit::pack {

struct W4Tiles {
  int64_t n = 0, k = 0;          // the logical weight [N = out, K = in]
  int64_t group_slots = 0;       // slots per group (a multiple of 16)
  int64_t groups = 0;            // groups per row
  std::vector<int32_t> source_col;  // [padded_k()] or empty (identity), see above
  std::vector<uint32_t> codes;      // [chunks, ksteps, 32, 4], w4_tiles_layout.h
  std::vector<uint32_t> scales;     // [chunks, groups, 8, 8], bf16 scale | bf16(128 + zero) << 16

  int64_t padded_n() const { return (n + w4::kChunkN - 1) / w4::kChunkN * w4::kChunkN; }
  int64_t padded_k() const { return groups * group_slots; }
  int64_t chunks() const { return padded_n() / w4::kChunkN; }
  int64_t ksteps() const { return padded_k() / w4::kStepK; }
  size_t nbytes() const { return (codes.size() + scales.size() + source_col.size()) * 4; }
};

// Whether pack_w4_tiles accepts q (format "int", per-row groups, at most 4 bits).
bool can_pack_w4_tiles(const QuantizedLinear& q);
// Repacks q; throws lowbit::Error naming `what` for another format, more than 4 bits, flat
// groups, inconsistent sizes, or a zero-point that is not an integer in [-128, 127].
W4Tiles pack_w4_tiles(const QuantizedLinear& q, const std::string& what);

// The layout read back on the CPU, in the original column order: code [N, K], and per (row,
// group) the bf16 scale and the zero-point (the round trip of pack_w4_tiles).
struct W4Unpacked {
  std::vector<uint8_t> codes;  // [N * K]
  std::vector<float> scales;   // [N * groups], bf16 values
  std::vector<float> zeros;    // [N * groups]
};
W4Unpacked unpack_w4_tiles(const W4Tiles& t);
// The weight the tiles encode, [N, K] fp32 in the original column order (formula above).
std::vector<float> dequantize_w4_tiles(const W4Tiles& t);

}  // namespace lowbit::pack
