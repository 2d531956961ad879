#include "quant/formats/slim_format.h"

#include "core/error.h"
#include "core/parallel_find.h"
#include "quant/formats/example_random.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace lowbit {

std::vector<int> slim_group_bits(const QuantizedLinear& q) {
  auto it = q.extras.find("group_bits");
  LB_CHECK(it != q.extras.end(), "slim format: the group bit-width table (extra 'group_bits') is missing");
  const Tensor& t = it->second;
  LB_CHECK(t.dtype() == DType::I8 && t.ndim() == 1, "slim format: extra 'group_bits' must be a 1-d I8 tensor");
  std::vector<int> out(size_t(t.numel()));
  for (int64_t i = 0; i < t.numel(); ++i) out[size_t(i)] = t.data_as<int8_t>()[i];
  return out;
}

void slim_set_group_bits(QuantizedLinear& q, const std::vector<int>& bits) {
  Tensor t = Tensor::empty(DType::I8, {int64_t(bits.size())});
  for (size_t i = 0; i < bits.size(); ++i) t.mutable_data_as<int8_t>()[i] = int8_t(bits[i]);
  q.extras["group_bits"] = std::move(t);
}

void slim_dequantize(const QuantizedLinear& q, float* out) {
  const std::vector<int> gb = slim_group_bits(q);
  const int64_t ng = q.groups_per_row();
  for (int64_t r = 0; r < q.rows; ++r)
    for (int64_t c = 0; c < q.cols; ++c) {
      const int64_t g = c / q.group_size, s = r * ng + g;
      const uint8_t code = q.codes[size_t(r * q.cols + c)];
      float v;
      if (gb[size_t(g)] == 1) {
        // The reference's order: sign(w - mu) * alpha, then + mu.
        const float sign = code == 1 ? 1.0f : code == 0 ? -1.0f : 0.0f;
        v = sign * q.scales[size_t(s)] + q.zeros[size_t(s)];
      } else {
        v = q.scales[size_t(s)] * (float(code) - q.zeros[size_t(s)]);
      }
      out[r * q.cols + c] = v;
    }
}

// The same values, rows on all cores, each group's width, scale and zero-point read once.
void slim_dequantize_fast(const QuantizedLinear& q, float* out) {
  const std::vector<int> gb = slim_group_bits(q);
  const int64_t ng = q.groups_per_row();
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < q.rows; ++r) {
    const uint8_t* code = q.codes.data() + r * q.cols;
    float* o = out + r * q.cols;
    for (int64_t g = 0; g < ng; ++g) {
      const int64_t c0 = g * q.group_size, c1 = std::min(q.cols, c0 + q.group_size);
      const float scale = q.scales[size_t(r * ng + g)], zero = q.zeros[size_t(r * ng + g)];
      if (gb[size_t(g)] == 1) {
        for (int64_t c = c0; c < c1; ++c) {
          const float sign = code[c] == 1 ? 1.0f : code[c] == 0 ? -1.0f : 0.0f;
          o[c] = sign * scale + zero;
        }
      } else {
        for (int64_t c = c0; c < c1; ++c) o[c] = scale * (float(code[c]) - zero);
      }
    }
  }
}

double slim_bits_per_weight(const QuantizedLinear& q) {
  const std::vector<int> gb = slim_group_bits(q);
  double total = 8.0 * double(gb.size());
  for (size_t g = 0; g < gb.size(); ++g) {
    const int64_t c0 = int64_t(g) * q.group_size, n = std::min(q.cols, c0 + q.group_size) - c0;
    total += double(q.rows) * (double(gb[g]) * double(n) + 16.0 + (gb[g] == 1 ? 16.0 : double(gb[g])));
  }
  return total / (double(q.rows) * double(q.cols));
}

