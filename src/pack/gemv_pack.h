// Low-bit GEMV weights: an "int" QuantizedLinear of 1-3 or 5-8 bits (4 too, though the W4A16
// tiles of pack/w4_tiles.h are the GPU's 4-bit int path) or a 4-bit "codebook" one (NormalFloat,
// NF4 with or without double quantization) repacked, once at load, into the layout the GPU's
// GEMV kernels stream (pack/gemv_layout.h draws it): codes in units of 128 (interleaved by runs of
// 8 columns over tiles of 1024) of 2, 3, 4 or 8 bits a code (1-bit int codes take the 2-bit
// container, 5-7-bit ones the 8-bit one), and one scale word per (row, group).
//
// What the layout holds: per-row groups (flat groups only where they coincide with per-row ones:
// cols a multiple of the group size), a group size that is a multiple of 32, no act_order
// (a g_idx other than c / group_size), int zero-points that are integers in [-256, 256], codebook
// tables of at most 16 entries. Anything else is refused naming the linear (the W4A16 tiles take
// act_order and odd group sizes for int codes of up to 4 bits).
//
// Numbers. Codes are kept exactly. Int scales are rounded to bf16 as in the W4A16 tiles, so
//   w[n, c] = bf16(bf16(scale) * (code - zero))
// equals the fake-quant bf16 weight whenever the scale is a bf16 value, and differs from it by at
// most the scale's rounding (2^-9 relative) otherwise. Codebook absmax values are kept in fp32
// (NF4's double-quantized absmax decoded here, at packing, into the fp32 value the reference
// uses), so w[n, c] = bf16(codebook[code] * absmax) equals the fake-quant bf16 weight exactly.
#pragma once

#include "pack/gemv_layout.h"
#include "quant/quantized_linear.h"

#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace lowbit::pack {

struct GemvPacked {
  int64_t n = 0, k = 0;        // the logical weight [N = out, K = in]
  int bits = 0;                // container width: 2, 3, 4 or 8
  gemv::Kind kind = gemv::Kind::Int;
  int64_t group_size = 0;      // a multiple of 32
  std::vector<uint32_t> codes;   // [n, bits, units, 4], gemv_layout.h
  std::vector<uint32_t> scales;  // [n, groups], gemv_layout.h
  std::array<float, 16> codebook{};  // codebook kind: the table, 0 past its 2^q.bits entries

  int64_t units() const { return (k + gemv::kTileCodes - 1) / gemv::kTileCodes * gemv::kTileUnits; }
  int64_t padded_k() const { return units() * gemv::kUnitCodes; }
  int64_t groups() const { return (padded_k() + group_size - 1) / group_size; }
  size_t nbytes() const { return (codes.size() + scales.size()) * 4; }
};

// The container width the layout would give q (0: none; see can_pack_gemv).
int gemv_container_bits(const QuantizedLinear& q);
// Whether pack_gemv accepts q; when not and `why` is given, *why says what it cannot hold.
bool can_pack_gemv(const QuantizedLinear& q, std::string* why = nullptr);
// Repacks q; throws lowbit::Error naming `what` and the reason when can_pack_gemv is false, for
// inconsistent sizes, non-finite scales or a zero-point out of range.
GemvPacked pack_gemv(const QuantizedLinear& q, const std::string& what);

// The layout read back on the CPU: codes [N * K], and per (row, group of the linear's own
// groups_per_row) the scale (int: its bf16 value; codebook: the fp32 absmax) and the zero-point
// (int only; empty for codebook). The round trip of pack_gemv.
struct GemvUnpacked {
  std::vector<uint8_t> codes;
  std::vector<float> scales, zeros;
};
GemvUnpacked unpack_gemv(const GemvPacked& p);
// The weight the layout encodes, [N, K] fp32 (bf16 values), by the formulas above.
std::vector<float> dequantize_gemv(const GemvPacked& p);

}  // namespace lowbit::pack
