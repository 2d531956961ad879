// One lane's share of the low-bit GEMV (gemv_lowbit.cuh): the loads, the decoding and the fused
// multiply-adds of the kernel, written once for nvcc and for the host compiler, so that the CPU
// test (tests/unit/test_gemv_lane.cpp) runs every lane of a grid through the very code the GPU
// runs and checks it against the dequantized product. Device builds use the streaming 16-byte
// loads and the bf16 conversion instructions; the host twins compute the same values (round to
// nearest even; the values here are finite).
//
// The work of a warp: ROWS consecutive rows of W from n0, up to MR rows of x. Lane l takes the
// units l, l + 32, ... of those rows; for each it loads the `bits` 16-byte code words of each row
// (gemv_layout.h: plane j of unit u of row n is 16-byte word (n * bits + j) * units + u), and for
// each of the unit's 16 runs (8 columns from c0 = run_column(u, run)) the scale word of its group
// (n * groups + c0 / group_size), decodes its 8 codes, and adds x[m, c] * w[n, c] into acc[r][m]
// with fused multiply-adds, run by run. The kernel then adds the 32 lanes' sums by a shuffle
// butterfly.
#pragma once

#include "pack/gemv_layout.h"

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#endif

#include <cmath>
#include <cstdint>
#include <cstring>

// Full unrolling in the device pass (registers for the unit's words and the sums); nothing for
// the host compiler.
#if defined(__CUDA_ARCH__)
#define LB_GEMV_UNROLL _Pragma("unroll")
#else
#define LB_GEMV_UNROLL
#endif

namespace lowbit::cuda::gemv_lane {

struct Params {
  const uint32_t* codes;   // [N, bits, units, 4] (16-byte aligned)
  const uint32_t* scales;  // [N, groups]
  const uint16_t* A;       // bf16 [M, lda], rows readable (16-byte aligned) up to units * 128 columns
  int64_t lda;
  int M, N, units, groups;
  int group_size;   // a multiple of 32
  int group_shift;  // log2(group_size) when it is a power of two, else -1 (a shift, not a division)
};

LB_GEMV_HD float as_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}

// x rounded to bf16 (nearest even) and back to fp32.
LB_GEMV_HD float round_bf16(float x) {
#if defined(__CUDA_ARCH__)
  return __bfloat162float(__float2bfloat16_rn(x));
#else
  uint32_t u;
  std::memcpy(&u, &x, 4);
  u += 0x7fffu + ((u >> 16) & 1u);
  return as_float(u & 0xffff0000u);
#endif
}

LB_GEMV_HD float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

LB_GEMV_HD float fma_rn(float a, float b, float c) {
#if defined(__CUDA_ARCH__)
  return __fmaf_rn(a, b, c);
#else
  return std::fma(a, b, c);
#endif
}

// 16 bytes: a code plane word of a unit, or 8 bf16 activations.
struct Words4 {
  uint32_t x, y, z, w;
};

LB_GEMV_HD Words4 load_stream(const uint32_t* p) {
#if defined(__CUDA_ARCH__)
  const uint4 v = __ldcs(reinterpret_cast<const uint4*>(p));
  return Words4{v.x, v.y, v.z, v.w};
#else
  return Words4{p[0], p[1], p[2], p[3]};
#endif
}

LB_GEMV_HD Words4 load_cached(const uint16_t* p) {
#if defined(__CUDA_ARCH__)
  const uint4 v = __ldg(reinterpret_cast<const uint4*>(p));
  return Words4{v.x, v.y, v.z, v.w};
#else
  uint32_t w[4];
  std::memcpy(w, p, 16);
  return Words4{w[0], w[1], w[2], w[3]};
#endif
}

LB_GEMV_HD uint32_t load_scale(const uint32_t* p) {
#if defined(__CUDA_ARCH__)
  return __ldg(p);
#else
  return *p;
#endif
}

