// Device pieces shared by the W4A16 kernels (w4a16.cu: the register-streaming tensor-core kernel,
// w4a16_staged.cu: the shared-memory pipelined one): the launch parameters, the in-register
// dequantization, the mma and the epilogue's store. Internal to backend/cuda (nvcc only).
//
// Fragment layouts of mma.m16n8k16 (PTX ISA), lane = 4 g + t:
//   A 16x16 row-major, 4 regs of 2 bf16: {A[g][2t..2t+1]}, {A[g+8][2t..]}, {A[g][2t+8..]}, {A[g+8][2t+8..]}
//   B 16x8 (k x n), 2 regs:             {B[2t..2t+1][g]}, {B[2t+8..2t+9][g]}
//   C 16x8 fp32, 4 values:              C[g][2t], C[g][2t+1], C[g+8][2t], C[g+8][2t+1]
// pack/w4_tiles_layout.h puts each lane's B codes of a 16 x 64 step in one 16-byte word group.
//
// Dequantization in registers (the exponent trick of Marlin-style kernels, here for bf16): a
// bf16 with bits 0x4300 is 128.0 and its 7 mantissa bits count units, so OR-ing a 4-bit code q
// into the low bits gives exactly 128 + q. One lop3 ((w >> 4p) & 0x000f000f | 0x43004300) makes
// both halves of a bf16x2 B register at once; subtracting the pair's (128 + zero) (exact: small
// integers) and multiplying by the bf16 scale (one rounding) gives bf16(scale * (q - zero)), no
// int-to-float conversions.
#pragma once

#include "backend/cuda/w4a16.cuh"

#include <cuda_bf16.h>

#include <cstdint>
#include <cstring>

namespace lowbit::cuda::w4a16_detail {

struct MmaParams {
  const uint4* codes;      // [chunks, kstride, 32] (16 bytes per lane and step)
  const uint32_t* scales;  // [chunks, groups, 8, 8]
  const bf16* A;           // [M, lda], slot order
  int64_t lda;
  bf16* C;                 // [M, ldc], or
  float* Cf;               // [M, ldc], accumulated into (C += A W^T), when not null
  int64_t ldc;
  float* partial;          // [splits, M, padded_n] when splits > 1
  unsigned* counters;      // [mblocks, colblocks]
  int M, N, chunks, kstride, ksteps, group_steps, groups, splits, steps_per_split;
};

__device__ __forceinline__ uint32_t lop3_and_or(uint32_t a, uint32_t b, uint32_t c) {
  uint32_t d;  // (a & b) | c: immediate 0xea = (0xf0 & 0xcc) | 0xaa
  asm("lop3.b32 %0, %1, %2, %3, 0xea;\n" : "=r"(d) : "r"(a), "r"(b), "r"(c));
  return d;
}

__device__ __forceinline__ __nv_bfloat162 as_bf2(uint32_t u) {
  __nv_bfloat162 v;
  memcpy(&v, &u, 4);
  return v;
}
__device__ __forceinline__ uint32_t as_u32(__nv_bfloat162 v) {
  uint32_t u;
  memcpy(&u, &v, 4);
  return u;
}

// The bf16x2 B register of nibble pair pn (0..3) of code word w (w4_tiles_layout.h: column tile
// 2j + pn / 2, rows 2t + 8 (pn % 2) and that + 1), dequantized with the tile's (128 + zero) pair
// c2 and scale pair s2.
__device__ __forceinline__ uint32_t dequant_pair(uint32_t w, int pn, uint32_t c2, uint32_t s2) {
  const uint32_t v = lop3_and_or(w >> (4 * pn), 0x000f000fu, 0x43004300u);
  return as_u32(__hmul2(__hsub2(as_bf2(v), as_bf2(c2)), as_bf2(s2)));
}

// (scale, scale) and (128 + zero, 128 + zero) of a scale word (bf16 scale low, 128 + zero high).
__device__ __forceinline__ uint32_t scale_pair(uint32_t word) { return __byte_perm(word, 0u, 0x1010); }
__device__ __forceinline__ uint32_t zero_pair(uint32_t word) { return __byte_perm(word, 0u, 0x3232); }

__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Each output has one writer (the block of its column tile, or the last of its splits), so the
// fp32 accumulation needs no atomics.
__device__ __forceinline__ void store_pair(const MmaParams& p, int row, int col, float v0, float v1) {
  const int64_t at = int64_t(row) * p.ldc + col;
  if (p.Cf != nullptr) {
    if (col < p.N) p.Cf[at] += v0;
    if (col + 1 < p.N) p.Cf[at + 1] += v1;
  } else {
    if (col < p.N) p.C[at] = __float2bfloat16_rn(v0);
    if (col + 1 < p.N) p.C[at + 1] = __float2bfloat16_rn(v1);
  }
}

// The staged kernel's configurations, by rows per block: 16, 32, 64 or 128 (w4a16_staged.cu).
// Thread blocks of the staged kernel (for block_rows rows) resident on one SM.
int staged_blocks_per_sm(int block_rows);
// Launches the staged kernel on grid {column blocks, p.splits, row blocks} for block_rows rows
// per block; p.A must allow 16-byte loads (A 16-byte aligned, lda a multiple of 8).
void launch_staged(const MmaParams& p, int block_rows, cudaStream_t s);

}  // namespace lowbit::cuda::w4a16_detail
