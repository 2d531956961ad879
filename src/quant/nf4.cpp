#include "quant/nf4.h"

#include "core/error.h"
#include "quant/method.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace lowbit {

const std::array<float, 16>& nf4_values() {
  static const std::array<float, 16> v = {
      -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f, -0.28444138169288635f,
      -0.18477343022823334f, -0.09105003625154495f, 0.0f, 0.07958029955625534f, 0.16093020141124725f,
      0.24611230194568634f, 0.33791524171829224f, 0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f,
      1.0f};
  return v;
}

const std::array<float, 256>& dynamic_map_signed() {
  static const std::array<float, 256> m = [] {
    // Exponents 10^-6 .. 10^0; at exponent i, 2^i fraction values: the midpoints of
    // linspace(0.1, 1, 2^i + 1); each with both signs; then 0 and 1.
    std::vector<double> data;
    for (int i = 0; i < 7; ++i) {
      const int items = (1 << i) + 1;
      const double scale = std::pow(10.0, double(-6 + i));
      for (int j = 0; j + 1 < items; ++j) {
        const double b0 = 0.1 + 0.9 * double(j) / double(items - 1);
        const double b1 = 0.1 + 0.9 * double(j + 1) / double(items - 1);
        const double mean = (b0 + b1) / 2.0;
        data.push_back(scale * mean);
        data.push_back(-scale * mean);
      }
    }
    data.push_back(0.0);
    data.push_back(1.0);
    LB_ASSERT(data.size() == 256);
    std::sort(data.begin(), data.end());
    std::array<float, 256> out{};
    for (size_t i = 0; i < 256; ++i) out[i] = float(data[i]);
    return out;
  }();
  return m;
}

namespace {

// Midpoints between consecutive NF4 values (computed in fp64 from the values, then fp32).
const std::array<float, 15>& nf4_thresholds() {
  static const std::array<float, 15> t = [] {
    std::array<float, 15> out{};
    const auto& v = nf4_values();
    for (size_t i = 0; i < 15; ++i) out[i] = float((double(v[i]) + double(v[i + 1])) / 2.0);
    return out;
  }();
  return t;
}

inline uint8_t nf4_code(float x) {
  const auto& t = nf4_thresholds();
  uint8_t c = 0;
  for (float th : t) c += x > th ? 1 : 0;
  return c;
}

// Nearest entry of an ascending table, ties to the lower index.
uint8_t nearest_index(const std::array<float, 256>& table, float x) {
  auto it = std::lower_bound(table.begin(), table.end(), x);
  if (it == table.begin()) return 0;
  if (it == table.end()) return 255;
  const size_t hi = size_t(it - table.begin()), lo = hi - 1;
  return (x - table[lo]) <= (table[hi] - x) ? uint8_t(lo) : uint8_t(hi);
}

}  // namespace

QuantizedLinear nf4_quantize(const float* w, int64_t rows, int64_t cols, int64_t blocksize, bool double_quant,
                             DType dtype) {
  QuantizedLinear q;
  q.rows = rows;
  q.cols = cols;
  q.format = &kCodebookFormat;
  q.bits = 4;
  q.group_size = blocksize;
  q.flat_groups = true;
  q.dequant_dtype = dtype;
  q.codebook.assign(nf4_values().begin(), nf4_values().end());
  const int64_t n = rows * cols, nb = (n + blocksize - 1) / blocksize;
  std::vector<float> absmax(static_cast<size_t>(nb));
  q.codes.resize(size_t(n));
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t i0 = b * blocksize, i1 = std::min(n, i0 + blocksize);
    float m = 0.0f;
    for (int64_t i = i0; i < i1; ++i) m = std::max(m, std::fabs(w[i]));
    absmax[size_t(b)] = m;
    const float inv = m > 0.0f ? 1.0f / m : 0.0f;
    for (int64_t i = i0; i < i1; ++i) q.codes[size_t(i)] = m > 0.0f ? nf4_code(w[i] * inv) : uint8_t(7);
  }
  if (!double_quant) {
    q.scales = std::move(absmax);
    q.scale_storage_bits = 32.0;  // bitsandbytes keeps absmax in fp32
    return q;
  }
  double sum = 0;
  for (float a : absmax) sum += a;
  const float offset = float(sum / double(nb));
  constexpr int64_t kBlock2 = 256;
  const int64_t nb2 = (nb + kBlock2 - 1) / kBlock2;
  Tensor codes2 = Tensor::empty(DType::U8, {nb});
  Tensor absmax2 = Tensor::empty(DType::F32, {nb2});
  Tensor offset_t = Tensor::empty(DType::F32, {1});
  offset_t.mutable_data_as<float>()[0] = offset;
  const auto& map = dynamic_map_signed();
  q.scales.resize(size_t(nb));
  for (int64_t b2 = 0; b2 < nb2; ++b2) {
    const int64_t i0 = b2 * kBlock2, i1 = std::min(nb, i0 + kBlock2);
    float m = 0.0f;
    for (int64_t i = i0; i < i1; ++i) m = std::max(m, std::fabs(absmax[size_t(i)] - offset));
    absmax2.mutable_data_as<float>()[b2] = m;
    const float inv = m > 0.0f ? 1.0f / m : 0.0f;
    for (int64_t i = i0; i < i1; ++i) {
      const float centered = absmax[size_t(i)] - offset;
      const uint8_t c = m > 0.0f ? nearest_index(map, centered * inv) : nearest_index(map, 0.0f);
      codes2.mutable_data_as<uint8_t>()[i] = c;
      q.scales[size_t(i)] = map[c] * m + offset;
    }
  }
  q.extras["absmax_codes"] = codes2;
  q.extras["absmax_scales"] = absmax2;
  q.extras["absmax_offset"] = offset_t;
  q.scale_storage_bits = 8.0 + 32.0 / double(kBlock2);
  return q;
}

namespace {

class Nf4 : public QuantMethod {
 public:
  explicit Nf4(QuantSpec s) : QuantMethod(std::move(s)) {
    dq_ = spec_.take_bool("dq", false, "double quantization of the absmax scales (QLoRA's DQ)");
    block_ = spec_.take_int("b", 64, 16, 4096, "block size (elements of the flattened weight per absmax)");
    spec_.finish();
  }
  bool needs_calibration() const override { return false; }
  bool runs_on(Device::Kind) const override { return true; }  // data-free: the result is the same anywhere
  double weight_bits() const override { return 4; }
  int64_t group_size() const override { return block_; }

  void quantize_block(BlockContext& ctx, QuantizedBlock& out) override {
    for (LinearKind k : kAllLinears) {
      const auto t0 = std::chrono::steady_clock::now();
      const Tensor& w = ctx.weights()[k];
      finish_linear(ctx, k,
                    nf4_quantize(w.data_as<float>(), w.dim(0), w.dim(1), block_, dq_,
                                 linear_storage_dtype(ctx.model(), ctx.layer(), k)),
                    out, t0, nullptr, "");
    }
  }

 private:
  bool dq_ = false;
  int64_t block_ = 64;
};

}  // namespace

std::unique_ptr<QuantMethod> make_nf4(QuantSpec spec) { return std::make_unique<Nf4>(std::move(spec)); }

}  // namespace lowbit
