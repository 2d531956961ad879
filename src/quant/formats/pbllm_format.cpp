#include "quant/formats/pbllm_format.h"

#include "core/error.h"
#include "core/parallel_find.h"
#include "quant/formats/bit_plane.h"
#include "quant/formats/example_random.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace lowbit {

namespace {

const Tensor& extra(const QuantizedLinear& q, const char* name, const std::string& what) {
  auto it = q.extras.find(name);
  LB_CHECK(it != q.extras.end(), "{}: pbllm weight lacks extras.{}", what, name);
  return it->second;
}

void check_tensor(const Tensor& t, DType dtype, int64_t numel, const std::string& what, const char* name) {
  LB_CHECK(t.dtype() == dtype && t.numel() == numel, "{}: extras.{} is {} {}, expected {} values of {}", what, name,
           dtype_name(t.dtype()), t.shape_str(), numel, dtype_name(dtype));
}

// The binarized weights of row r (its mask bits).
int64_t binarized_in_row(const uint8_t* mask, int64_t cols, int64_t r) {
  int64_t n = 0;
  for (int64_t c = 0; c < cols; ++c) n += plane_bit(mask, cols, r, c) ? 1 : 0;
  return n;
}

}  // namespace

void pbllm_validate(const QuantizedLinear& q, const std::string& what) {
  LB_CHECK(q.rows > 0 && q.cols > 0, "{}: empty weight [{}, {}]", what, q.rows, q.cols);
  LB_CHECK(q.bits == 1, "{}: pbllm signs are 1-bit codes, found {} bits", what, q.bits);
  LB_CHECK(q.group_size > 0 && q.cols % q.group_size == 0, "{}: binarizer group {} does not divide {} columns", what,
           q.group_size, q.cols);
  const int64_t n = q.rows * q.cols, ngroups = q.cols / q.group_size;
  LB_CHECK(int64_t(q.codes.size()) == n, "{}: {} sign codes for a [{}, {}] weight", what, q.codes.size(), q.rows, q.cols);
  LB_CHECK(int64_t(q.scales.size()) == q.rows && int64_t(q.zeros.size()) == q.rows,
           "{}: {} scales and {} zero-points, expected one per row ({})", what, q.scales.size(), q.zeros.size(), q.rows);
  LB_CHECK(q.params.contains("high_bit") && q.params["high_bit"].is_number_integer(),
           "{}: pbllm weight lacks params.high_bit", what);
  const int high_bit = q.params["high_bit"].get<int>();
  LB_CHECK(high_bit >= 2 && high_bit <= 8, "{}: high_bit {} is outside 2..8", what, high_bit);
  const Tensor& mask = extra(q, "mask", what);
  check_tensor(mask, DType::U8, q.rows * plane_row_bytes(q.cols), what, "mask");
  const uint8_t* mbits = mask.data_as<uint8_t>();
  const auto bad_column = [&](int64_t r) -> int64_t {  // the row's first code above its mask's range
    const uint8_t* code = q.codes.data() + r * q.cols;
    for (int64_t c = 0; c < q.cols; ++c)
      if (code[c] > (plane_bit(mbits, q.cols, r, c) ? 1 : 0)) return c;
    return -1;
  };
  if (const int64_t r = first_index_where(q.rows, [&](int64_t row) { return bad_column(row) >= 0; }, q.cols); r >= 0) {
    const int64_t c = bad_column(r);
    fail("{}: sign code {} at ({}, {})", what, q.codes[size_t(r * q.cols + c)], r, c);
  }
  int64_t binarized = 0;
#pragma omp parallel for schedule(static) reduction(+ : binarized)
  for (int64_t r = 0; r < q.rows; ++r) binarized += binarized_in_row(mbits, q.cols, r);
  const Tensor& high = extra(q, "high", what);
  check_tensor(high, DType::U8, n - binarized, what, "high");
  const int maxq = (1 << high_bit) - 1;
  for (int64_t i = 0; i < high.numel(); ++i)
    LB_CHECK(high.data_as<uint8_t>()[i] <= maxq, "{}: salient code {} exceeds {} bits", what, high.data_as<uint8_t>()[i],
             high_bit);
  const Tensor& at = extra(q, "at_mean", what);
  LB_CHECK(at.dtype() == DType::I32 && at.numel() >= 1 && at.numel() == 1 + int64_t(at.data_as<int32_t>()[0]),
           "{}: extras.at_mean is not a count followed by that many indices", what);
  for (int64_t i = 1; i < at.numel(); ++i) {
    const int64_t f = at.data_as<int32_t>()[i];
    LB_CHECK(f >= 0 && f < n && plane_bit(mask.data_as<uint8_t>(), q.cols, f / q.cols, f % q.cols) &&
                 (i == 1 || f > at.data_as<int32_t>()[i - 1]),
             "{}: extras.at_mean entry {} is not an ascending binarized position", what, f);
  }
  for (const char* name : {"mu", "alpha"}) {
    const Tensor& t = extra(q, name, what);
    check_tensor(t, DType::F32, q.rows * ngroups, what, name);
    for (int64_t i = 0; i < t.numel(); ++i) LB_CHECK(std::isfinite(t.data_as<float>()[i]), "{}: non-finite {}", what, name);
  }
  for (float s : q.scales) LB_CHECK(std::isfinite(s) && s > 0.0f, "{}: salient scale {} is not positive", what, s);
}

