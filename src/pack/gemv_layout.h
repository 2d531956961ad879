// The byte layout of the GPU's low-bit GEMV weights (pack/gemv_pack.h packs them,
// backend/cuda/gemv_lowbit.cu reads them): 2-, 3-, 4- and 8-bit codes of the "int" format (affine
// grid, the W4A16 path's scale and zero conventions) and 4-bit codes of the "codebook" format
// (NormalFloat: a 16-entry table times a per-group absmax). Read by the host compiler and by
// nvcc; the functions here are the layout's definition, which the packer, the unpacker (the CPU
// round-trip test) and the kernels all call.
//
// Terms. The weight is W [N outputs, K inputs]; y[M, N] = x[M, K] W^T. Each row is cut into
// tiles of 1024 columns (K padded to a whole tile with code 0), a tile into 8 units of 128 codes,
// and a unit's codes take `bits` 16-byte words (its planes): 2 bits 32 bytes, 3 bits 48, 4 bits
// 64, 8 bits 128. The kernels read x 8 columns (16 bytes) at a time, a `run`, and unit j of a
// tile holds the tile's runs j, j + 8, ..., j + 120, interleaved so that the 8 lanes that take
// the 8 units of a tile read 128 contiguous bytes of x per run (a warp's 32 lanes: 4 tiles, 4
// cache lines per load) while each lane's codes stay contiguous:
//
//   code i (0..127) of unit u (tile t = u / 8, j = u % 8) is column 1024 t + 64 (i / 8) + 8 j + i % 8
//
//     columns of tile t:   0..7   8..15  ...  56..63 | 64..71  72..79 ... | ...  1016..1023
//     unit (j), run:       j0 r0  j1 r0  ...  j7 r0  | j0 r1   j1 r1  ... | ...  j7 r15
//
// Codes: uint32 words, [n][plane j 0..bits-1][unit u][word w 0..3]: plane j of every unit of a
// row is one contiguous array of 16-byte words, so the 32 lanes of a warp that take 32
// consecutive units of a row read 512 contiguous bytes per plane with one 16-byte load each.
// A lane then holds the unit's 4 * bits words, word index W = 4 j + w, in the order of the
// UnitN structs below; code i of the unit sits in them as:
//
//   2, 4, 8 bits (per = 32 / bits codes per word): word i / per, bits [b (i % per), b (i % per) + b)
//
//     2 bits, word W:  31..30  29..28  ...  3..2  1..0
//                      q[16W+15] q[16W+14] ... q[16W+1] q[16W]
//     4 bits, word W:  31..28 27..24 ... 3..0  =  q[8W+7] ... q[8W]
//     8 bits, word W:  31..24 23..16 15..8 7..0 = q[4W+3] q[4W+2] q[4W+1] q[4W]
//
//   3 bits: the low two bits of every code as the 2-bit layout in words 0..7 (lo), bit 2 of
//     code i at bit i % 32 of word 8 + i / 32 (hi):
//
//     lo[W] (W 0..7):   31..30 ... 1..0   =  q[16W+15] & 3 ... q[16W] & 3
//     hi[W] (W 0..3):   31 ... 0          =  q[32W+31] >> 2 ... q[32W] >> 2
//
// Scales: uint32 words, [n][group g 0..groups-1], groups = ceil(padded K / group_size), the group
// of column c being c / group_size (group_size a multiple of 32, so a run never straddles two
// groups):
//   int:      bf16(scale) in the low half | bf16(zero) in the high half; the zero-point is an
//             integer in [-256, 256], exact in bf16;  w = bf16(scale * (code - zero)), the fp32
//             product being exact (8 significant bits times an integer below 2^9)
//   codebook: the fp32 bits of the group's absmax (NF4's double quantization decoded, at packing);
//             w = bf16(codebook[code] * absmax), one fp32 rounding then one bf16 rounding, as
//             QuantizedLinear::dequantize computes it
// Padding (columns K.., groups past the last) holds code 0 and scale word 0: weight 0.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define LB_GEMV_HD __host__ __device__ __forceinline__
#else
#define LB_GEMV_HD inline
#endif

namespace lowbit::pack::gemv {

enum class Kind : int { Int = 0, Codebook = 1 };

inline constexpr int64_t kUnitCodes = 128;   // codes per unit
inline constexpr int64_t kTileUnits = 8;     // units per tile
inline constexpr int64_t kTileCodes = kUnitCodes * kTileUnits;  // columns per tile (1024)
inline constexpr int64_t kRunCodes = 8;      // columns the kernels decode together (16 bytes of bf16 x)
inline constexpr int64_t kGroupQuantum = 32; // group sizes are multiples of this

// One unit's codes as a lane holds them after its `bits` 16-byte loads.
struct Unit2 {
  uint32_t w[8];  // 16 codes per word
};
struct Unit3 {
  uint32_t lo[8];  // low two bits, 16 codes per word
  uint32_t hi[4];  // bit 2, 32 codes per word
};
struct Unit4 {
  uint32_t w[16];  // 8 codes per word
};
struct Unit8 {
  uint32_t w[32];  // 4 codes per word
};
static_assert(sizeof(Unit2) == 2 * 16 && sizeof(Unit3) == 3 * 16 && sizeof(Unit4) == 4 * 16 &&
              sizeof(Unit8) == 8 * 16);

// The container widths the layout has.
LB_GEMV_HD bool valid_bits(int bits) { return bits == 2 || bits == 3 || bits == 4 || bits == 8; }

// Code i (0..127) of a unit whose 4 * bits words are `w` (UnitN's words in order).
LB_GEMV_HD uint32_t unit_code(const uint32_t* w, int bits, int i) {
  if (bits == 3) return ((w[i >> 4] >> (2 * (i & 15))) & 3u) | (((w[8 + (i >> 5)] >> (i & 31)) & 1u) << 2);
  const int per = 32 / bits;
  return (w[i / per] >> (bits * (i % per))) & ((1u << bits) - 1u);
}

// Stores code (< 2^bits) as code i of the unit's words (which hold 0 there before).
LB_GEMV_HD void set_unit_code(uint32_t* w, int bits, int i, uint32_t code) {
  if (bits == 3) {
    w[i >> 4] |= (code & 3u) << (2 * (i & 15));
    w[8 + (i >> 5)] |= ((code >> 2) & 1u) << (i & 31);
    return;
  }
  const int per = 32 / bits;
  w[i / per] |= code << (bits * (i % per));
}

// The first column of run r (0..15) of unit u; code i of the unit is column
// run_column(u, i / 8) + i % 8.
LB_GEMV_HD int64_t run_column(int64_t u, int r) {
  return (u / kTileUnits) * kTileCodes + 64 * r + 8 * (u % kTileUnits);
}

struct CodeSlot {
  int64_t unit;
  int code;  // 0..127
};

// The inverse: where the code of column c lives.
LB_GEMV_HD CodeSlot column_slot(int64_t c) {
  const int64_t t = c / kTileCodes, r = c % kTileCodes;
  return CodeSlot{t * kTileUnits + (r % 64) / 8, int(8 * (r / 64) + c % 8)};
}

// Index of word W (0..4 bits - 1) of unit u of row n in the code words, for `units` units a row.
LB_GEMV_HD int64_t word_index(int64_t n, int64_t u, int W, int bits, int64_t units) {
  return ((n * bits + W / 4) * units + u) * 4 + W % 4;
}

}  // namespace lowbit::pack::gemv
