// ggml tensor types (the element types of GGUF files): one row of a trait table per type, the
// packed blocks of the types lowbit reads, and their dequantization to fp32.
//
// A ggml row of ne[0] elements is ne[0] / block_size blocks of type_size bytes each, stored
// back to back; a tensor is its rows in order. The dequantizers reproduce ggml's reference
// dequantize_row_* (ggml-quants.c) bit for bit: same integer decoding, same fp32 operations in
// the same order (this file is compiled without floating-point contraction, so that no FMA
// fuses ggml's separate multiply and add).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace lowbit {

// ggml_type ids as GGUF stores them (ggml.h). Ids 4, 5 and 31-33, 36-38 were removed from ggml.
enum class GgmlType : uint32_t {
  F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q8_1 = 9,
  Q2_K = 10, Q3_K = 11, Q4_K = 12, Q5_K = 13, Q6_K = 14, Q8_K = 15,
  IQ2_XXS = 16, IQ2_XS = 17, IQ3_XXS = 18, IQ1_S = 19, IQ4_NL = 20, IQ3_S = 21, IQ2_S = 22,
  IQ4_XS = 23, I8 = 24, I16 = 25, I32 = 26, I64 = 27, F64 = 28, IQ1_M = 29, BF16 = 30,
  TQ1_0 = 34, TQ2_0 = 35, MXFP4 = 39, NVFP4 = 40, Q1_0 = 41,
};

// Converts n_blocks consecutive blocks at src to n_blocks * block_size floats at dst.
using GgmlToFloat = void (*)(const uint8_t* src, float* dst, int64_t n_blocks);

struct GgmlTypeTraits {
  GgmlType type;
  std::string_view name;  // as ggml spells it ("Q4_K")
  int64_t block_size;     // elements per block
  int64_t type_size;      // bytes per block
  GgmlToFloat to_float;   // nullptr: a type lowbit knows the size of but cannot read
};

// The row of a known type id; nullptr for an id ggml does not define.
const GgmlTypeTraits* ggml_type_traits(uint32_t id);
// "Q4_K", or "unknown" for an id ggml does not define.
std::string_view ggml_type_name(uint32_t id);

// Dequantizes n elements (a multiple of the block size) of type `id` at src into dst. Throws
// lowbit::Error naming `what` (a tensor) for a type lowbit cannot read, e.g. "tensor 'x' has ggml
// type IQ2_XXS (16), which lowbit cannot read", or for n not a multiple of the block size.
void ggml_dequantize(uint32_t id, const uint8_t* src, float* dst, int64_t n, const std::string& what);

// ---- Packed blocks (ggml-common.h). All fields little-endian; fp16 fields are IEEE binary16
// bit patterns. In every drawing, element j of the block is x[j]; "lo(b)" is b & 0x0F and
// "hi(b)" is b >> 4.

inline constexpr int kQK4 = 32;   // block size of the 32-element types
inline constexpr int kQKK = 256;  // block size of the K-quants (QK_K)

// Q4_0: x[j] = (lo(qs[j]) - 8) * d, x[j+16] = (hi(qs[j]) - 8) * d, j < 16.
//   byte 0-1  d        fp16
//   byte 2-17 qs[16]   qs[j] = x[j+16]:4 | x[j]:4   (high nibble | low nibble)
struct BlockQ4_0 {
  uint16_t d;
  uint8_t qs[kQK4 / 2];
};
static_assert(sizeof(BlockQ4_0) == 18);

// Q4_1: x[j] = lo(qs[j]) * d + m, x[j+16] = hi(qs[j]) * d + m.
//   byte 0-1 d fp16 | byte 2-3 m fp16 | byte 4-19 qs[16] as in Q4_0
struct BlockQ4_1 {
  uint16_t d, m;
  uint8_t qs[kQK4 / 2];
};
static_assert(sizeof(BlockQ4_1) == 20);

// Q5_0: 5-bit q[j] = lo/hi nibble of qs (as in Q4_0) | bit j of qh << 4; x[j] = (q[j] - 16) * d.
//   byte 0-1 d fp16 | byte 2-5 qh (u32 LE: bit j = bit 4 of q[j], j < 32) | byte 6-21 qs[16]
struct BlockQ5_0 {
  uint16_t d;
  uint8_t qh[4];
  uint8_t qs[kQK4 / 2];
};
static_assert(sizeof(BlockQ5_0) == 22);

// Q5_1: q[j] as in Q5_0; x[j] = q[j] * d + m.
//   byte 0-1 d fp16 | byte 2-3 m fp16 | byte 4-7 qh | byte 8-23 qs[16]
struct BlockQ5_1 {
  uint16_t d, m;
  uint8_t qh[4];
  uint8_t qs[kQK4 / 2];
};
static_assert(sizeof(BlockQ5_1) == 24);

