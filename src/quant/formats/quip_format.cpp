#include "quant/formats/quip_format.h"

#include "core/error.h"
#include "quant/formats/example_random.h"

#include <cblas.h>

#include <cmath>
#include <cstring>

namespace lowbit {

namespace {

inline float h16(float v) { return f16_to_f32(f32_to_f16(v)); }

Tensor i32_tensor(const std::vector<int32_t>& v) {
  Tensor t = Tensor::empty(DType::I32, {int64_t(v.size())});
  std::memcpy(t.mutable_data(), v.data(), v.size() * sizeof(int32_t));
  return t;
}
Tensor f32_tensor(const std::vector<float>& v) {
  Tensor t = Tensor::empty(DType::F32, {int64_t(v.size())});
  std::memcpy(t.mutable_data(), v.data(), v.size() * sizeof(float));
  return t;
}
template <typename T>
std::vector<T> values_of(const Tensor& t, DType dt, const std::string& name) {
  LB_CHECK(t.dtype() == dt && t.ndim() == 1, "quip format: extra '{}' has the wrong type or rank", name);
  return std::vector<T>(t.data_as<T>(), t.data_as<T>() + t.numel());
}

}  // namespace

float quip_grid_value(uint8_t code, float scale, int maxq) {
  const float g = (float(code) / float(maxq)) * 2.0f - 1.0f;
  return h16(g * scale);
}

void quip_store_transform(QuantizedLinear& q, const std::vector<float>* s, const Butterfly* u, const Butterfly* v) {
  if (s) q.extras["s"] = f32_tensor(*s);
  for (const auto& [name, b] : {std::pair{std::string("u"), u}, std::pair{std::string("v"), v}}) {
    if (!b) continue;
    if (b->seed) {
      q.params[name + "_seed"] = *b->seed;
      continue;
    }
    q.extras[name + "_perm_in"] = i32_tensor(b->perm_in);
    q.extras[name + "_perm_out"] = i32_tensor(b->perm_out);
    q.extras[name + "_blocks0"] = f32_tensor(b->blocks[0]);
    q.extras[name + "_blocks1"] = f32_tensor(b->blocks[1]);
  }
}

std::optional<Butterfly> quip_stored_butterfly(const QuantizedLinear& q, const std::string& which) {
  const int64_t n = which == "u" ? q.rows : q.cols;
  if (q.params.contains(which + "_seed")) {
    const auto& s = q.params.at(which + "_seed");
    LB_CHECK(s.is_number_unsigned() || (s.is_number_integer() && s.get<int64_t>() >= 0),
             "quip format: params '{}_seed' must be a non-negative integer", which);
    return quip_random_butterfly(n, s.get<uint64_t>());
  }
  if (!q.extras.count(which + "_perm_in")) return std::nullopt;
  for (const char* part : {"_perm_out", "_blocks0", "_blocks1"})
    LB_CHECK(q.extras.count(which + part), "quip format: extra '{}{}' is missing", which, part);
  Butterfly b;
  b.n = n;
  const auto [p0, p1] = quip_butterfly_factors(n);
  b.p = {p0, p1};
  b.perm_in = values_of<int32_t>(q.extras.at(which + "_perm_in"), DType::I32, which + "_perm_in");
  b.perm_out = values_of<int32_t>(q.extras.at(which + "_perm_out"), DType::I32, which + "_perm_out");
  b.blocks[0] = values_of<float>(q.extras.at(which + "_blocks0"), DType::F32, which + "_blocks0");
  b.blocks[1] = values_of<float>(q.extras.at(which + "_blocks1"), DType::F32, which + "_blocks1");
  for (int f = 0; f < 2; ++f)
    LB_CHECK(int64_t(b.blocks[size_t(f)].size()) == n * b.p[size_t(f)], "quip format: extra '{}_blocks{}' holds {} values, "
             "expected {} ({} x {} x {})", which, f, b.blocks[size_t(f)].size(), n * b.p[size_t(f)], n / b.p[size_t(f)],
             b.p[size_t(f)], b.p[size_t(f)]);
  LB_CHECK(int64_t(b.perm_in.size()) == n && int64_t(b.perm_out.size()) == n,
           "quip format: extras '{0}_perm_in' and '{0}_perm_out' hold {1} and {2} entries for dimension {3}", which,
           b.perm_in.size(), b.perm_out.size(), n);
  quip_check_butterfly(b, n, "quip format " + which);
  return b;
}

void quip_dequantize(const QuantizedLinear& q, float* out) {
  const int64_t rows = q.rows, cols = q.cols;
  const int maxq = (1 << q.bits) - 1;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < rows * cols; ++i) out[i] = quip_grid_value(q.codes[size_t(i)], q.scales[0], maxq);
  const auto u = quip_stored_butterfly(q, "u"), v = quip_stored_butterfly(q, "v");
  LB_CHECK(u.has_value() == v.has_value(), "quip format: U and V must be both present or both absent");
  if (u) {
    const std::vector<float> U = quip_butterfly_dense(*u), V = quip_butterfly_dense(*v);
    std::vector<float> t(size_t(rows * cols));
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, blasint(rows), blasint(cols), blasint(rows), 1.0f, U.data(),
                blasint(rows), out, blasint(cols), 0.0f, t.data(), blasint(cols));  // U^T Wq
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, blasint(rows), blasint(cols), blasint(cols), 1.0f, t.data(),
                blasint(cols), V.data(), blasint(cols), 0.0f, out, blasint(cols));  // (U^T Wq) V
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < rows * cols; ++i) out[i] = h16(out[i]);
  }
  if (auto it = q.extras.find("s"); it != q.extras.end()) {
    const float* s = it->second.data_as<float>();
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) out[r * cols + c] = h16(out[r * cols + c] / s[c]);
  }
}