namespace {

// The planes and parameters of a validated pbllm linear, as its dequantizations read them.
struct PbllmView {
  int64_t ngroups;
  const uint8_t* mask;
  const uint8_t* high;
  const float* mu;
  const float* alpha;
  const int32_t* at;  // at-mean positions, ascending
  int64_t at_n;
  explicit PbllmView(const QuantizedLinear& q)
      : ngroups(q.cols / q.group_size), mask(q.extras.at("mask").data_as<uint8_t>()),
        high(q.extras.at("high").data_as<uint8_t>()), mu(q.extras.at("mu").data_as<float>()),
        alpha(q.extras.at("alpha").data_as<float>()), at(q.extras.at("at_mean").data_as<int32_t>() + 1),
        at_n(q.extras.at("at_mean").numel() - 1) {}
};

// Row r of the weight into out: its salient codes read from high[hi], its at-mean positions from
// at[ai] on, both advanced past the row.
void dequantize_row(const QuantizedLinear& q, const PbllmView& v, int64_t r, int64_t& hi, int64_t& ai, float* out) {
  const float scale = q.scales[size_t(r)], zero = q.zeros[size_t(r)];
  for (int64_t g = 0; g < v.ngroups; ++g) {
    const float a = v.alpha[r * v.ngroups + g], m = v.mu[r * v.ngroups + g];
    for (int64_t c = g * q.group_size; c < (g + 1) * q.group_size; ++c) {
      const int64_t f = r * q.cols + c;
      float w;
      if (plane_bit(v.mask, q.cols, r, c)) {
        float s = q.codes[size_t(f)] != 0 ? 1.0f : -1.0f;
        if (ai < v.at_n && v.at[ai] == f) {
          s = 0.0f;
          ++ai;
        }
        w = s * a + m;
      } else {
        w = scale * (float(v.high[hi++]) - zero);
      }
      out[f] = w;
    }
  }
}

}  // namespace

// Row after row, each row's salient codes and at-mean positions where the previous row's ended.
void pbllm_dequantize(const QuantizedLinear& q, float* out) {
  const PbllmView v(q);
  int64_t hi = 0, ai = 0;
  for (int64_t r = 0; r < q.rows; ++r) dequantize_row(q, v, r, hi, ai, out);
}

