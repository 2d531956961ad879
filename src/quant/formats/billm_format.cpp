#include "quant/formats/billm_format.h"

#include "core/error.h"
#include "core/parallel_find.h"
#include "quant/formats/bit_plane.h"
#include "quant/formats/example_random.h"

#include <algorithm>
#include <cmath>

// Built with -ffp-contract=off (src/CMakeLists.txt): the values must match the reference's
// separately rounded products and sums.

namespace lowbit {

namespace {

const Tensor& extra(const QuantizedLinear& q, const char* name, const std::string& what) {
  auto it = q.extras.find(name);
  LB_CHECK(it != q.extras.end(), "{}: billm weight lacks extras.{}", what, name);
  return it->second;
}

int64_t salient_count(const QuantizedLinear& q) {
  const uint8_t* sal = q.extras.at("salient").data_as<uint8_t>();
  int64_t n = 0;
  for (int64_t c = 0; c < q.cols; ++c) n += plane_bit(sal, q.cols, 0, c);
  return n;
}

}  // namespace

void billm_validate(const QuantizedLinear& q, const std::string& what) {
  LB_CHECK(q.rows > 0 && q.cols > 0, "{}: empty weight [{}, {}]", what, q.rows, q.cols);
  LB_CHECK(q.bits == 1, "{}: billm signs are 1-bit codes, found {} bits", what, q.bits);
  LB_CHECK(q.group_size > 0 && q.cols % q.group_size == 0, "{}: block {} does not divide {} columns", what,
           q.group_size, q.cols);
  LB_CHECK(int64_t(q.codes.size()) == q.rows * q.cols, "{}: {} sign codes for a [{}, {}] weight", what, q.codes.size(),
           q.rows, q.cols);
  const int64_t bad = first_index_where(int64_t(q.codes.size()), [&](int64_t i) { return q.codes[size_t(i)] > 1; });
  LB_CHECK(bad < 0, "{}: sign code {} at weight {}", what, bad < 0 ? 0 : q.codes[size_t(bad)], bad);
  const Tensor& sal = extra(q, "salient", what);
  LB_CHECK(sal.dtype() == DType::U8 && sal.numel() == plane_row_bytes(q.cols), "{}: extras.salient is {} {}", what,
           dtype_name(sal.dtype()), sal.shape_str());
  const int64_t nsal = salient_count(q);
  const Tensor& grp = extra(q, "group", what);
  LB_CHECK(grp.dtype() == DType::U8 && grp.numel() == q.rows * plane_row_bytes(q.cols), "{}: extras.group is {} {}",
           what, dtype_name(grp.dtype()), grp.shape_str());
  const Tensor& s2 = extra(q, "sign2", what);
  LB_CHECK(s2.dtype() == DType::U8 && s2.numel() == q.rows * plane_row_bytes(nsal),
           "{}: extras.sign2 is {} {} for {} salient columns", what, dtype_name(s2.dtype()), s2.shape_str(), nsal);
  const int64_t nblk = q.cols / q.group_size;
  const Tensor& p = extra(q, "params", what);
  LB_CHECK(p.dtype() == DType::F32 && p.numel() == q.rows * nblk * 8, "{}: extras.params is {} {}, expected F32 [{}, {}, 8]",
           what, dtype_name(p.dtype()), p.shape_str(), q.rows, nblk);
  for (int64_t i = 0; i < p.numel(); ++i) LB_CHECK(std::isfinite(p.data_as<float>()[i]), "{}: non-finite parameter", what);
  const Tensor& at = extra(q, "at_mean", what);
  LB_CHECK(at.dtype() == DType::I32 && at.numel() >= 1 && at.numel() == 1 + int64_t(at.data_as<int32_t>()[0]),
           "{}: extras.at_mean is not a count followed by that many entries", what);
  for (int64_t i = 1; i < at.numel(); ++i) {
    const int64_t e = at.data_as<int32_t>()[i], f = e / 2;
    LB_CHECK(e >= 0 && f < q.rows * q.cols && (i == 1 || e > at.data_as<int32_t>()[i - 1]) &&
                 (e % 2 == 0 || plane_bit(sal.data_as<uint8_t>(), q.cols, 0, f % q.cols)),
             "{}: extras.at_mean entry {} is not an ascending (weight, order) pair", what, e);
  }
}

void billm_dequantize(const QuantizedLinear& q, float* out) {
  const int64_t nblk = q.cols / q.group_size;
  const uint8_t* sal = q.extras.at("salient").data_as<uint8_t>();
  const uint8_t* grp = q.extras.at("group").data_as<uint8_t>();
  const uint8_t* s2 = q.extras.at("sign2").data_as<uint8_t>();
  const float* prm = q.extras.at("params").data_as<float>();
  const Tensor& at = q.extras.at("at_mean");
  const int32_t* at_e = at.data_as<int32_t>() + 1;
  const int64_t at_n = at.numel() - 1;
  const int64_t nsal = salient_count(q);
  // Rows on all cores: each row's at-mean entries start where the ascending list reaches the row.
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < q.rows; ++r) {
    int64_t ai = std::lower_bound(at_e, at_e + at_n, int64_t(2 * r * q.cols)) - at_e;
    auto sign = [&](bool positive, int64_t entry) {
      if (ai < at_n && at_e[ai] == entry) {
        ++ai;
        return 0.0f;
      }
      return positive ? 1.0f : -1.0f;
    };
    int64_t si = 0;  // salient column index within the row's sign2 plane
    for (int64_t c = 0; c < q.cols; ++c) {
      const int64_t f = r * q.cols + c;
      const float* pp = prm + (r * nblk + c / q.group_size) * 8;
      const float s = sign(q.codes[size_t(f)] != 0, 2 * f);
      float v;
      if (plane_bit(sal, q.cols, 0, c)) {
        const float b1 = s * pp[5] + pp[4];
        const float t = sign(plane_bit(s2, nsal, r, si++), 2 * f + 1);
        const float b2 = t * pp[7] + pp[6];
        v = (b1 + 0.0f) + b2;
      } else if (plane_bit(grp, q.cols, r, c)) {
        v = s * pp[3] + pp[2];
      } else {
        v = s * pp[1] + pp[0];
      }
      out[f] = v + 0.0f;
    }
  }
}