// Q8_0: x[j] = qs[j] * d.   byte 0-1 d fp16 | byte 2-33 qs[32] int8
struct BlockQ8_0 {
  uint16_t d;
  int8_t qs[kQK4];
};
static_assert(sizeof(BlockQ8_0) == 34);

// Q2_K: 16 sub-blocks of 16; sub-block s has 4-bit scale lo(scales[s]) and 4-bit min hi(scales[s]).
//   byte 0-15   scales[16]
//   byte 16-79  qs[64]: two halves of 32 bytes; in half h, byte l holds 2-bit values of elements
//               128h + 32k + l at bits 2k+1..2k (k = 0..3), i.e. bits 7-6: k=3 ... 1-0: k=0
//   byte 80-81  d fp16, byte 82-83 dmin fp16
//   x = d * lo(scales[s]) * q - dmin * hi(scales[s])
struct BlockQ2_K {
  uint8_t scales[kQKK / 16];
  uint8_t qs[kQKK / 4];
  uint16_t d, dmin;
};
static_assert(sizeof(BlockQ2_K) == 84);

// Q3_K: 2-bit low parts in qs laid out as in Q2_K, the third bit in hmask: bit k of hmask[l] (l < 32)
// belongs to element 32k + l; a CLEAR bit subtracts 4. 16 signed 6-bit scales (minus 32):
//   byte 0-31    hmask[32]
//   byte 32-95   qs[64]
//   byte 96-107  scales[12]: bytes 0-7 hold the low 4 bits (byte i: scale i in lo, scale i+8 in
//                hi), bytes 8-11 the high 2 bits (byte 8+i: bits 2k+1..2k are scale i+4k's)
//   byte 108-109 d fp16
//   x = d * (scale_s - 32) * (q2 - (hbit ? 0 : 4))
struct BlockQ3_K {
  uint8_t hmask[kQKK / 8];
  uint8_t qs[kQKK / 4];
  uint8_t scales[12];
  uint16_t d;
};
static_assert(sizeof(BlockQ3_K) == 110);

// Q4_K: 8 sub-blocks of 32 with 6-bit scales sc[s] and mins m[s] packed in 12 bytes:
//   s < 4:  sc = scales[s] & 63,              m = scales[s+4] & 63
//   s >= 4: sc = lo(scales[s+4]) | (scales[s-4] >> 6) << 4,  m = hi(scales[s+4]) | (scales[s] >> 6) << 4
//   byte 0-1 d fp16 | byte 2-3 dmin fp16 | byte 4-15 scales[12] | byte 16-143 qs[128]
//   qs: four chunks of 32 bytes; chunk c, byte l: lo -> element 64c + l (sub-block 2c),
//       hi -> element 64c + 32 + l (sub-block 2c+1)
//   x = d * sc[s] * q - dmin * m[s]
struct BlockQ4_K {
  uint16_t d, dmin;
  uint8_t scales[12];
  uint8_t qs[kQKK / 2];
};
static_assert(sizeof(BlockQ4_K) == 144);

// Q5_K: Q4_K plus a fifth bit: bit (2c) of qh[l] for element 64c + l and bit (2c+1) for 64c+32+l.
//   byte 0-1 d | 2-3 dmin | 4-15 scales[12] | 16-47 qh[32] | 48-175 qs[128]
//   x = d * sc[s] * (q4 + 16 * bit) - dmin * m[s]
struct BlockQ5_K {
  uint16_t d, dmin;
  uint8_t scales[12];
  uint8_t qh[kQKK / 8];
  uint8_t qs[kQKK / 2];
};
static_assert(sizeof(BlockQ5_K) == 176);

// Q6_K: 16 sub-blocks of 16 with int8 scales. Two halves of 128 elements; in half h (ql += 64h,
// qh += 32h), for l < 32:
//   element 128h + l      = lo(ql[l])      | ((qh[l] >> 0) & 3) << 4
//   element 128h + 32 + l = lo(ql[l + 32]) | ((qh[l] >> 2) & 3) << 4
//   element 128h + 64 + l = hi(ql[l])      | ((qh[l] >> 4) & 3) << 4
//   element 128h + 96 + l = hi(ql[l + 32]) | ((qh[l] >> 6) & 3) << 4
//   byte 0-127 ql[128] | 128-191 qh[64] | 192-207 scales[16] int8 | 208-209 d fp16
//   x = d * scales[e / 16] * (q6 - 32)
struct BlockQ6_K {
  uint8_t ql[kQKK / 2];
  uint8_t qh[kQKK / 4];
  int8_t scales[kQKK / 16];
  uint16_t d;
};
static_assert(sizeof(BlockQ6_K) == 210);

}  // namespace lowbit
