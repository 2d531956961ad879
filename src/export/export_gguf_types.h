// lowbit int grids as ggml blocks (formats/ggml_quants.h draws their bytes): the choice of the
// ggml type that holds a linear's codes and the packing. gguf_export.cpp says which map exactly.
#pragma once

#include "quant/quantized_linear.h"

#include <cstdint>
#include <string>
#include <vector>

namespace lowbit {

// Empty when `q` (an int grid, int_grid_problem() empty) fits Q8_0, Q4_0 or Q4_1; else why not.
std::string gguf_block_problem(const QuantizedLinear& q);

struct GgufBlocks {
  uint32_t type = 0;           // ggml type id
  std::vector<uint8_t> bytes;  // rows * cols / 32 blocks, row-major
};
GgufBlocks pack_gguf_blocks(const QuantizedLinear& q);

}  // namespace lowbit
