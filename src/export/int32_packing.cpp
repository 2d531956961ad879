#include "export/int32_packing.h"

#include "core/error.h"

namespace lowbit {

std::vector<int32_t> pack_dense_rows(const std::vector<uint32_t>& values, int64_t rows, int64_t n, int bits) {
  LB_ASSERT(bits >= 1 && bits <= 8 && int64_t(values.size()) == rows * n);
  const int64_t words = (n * bits + 31) / 32;
  std::vector<uint32_t> out(size_t(rows * words), 0);
  for (int64_t r = 0; r < rows; ++r) {
    uint32_t* row = out.data() + r * words;
    for (int64_t e = 0; e < n; ++e) {
      const uint64_t v = values[size_t(r * n + e)];
      LB_ASSERT(v < (uint64_t(1) << bits));
      const int64_t bit = e * bits;
      // 64-bit shift: the high part is the piece that straddles into the next word.
      const uint64_t shifted = v << (bit % 32);
      row[bit / 32] |= uint32_t(shifted);
      if ((bit % 32) + bits > 32) row[bit / 32 + 1] |= uint32_t(shifted >> 32);
    }
  }
  return std::vector<int32_t>(out.begin(), out.end());
}

std::vector<int32_t> pack_awq_rows(const std::vector<uint32_t>& values, int64_t rows, int64_t n) {
  static constexpr int kOrder[8] = {0, 2, 4, 6, 1, 3, 5, 7};
  LB_ASSERT(n % 8 == 0 && int64_t(values.size()) == rows * n);
  const int64_t words = n / 8;
  std::vector<int32_t> out(size_t(rows * words), 0);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t w = 0; w < words; ++w) {
      uint32_t word = 0;
      for (int k = 0; k < 8; ++k) {
        const uint32_t v = values[size_t(r * n + w * 8 + kOrder[k])];
        LB_ASSERT(v < 16);
        word |= v << (4 * k);
      }
      out[size_t(r * words + w)] = int32_t(word);
    }
  return out;
}

}  // namespace lowbit
