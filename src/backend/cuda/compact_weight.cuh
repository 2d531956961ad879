// The GPU expansion of a compact frozen weight (train/compact_base.h's layout) into fp32 (or bf16), for
// LoRA training over a quantized or 16-bit base: each linear is expanded into one reusable fp32
// scratch right before it is used, forward and backward, so the GPU holds the codes and scales
// instead of 4 bytes a weight.
//
//   kind Half16    w[i] = widen(half[i])                                   (exact)
//   kind Int       w[i] = round(scale[s] * (code[i] - zero[s]))
//   kind Codebook  w[i] = round(codebook[code[i]] * scale[s] (+ tau[i / group_size]))
//
// with i, s, the nibble order of the codes and round() as train/compact_base.h draws them. Every
// product and sum is an explicitly rounded fp32 operation (__fmul_rn, __fadd_rn, __fsub_rn: nvcc
// would otherwise fuse a product and a sum into one FMA), so the result equals the CPU twin
// (train::expand_compact_linear) and the formats' dequantization bit for bit.
#pragma once

#include "backend/cuda/cuda_util.h"

#include <cstdint>

namespace lowbit::cuda {

// Device pointers and sizes of one compact weight [rows, cols]; null where the kind has none.
struct CompactWeightView {
  enum Kind : int { kHalf16 = 1, kInt = 2, kCodebook = 3 };
  int kind = kCodebook;
  int64_t rows = 0, cols = 0;
  const uint16_t* half = nullptr;  // Half16: [rows * cols] bit patterns
  bool half_is_bf16 = true;        // else IEEE fp16
  const uint8_t* codes = nullptr;  // Int / Codebook: nibbles (code_bits 4) or bytes (8)
  int code_bits = 4;
  const float* scales = nullptr;    // [scale groups]
  const float* zeros = nullptr;     // Int: [scale groups]
  const float* codebook = nullptr;  // Codebook: [2^bits]
  const float* tau = nullptr;       // Codebook: [rows * cols / group_size] or null
  const int32_t* g_idx = nullptr;   // [cols] or null
  int64_t group_size = 1;
  bool flat_groups = true;
  int round_to = 0;  // 0: none (fp32), 1: bf16, 2: fp16 (round to nearest even)
};

// out [rows, cols] (fp32) = the expanded weight.
void expand_compact_weight(const CompactWeightView& w, float* out, cudaStream_t s);
// out [rows, cols] (bf16 bit patterns) = the expanded fp32 weight rounded to bf16 (to nearest
// even: core/dtype.h's f32_to_bf16 of expand_compact_weight's value, bit for bit), for the bf16
// training mode (train/compute_precision.h). Exact for a base whose dequantized weights are
// rounded to bf16 already (round_to bf16, or Half16 holding bf16).
void expand_compact_weight_bf16(const CompactWeightView& w, uint16_t* out, cudaStream_t s);

}  // namespace lowbit::cuda
