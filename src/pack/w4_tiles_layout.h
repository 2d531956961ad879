// The byte layout of the GPU's W4A16 weights (pack/w4_tiles.h packs them, backend/cuda/w4a16.cu
// reads them): where the 4-bit code and the (scale, zero) pair of weight element (n, k) live.
// Read by the host compiler and by nvcc; the functions here are the layout's definition, which
// the packer, the unpacker (the CPU round-trip test) and the GPU's plain kernel all call, while the
// tensor-core kernel reads the same words through its fragment arithmetic (checked against these).
//
// Terms. The weight is W [N outputs, K inputs]; y[M, N] = x[M, K] W^T. The input dimension is
// reordered into `slots`: groups of `group_slots` (a multiple of 16) consecutive slots, slot s in
// group s / group_slots (pack/w4_tiles.h says which input column each slot reads). N is padded
// to a multiple of 64 (a chunk), K's slots to groups * group_slots. Padding holds code 0 with
// scale 0 and zero 0, so it dequantizes to 0.
//
// Codes: uint32 words, [chunk = n / 64][kstep = slot / 16][lane 0..31][word j 0..3], one 16-byte
// uint4 per (chunk, kstep, lane): a warp reads the 512 contiguous bytes of one 16 x 64 tile with
// one coalesced 16-byte load per lane, and each lane's 16 bytes are exactly its B fragments of
// the 8 mma.m16n8k16 products (8 column tiles of 8) of that step. With lane = 4 g + t
// (g = lane / 4 picks the column n = 64 chunk + 8 tile + g, t = lane % 4 the rows 2t, 2t+1 and
// 2t+8, 2t+9 of the step, the mma B fragment's), word j holds the codes of tiles 2j and 2j+1:
//
//     bit  31..28 27..24 23..20 19..16 | 15..12 11..8  7..4   3..0
//          q[h+9] q[h+1] q[l+9] q[l+1] | q[h+8] q[h]   q[l+8] q[l]
//
//   where q[l + r] is the code at row 2t + r of tile 2j and q[h + r] the one of tile 2j + 1.
// Nibble p (p = 0..3, bits 4p..4p+3) and nibble p + 4 (bits 16 + 4p..) are the two halves of one
// bf16x2 B register: tile 2j + p / 2, rows 2t + 8 (p % 2) and that + 1. Masking the word with
// 0x000f000f after a right shift by 4p therefore puts both codes of one register in the low
// mantissa bits of two bf16 lanes at once (see w4a16.cu for the dequantization).
//
// Scales and zeros: uint32 words, [chunk][group][g 0..7][tile 0..7], word = bf16(scale) in the low
// half | bf16(128 + zero) in the high half, for column n = 64 chunk + 8 tile + g; a lane reads its
// 8 words (32 contiguous bytes) once per group. The zero is an integer in [-128, 127], so 128 +
// zero is exact in bf16 and (128 + q) - (128 + zero) = q - zero is exact too.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define LB_W4_HD __host__ __device__ __forceinline__
#else
#define LB_W4_HD inline
#endif

namespace lowbit::pack::w4 {

inline constexpr int64_t kChunkN = 64;   // columns per chunk (one warp's 8 mma column tiles)
inline constexpr int64_t kStepK = 16;    // slots per k-step (the mma's k)
inline constexpr int64_t kWordsPerLaneStep = 4;
inline constexpr int64_t kWordsPerChunkStep = 32 * kWordsPerLaneStep;  // 128 words = 512 bytes
inline constexpr int64_t kZeroBias = 128;  // the bf16 exponent trick's offset (0x4300 = 128.0)

struct CodePos {
  int64_t word;  // index into the code words
  int shift;     // bit offset of the 4-bit code in that word
};

// Where the code of (column n, slot k) lives, for a matrix of `ksteps` k-steps.
LB_W4_HD CodePos code_pos(int64_t n, int64_t k, int64_t ksteps) {
  const int64_t chunk = n / kChunkN, tile = (n % kChunkN) / 8, g = n % 8;
  const int64_t kstep = k / kStepK, r = k % kStepK;
  const int64_t t = (r >> 1) & 3, upper = (r >> 3) & 1, odd = r & 1;
  const int64_t lane = 4 * g + t, j = tile / 2, p = 2 * (tile % 2) + upper;
  return CodePos{((chunk * ksteps + kstep) * 32 + lane) * kWordsPerLaneStep + j, int(16 * odd + 4 * p)};
}

struct NibbleCoord {
  int64_t n, k;  // column and slot
};

// The inverse of code_pos, in the kernels' terms: the (column, slot) of nibble p (bits 4p..4p+3,
// odd 0) or p + 4 (bits 16 + 4p.., odd 1) of word j of lane `lane` at (chunk, kstep).
LB_W4_HD NibbleCoord nibble_coord(int64_t chunk, int64_t kstep, int lane, int j, int p, int odd) {
  const int g = lane / 4, t = lane % 4;
  return NibbleCoord{chunk * kChunkN + 8 * (2 * j + p / 2) + g, kstep * kStepK + 2 * t + 8 * (p % 2) + odd};
}

// Index of the (scale, zero) word of (column n, group), for a matrix of `groups` groups.
LB_W4_HD int64_t scale_pos(int64_t n, int64_t group, int64_t groups) {
  const int64_t chunk = n / kChunkN, tile = (n % kChunkN) / 8, g = n % 8;
  return ((chunk * groups + group) * 8 + g) * 8 + tile;
}

}  // namespace lowbit::pack::w4
