// Bit planes of the binarized formats: one bit per element of a [rows, cols] matrix, each row
// padded to whole bytes, least significant bit first:
//
//   byte r * plane_row_bytes(cols) + c / 8:   bit 7  bit 6  ...  bit 1  bit 0
//                                             c0+7   c0+6        c0+1   c0      (c0 = c & ~7)
//
// Stored as a U8 tensor [rows, plane_row_bytes(cols)] (a column plane is one row).
#pragma once

#include "core/tensor.h"

#include <cstdint>
#include <vector>

namespace lowbit {

inline int64_t plane_row_bytes(int64_t cols) { return (cols + 7) / 8; }

// Packs bits[r * cols + c] != 0 into a plane.
inline Tensor pack_plane(const std::vector<uint8_t>& bits, int64_t rows, int64_t cols) {
  const int64_t rb = plane_row_bytes(cols);
  Tensor t = Tensor::empty(DType::U8, {rows, rb});
  uint8_t* p = t.mutable_data_as<uint8_t>();
  // Each row writes only its own bytes.
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c)
      if (bits[size_t(r * cols + c)] != 0) p[r * rb + c / 8] |= uint8_t(1u << (c % 8));
  return t;
}

inline bool plane_bit(const uint8_t* plane, int64_t cols, int64_t r, int64_t c) {
  return ((plane[r * plane_row_bytes(cols) + c / 8] >> (c % 8)) & 1u) != 0;
}

}  // namespace lowbit