double quip_bits_per_weight(const QuantizedLinear& q) {
  const double n = double(q.rows) * double(q.cols);
  double extra = 16.0;  // the scale
  for (const auto& [name, t] : q.extras) extra += 8.0 * double(t.nbytes());
  extra += 64.0 * double(q.params.contains("u_seed") + q.params.contains("v_seed"));
  return double(q.bits) + extra / n;
}

void quip_validate(const QuantizedLinear& q, const std::string& what) {
  LB_CHECK(q.rows > 0 && q.cols > 0, "{}: empty weight [{}, {}]", what, q.rows, q.cols);
  LB_CHECK(q.bits >= 2 && q.bits <= 4, "{}: quip codes of {} bits (supported: 2, 3, 4)", what, q.bits);
  LB_CHECK(int64_t(q.codes.size()) == q.rows * q.cols, "{}: {} codes for a [{}, {}] weight", what, q.codes.size(),
           q.rows, q.cols);
  LB_CHECK(q.scales.size() == 1 && std::isfinite(q.scales[0]) && q.scales[0] > 0,
           "{}: quip needs one positive scale per matrix ({} scales given)", what, q.scales.size());
  const int maxq = (1 << q.bits) - 1;
  for (uint8_t c : q.codes) LB_CHECK(c <= maxq, "{}: code {} exceeds {} bits", what, c, q.bits);
  if (auto it = q.extras.find("s"); it != q.extras.end()) {
    LB_CHECK(it->second.dtype() == DType::F32 && it->second.numel() == q.cols, "{}: rescaling 's' must be F32 [{}]",
             what, q.cols);
    const float* s = it->second.data_as<float>();
    for (int64_t c = 0; c < q.cols; ++c) LB_CHECK(std::isfinite(s[c]) && s[c] > 0, "{}: rescaling s[{}] = {}", what, c, s[c]);
  }
  const bool hu = q.params.contains("u_seed") || q.extras.count("u_perm_in");
  const bool hv = q.params.contains("v_seed") || q.extras.count("v_perm_in");
  LB_CHECK(hu == hv, "{}: quip needs both rotations U and V or neither", what);
  if (hu) quip_check_dimension(q.rows, what + " U");
  if (hv) quip_check_dimension(q.cols, what + " V");
  for (const char* which : {"u", "v"}) {
    if (!q.extras.count(std::string(which) + "_perm_in")) continue;
    try {
      quip_stored_butterfly(q, which);
    } catch (const Error& e) {
      fail("{}: {}", what, e.what());
    }
  }
}

namespace {

// 2 to 4 bits with a rescaling s, U stored explicitly (extras) and V by its seed (params), so
// that both ways of storing a rotation are exercised.
QuantizedLinear quip_example(int64_t rows, int64_t cols, uint64_t seed) {
  ExampleRandom rng(seed);
  QuantizedLinear q;
  q.rows = rows;
  q.cols = cols;
  q.format = &kQuipFormat;
  q.bits = 2 + int(rng.below(3));
  q.group_size = cols;
  q.dequant_dtype = DType::BF16;
  q.codes = rng.codes(rows * cols, q.bits);
  q.scales = {h16(rng.uniform(0.02f, 0.2f))};
  std::vector<float> s(static_cast<size_t>(cols));
  for (auto& v : s) v = rng.uniform(0.5f, 2.0f);
  Butterfly u = quip_random_butterfly(rows, rng.next() >> 1);
  u.seed.reset();
  const Butterfly v = quip_random_butterfly(cols, rng.next() >> 1);
  quip_store_transform(q, &s, &u, &v);
  return q;
}

}  // namespace

const QuantFormat kQuipFormat = {"quip", 1, "w = fp16(fp16(U^T fp16((2 code / maxq - 1) * scale) V) / s)",
                                 quip_dequantize, quip_bits_per_weight, quip_validate, nullptr, quip_example};

}  // namespace lowbit