// The weight of code q under scale word sw (gemv_layout.h's formulas, bit for bit).
template <bool CB>
LB_GEMV_HD float decode(uint32_t q, uint32_t sw, const float* table) {
  if constexpr (CB) {
    return round_bf16(mul_rn(table[q], as_float(sw)));
  } else {
    // scale * (q - zero) is exact in fp32 (8 significant bits times an integer below 2^9).
    return round_bf16(mul_rn(as_float(sw << 16), float(q) - as_float(sw & 0xffff0000u)));
  }
}

// The 4 * BITS code words of unit u of row n (zero for a row past N).
template <int BITS>
LB_GEMV_HD void load_unit(const Params& p, int n, int u, uint32_t (&w)[4 * BITS]) {
  if (n >= p.N) {
    for (int i = 0; i < 4 * BITS; ++i) w[i] = 0u;
    return;
  }
  LB_GEMV_UNROLL
  for (int j = 0; j < BITS; ++j) {
    const Words4 v = load_stream(p.codes + ((int64_t(n) * BITS + j) * p.units + u) * 4);
    w[4 * j] = v.x;
    w[4 * j + 1] = v.y;
    w[4 * j + 2] = v.z;
    w[4 * j + 3] = v.w;
  }
}

// The scale word of the group of column c0 of row n (0 for a row past N).
LB_GEMV_HD uint32_t load_group_scale(const Params& p, int n, int c0) {
  const int g = p.group_shift >= 0 ? c0 >> p.group_shift : c0 / p.group_size;
  return n < p.N ? load_scale(p.scales + int64_t(n) * p.groups + g) : 0u;
}

// group_shift for a group size.
LB_GEMV_HD int group_shift_of(int group_size) {
  for (int s = 0; s < 31; ++s)
    if ((1 << s) == group_size) return s;
  return -1;
}

// Lane `lane`'s sums acc[r][m] (r < ROWS rows of W from n0, m < p.M <= MR rows of x), from 0.
template <int BITS, bool CB, int MR, int ROWS>
LB_GEMV_HD void lane_sums(const Params& p, int n0, int lane, const float* table, float (&acc)[ROWS][MR]) {
  LB_GEMV_UNROLL
  for (int r = 0; r < ROWS; ++r)
    LB_GEMV_UNROLL
    for (int m = 0; m < MR; ++m) acc[r][m] = 0.0f;

  for (int u = lane; u < p.units; u += 32) {
    uint32_t w[ROWS][4 * BITS];
    LB_GEMV_UNROLL
    for (int r = 0; r < ROWS; ++r) load_unit<BITS>(p, n0 + r, u, w[r]);
    LB_GEMV_UNROLL
    for (int run = 0; run < 16; ++run) {  // 8 columns at a time
      const int c0 = int(pack::gemv::run_column(u, run));  // padded K < 2^31 (upload_gemv checks)
      float wf[ROWS][8];
      LB_GEMV_UNROLL
      for (int r = 0; r < ROWS; ++r) {
        const uint32_t sw = load_group_scale(p, n0 + r, c0);
        LB_GEMV_UNROLL
        for (int e = 0; e < 8; ++e) wf[r][e] = decode<CB>(pack::gemv::unit_code(w[r], BITS, 8 * run + e), sw, table);
      }
      LB_GEMV_UNROLL
      for (int m = 0; m < MR; ++m) {
        if (m < p.M) {
          const Words4 xv = load_cached(p.A + int64_t(m) * p.lda + c0);
          const uint32_t xw[4] = {xv.x, xv.y, xv.z, xv.w};
          float x[8];
          LB_GEMV_UNROLL
          for (int e = 0; e < 4; ++e) {
            x[2 * e] = as_float(xw[e] << 16);  // the low half is the even column
            x[2 * e + 1] = as_float(xw[e] & 0xffff0000u);
          }
          LB_GEMV_UNROLL
          for (int r = 0; r < ROWS; ++r)
            LB_GEMV_UNROLL
            for (int e = 0; e < 8; ++e) acc[r][m] = fma_rn(x[e], wf[r][e], acc[r][m]);
        }
      }
    }
  }
}

}  // namespace lowbit::cuda::gemv_lane