// The same rows on all cores, each starting from positions found on its own: its first salient
// code is the count of salient weights in the rows before it (a prefix sum of the mask's row
// counts), its first at-mean entry where the ascending list reaches the row.
void pbllm_dequantize_fast(const QuantizedLinear& q, float* out) {
  const PbllmView v(q);
  std::vector<int64_t> high_start(size_t(q.rows) + 1, 0);
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < q.rows; ++r) high_start[size_t(r) + 1] = q.cols - binarized_in_row(v.mask, q.cols, r);
  for (int64_t r = 0; r < q.rows; ++r) high_start[size_t(r) + 1] += high_start[size_t(r)];
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < q.rows; ++r) {
    int64_t hi = high_start[size_t(r)];
    int64_t ai = std::lower_bound(v.at, v.at + v.at_n, int64_t(r * q.cols)) - v.at;
    dequantize_row(q, v, r, hi, ai, out);
  }
}

double pbllm_bits_per_weight(const QuantizedLinear& q) {
  const double n = double(q.rows) * double(q.cols);
  const double planes = 2.0 * 8.0 * double(q.rows * plane_row_bytes(q.cols));
  const double high = 8.0 * double(q.extras.at("high").numel());
  const double at = 32.0 * double(q.extras.at("at_mean").numel());
  const double params = 2.0 * 32.0 * double(q.extras.at("mu").numel()) + 2.0 * 32.0 * double(q.rows);
  return (planes + high + at + params) / n;
}

namespace {

// About 80% of the weights binarized (groups of 32), the rest on a 4-bit grid; a few binarized
// weights at their mean.
QuantizedLinear pbllm_example(int64_t rows, int64_t cols, uint64_t seed) {
  ExampleRandom rng(seed);
  QuantizedLinear q;
  q.rows = rows;
  q.cols = cols;
  q.format = &kPbllmFormat;
  q.bits = 1;
  q.group_size = 32;
  q.dequant_dtype = DType::BF16;
  q.params["high_bit"] = 4;
  const int64_t n = rows * cols;
  std::vector<uint8_t> mask(static_cast<size_t>(n));
  std::vector<uint8_t> high;
  std::vector<int32_t> at{0};
  q.codes.assign(size_t(n), 0);
  for (int64_t f = 0; f < n; ++f) {
    mask[size_t(f)] = rng.chance(0.8);
    if (mask[size_t(f)]) {
      q.codes[size_t(f)] = uint8_t(rng.below(2));
      if (rng.chance(0.01)) at.push_back(int32_t(f));
    } else {
      high.push_back(uint8_t(rng.below(16)));
    }
  }
  at[0] = int32_t(at.size() - 1);
  q.extras["mask"] = pack_plane(mask, rows, cols);
  Tensor h = Tensor::empty(DType::U8, {int64_t(high.size())});
  std::copy(high.begin(), high.end(), h.mutable_data_as<uint8_t>());
  q.extras["high"] = std::move(h);
  Tensor a = Tensor::empty(DType::I32, {int64_t(at.size())});
  std::copy(at.begin(), at.end(), a.mutable_data_as<int32_t>());
  q.extras["at_mean"] = std::move(a);
  q.extras["mu"] = rng.f32({rows, cols / q.group_size}, -0.01f, 0.01f);
  q.extras["alpha"] = rng.f32({rows, cols / q.group_size}, 0.005f, 0.05f);
  for (int64_t r = 0; r < rows; ++r) {
    q.scales.push_back(rng.uniform(0.005f, 0.05f));
    q.zeros.push_back(float(rng.below(16)));
  }
  return q;
}

}  // namespace

const QuantFormat kPbllmFormat = {"pbllm", 1,
                                  "binarized: sign * alpha[group] + mu[group] (sign 0 at the mean); salient: "
                                  "scale[row] * (code - zero[row])",
                                  pbllm_dequantize, pbllm_bits_per_weight, pbllm_validate, pbllm_dequantize_fast,
                                  pbllm_example};

}  // namespace lowbit
