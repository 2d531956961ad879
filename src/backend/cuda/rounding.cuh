// Device twins of core/dtype.h's fp32 -> bf16 / fp16 roundings (round to nearest even), widened
// back to fp32: what a dequantized weight stored as 16 bits holds. For finite values (the
// weights these serve are finite: the formats' validate checks their scales).
#pragma once

#include <cuda_fp16.h>

#include <cstdint>

namespace lowbit::cuda {

// Rounding modes as the kernels take them.
inline constexpr int kRoundNone = 0, kRoundBf16 = 1, kRoundF16 = 2;

__device__ inline float round_bf16(float v) {
  uint32_t u = __float_as_uint(v);
  u += 0x7fffu + ((u >> 16) & 1u);
  return __uint_as_float(u & 0xffff0000u);
}

__device__ inline float round_f16(float v) { return __half2float(__float2half_rn(v)); }

__device__ inline float round_to_mode(float v, int mode) {
  return mode == kRoundBf16 ? round_bf16(v) : mode == kRoundF16 ? round_f16(v) : v;
}

}  // namespace lowbit::cuda
