// Packing of small unsigned integers (codes, zero-points) into int32 words, the storage of
// GPTQ, AWQ and compressed-tensors checkpoints.
//
// Dense packing (GPTQ for 2/3/4/8 bits, compressed-tensors' pack-quantized): each row of n values
// is one little-endian bit stream, value e at bits [e * bits, (e + 1) * bits), cut into int32
// words; a value may straddle two words (3, 5, 6, 7 bits). For 4 bits, word w of a row is
//
//   bit  31..28  27..24  23..20  19..16  15..12  11..8   7..4    3..0
//        v[8w+7] v[8w+6] v[8w+5] v[8w+4] v[8w+3] v[8w+2] v[8w+1] v[8w+0]
//
// Interleaved packing (AutoAWQ's GEMM layout, 4 bits only): word w of a row holds the values
// 8w + order[k] at bits [4k, 4k + 4), order = {0, 2, 4, 6, 1, 3, 5, 7}:
//
//   bit  31..28  27..24  23..20  19..16  15..12  11..8   7..4    3..0
//        v[8w+7] v[8w+5] v[8w+3] v[8w+1] v[8w+6] v[8w+4] v[8w+2] v[8w+0]
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace lowbit {

// values [rows, n] (each < 2^bits, 1 <= bits <= 8) -> words [rows, ceil(n * bits / 32)].
std::vector<int32_t> pack_dense_rows(const std::vector<uint32_t>& values, int64_t rows, int64_t n, int bits);
// values [rows, n], 4 bits, n % 8 == 0 -> words [rows, n / 8] in AWQ's interleaved order.
std::vector<int32_t> pack_awq_rows(const std::vector<uint32_t>& values, int64_t rows, int64_t n);
// The transpose of a row-major [rows, cols] matrix.
template <typename T>
std::vector<T> transpose(const std::vector<T>& m, int64_t rows, int64_t cols) {
  std::vector<T> t(m.size());
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) t[size_t(c * rows + r)] = m[size_t(r * cols + c)];
  return t;
}

}  // namespace lowbit