void slim_validate(const QuantizedLinear& q, const std::string& what) {
  LB_CHECK(q.rows > 0 && q.cols > 0, "{}: empty weight [{}, {}]", what, q.rows, q.cols);
  LB_CHECK(q.group_size > 0 && !q.flat_groups && q.g_idx.empty(), "{}: slim format needs per-row groups of a positive size",
           what);
  LB_CHECK(q.bits >= 2 && q.bits <= 8, "{}: slim code width {} is outside 2..8", what, q.bits);
  const int64_t ng = q.groups_per_row();
  LB_CHECK(int64_t(q.codes.size()) == q.rows * q.cols, "{}: {} codes for a [{}, {}] weight", what, q.codes.size(),
           q.rows, q.cols);
  LB_CHECK(int64_t(q.scales.size()) == q.rows * ng && int64_t(q.zeros.size()) == q.rows * ng,
           "{}: {} scales and {} zero-points, expected {} each", what, q.scales.size(), q.zeros.size(), q.rows * ng);
  const std::vector<int> gb = slim_group_bits(q);
  LB_CHECK(int64_t(gb.size()) == ng, "{}: group bit-width table (extra group_bits) has {} entries for {} groups", what, gb.size(), ng);
  for (size_t g = 0; g < gb.size(); ++g)
    LB_CHECK(gb[g] >= 1 && gb[g] <= q.bits, "{}: group {} has {} bits, outside 1..{}", what, g, gb[g], q.bits);
  std::vector<int> maxc(gb.size());  // a 1-bit group's codes: 0, 1 and 2 (at the mean)
  for (size_t g = 0; g < gb.size(); ++g) maxc[g] = gb[g] == 1 ? 2 : (1 << gb[g]) - 1;
  const auto bad_column = [&](int64_t r) -> int64_t {  // the row's first code out of its group's range
    const uint8_t* code = q.codes.data() + r * q.cols;
    for (int64_t g = 0; g < ng; ++g)
      for (int64_t c = g * q.group_size; c < std::min(q.cols, (g + 1) * q.group_size); ++c)
        if (int(code[c]) > maxc[size_t(g)]) return c;
    return -1;
  };
  const int64_t r = first_index_where(q.rows, [&](int64_t row) { return bad_column(row) >= 0; }, q.cols);
  if (r >= 0) {
    const int64_t c = bad_column(r);
    fail("{}: code {} at [{}, {}] exceeds its {}-bit group's range", what, q.codes[size_t(r * q.cols + c)], r, c,
         gb[size_t(c / q.group_size)]);
  }
  for (float s : q.scales) LB_CHECK(std::isfinite(s), "{}: non-finite scale", what);
  for (float z : q.zeros) LB_CHECK(std::isfinite(z), "{}: non-finite zero-point", what);
}

namespace {

// 3-bit storage, groups of 32 at 1, 2 or 3 bits; binary groups hold some weights at their mean
// (code 2).
QuantizedLinear slim_example(int64_t rows, int64_t cols, uint64_t seed) {
  ExampleRandom rng(seed);
  QuantizedLinear q;
  q.rows = rows;
  q.cols = cols;
  q.format = &kSlimFormat;
  q.bits = 3;
  q.group_size = 32;
  q.dequant_dtype = DType::BF16;
  const int64_t ng = q.groups_per_row();
  std::vector<int> gb(static_cast<size_t>(ng));
  for (auto& b : gb) b = 1 + int(rng.below(3));
  slim_set_group_bits(q, gb);
  q.codes.resize(size_t(rows * cols));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) {
      const int b = gb[size_t(c / q.group_size)];
      q.codes[size_t(r * cols + c)] = uint8_t(rng.below(b == 1 ? 3 : int64_t(1) << b));
    }
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t g = 0; g < ng; ++g) {
      const int b = gb[size_t(g)];
      q.scales.push_back(rng.uniform(0.005f, 0.05f));
      q.zeros.push_back(b == 1 ? rng.uniform(-0.01f, 0.01f) : float(rng.below(int64_t(1) << b)));
    }
  return q;
}

}  // namespace

const QuantFormat kSlimFormat = {"slim", 1,
                                 "w = scale[group] * (code - zero[group]) at the group's width; 1-bit groups "
                                 "sign * alpha + mu",
                                 slim_dequantize, slim_bits_per_weight, slim_validate, slim_dequantize_fast,
                                 slim_example};

}  // namespace lowbit
