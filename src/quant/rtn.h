// rtn: round-to-nearest onto GPTQ's min-max affine grid (affine_grid.h), per output channel
// (group_size = -1) or per group of group_size input columns (the last group of a row holds the
// remaining columns when group_size does not divide cols); data-free.
//
//   spec: rtn:w=4,g=128,sym=0
#pragma once

#include "quant/quantized_linear.h"

namespace lowbit {

// w: [rows, cols] row-major fp32. dtype: the precision of the dequantized weight.
QuantizedLinear rtn_quantize(const float* w, int64_t rows, int64_t cols, int bits, int64_t group_size, bool sym,
                             DType dtype);

}  // namespace lowbit