double billm_bits_per_weight(const QuantizedLinear& q) {
  const double n = double(q.rows) * double(q.cols);
  double bits = 2.0 * 8.0 * double(q.rows * plane_row_bytes(q.cols));  // signs and groups
  bits += 8.0 * double(q.extras.at("sign2").numel()) + 8.0 * double(q.extras.at("salient").numel());
  bits += 32.0 * double(q.extras.at("at_mean").numel()) + 32.0 * double(q.extras.at("params").numel());
  return bits / n;
}

namespace {

// Blocks of 32 columns, about 10% of the columns salient, the other weights split between the
// two saliency groups; a few binarizations (of either order) at their mean.
QuantizedLinear billm_example(int64_t rows, int64_t cols, uint64_t seed) {
  ExampleRandom rng(seed);
  QuantizedLinear q;
  q.rows = rows;
  q.cols = cols;
  q.format = &kBillmFormat;
  q.bits = 1;
  q.group_size = 32;
  q.dequant_dtype = DType::BF16;
  std::vector<uint8_t> sal(static_cast<size_t>(cols));
  for (auto& s : sal) s = rng.chance(0.1);
  int64_t nsal = 0;
  for (uint8_t s : sal) nsal += s;
  std::vector<uint8_t> grp(size_t(rows * cols), 0), sign2(size_t(rows * nsal));
  std::vector<int32_t> at{0};
  q.codes = rng.codes(rows * cols, 1);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) {
      const int64_t f = r * cols + c;
      if (!sal[size_t(c)]) grp[size_t(f)] = uint8_t(rng.below(2));
      for (int o = 0; o < (sal[size_t(c)] ? 2 : 1); ++o)
        if (rng.chance(0.01)) at.push_back(int32_t(2 * f + o));
    }
  for (auto& s : sign2) s = uint8_t(rng.below(2));
  at[0] = int32_t(at.size() - 1);
  q.extras["salient"] = pack_plane(sal, 1, cols);
  q.extras["group"] = pack_plane(grp, rows, cols);
  q.extras["sign2"] = pack_plane(sign2, rows, nsal);
  Tensor a = Tensor::empty(DType::I32, {int64_t(at.size())});
  std::copy(at.begin(), at.end(), a.mutable_data_as<int32_t>());
  q.extras["at_mean"] = std::move(a);
  Tensor p = rng.f32({rows, cols / q.group_size, 8}, 0.005f, 0.05f);
  for (int64_t i = 0; i < p.numel(); i += 2) p.mutable_data_as<float>()[i] -= 0.03f;  // the means (mu) either sign
  q.extras["params"] = std::move(p);
  return q;
}

}  // namespace

const QuantFormat kBillmFormat = {"billm", 1,
                                  "per block: sign * alpha + mu in two saliency groups; salient columns: two "
                                  "binarizations (weight and residual) summed",
                                  billm_dequantize, billm_bits_per_weight, billm_validate, nullptr, billm_example};

}  // namespace lowbit
