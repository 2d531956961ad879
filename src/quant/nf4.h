// nf4: 4-bit NormalFloat (QLoRA, Dettmers et al. 2023) with the blockwise absmax scaling that
// bitsandbytes implements; data-free.
//
//   - the weight, flattened row-major, is cut into blocks of `blocksize` (64) elements;
//   - absmax = max |w| of the block; each w is normalized as w * (1 / absmax) (bitsandbytes
//     multiplies by the reciprocal) and mapped to the nearest of the 16 NF4 values, ties to the
//     lower one (bitsandbytes' decision tree compares x > midpoint);
//   - double quantization (dq=1, QLoRA's "DQ"): offset = mean(absmax) (accumulated in fp64,
//     rounded to fp32), absmax - offset is quantized blockwise (256 values per block) to 8 bits
//     with bitsandbytes' signed dynamic map, nearest value, ties to the lower; the absmax used
//     for dequantization is then map[code] * absmax2 + offset;
//   - w = NF4[code] * absmax, rounded to the model's 16-bit type.
//
// The dynamic map is bitsandbytes' entry for entry: its fp32 torch.linspace, midpoints and scaling
// are reproduced (tests compare it with create_dynamic_map() and the whole quantization with
// bitsandbytes' quantize_4bit, tests/fixtures/quant/icq.safetensors.zst).
//
//   spec: nf4:dq=0,b=64
#pragma once

#include "quant/quantized_linear.h"

#include <array>

namespace lowbit {

// The 16 NF4 values, ascending, from -1 to 1 (QLoRA, Appendix E).
const std::array<float, 16>& nf4_values();
// bitsandbytes' create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8), ascending.
const std::array<float, 256>& dynamic_map_signed();

// The NF4 code of a value already divided by its block's absmax (the decision tree: the number of
// midpoints it exceeds, so ties go to the lower value).
uint8_t nf4_code(float x);
// One block of n values: codes of x * (1 / absmax), returns absmax = max |x| (all-zero blocks get
// code 7, the value 0).
float nf4_encode_block(const float* x, int64_t n, uint8_t* codes);
// The nearest entry of dynamic_map_signed() to x (ties to the lower index).
uint8_t nearest_dynamic_code(float x);

QuantizedLinear nf4_quantize(const float* w, int64_t rows, int64_t cols, int64_t blocksize, bool double_quant,
                             DType dtype);

}  // namespace lowbit
