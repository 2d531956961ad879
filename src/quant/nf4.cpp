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

namespace {

// torch.linspace(start, end, steps) in fp32 as its CPU kernel computes it: step = (end - start) /
// (steps - 1) in fp32, the first half start + step * i and the second half end - step * (steps -
// 1 - i), each as one fused multiply-add (the vectorized kernel's fmadd on x86-64 with FMA).
std::vector<float> torch_linspace_f32(float start, float end, int64_t steps) {
  std::vector<float> out(static_cast<size_t>(steps));
  const float step = (end - start) / float(steps - 1);
  for (int64_t i = 0; i < steps; ++i)
    out[size_t(i)] = i < steps / 2 ? std::fma(step, float(i), start) : std::fma(-step, float(steps - 1 - i), end);
  return out;
}

}  // namespace

const std::array<float, 256>& dynamic_map_signed() {
  static const std::array<float, 256> m = [] {
    // bitsandbytes' create_dynamic_map: at exponent i = 0..6, the 2^i midpoints of
    // linspace(0.1, 1, 2^i + 1) (fp32 torch.linspace; midpoints (a + b) / 2 in fp32), each times
    // fp32(10^(i - 6)) in fp32, with both signs; then 0 and 1; sorted.
    std::vector<float> data;
    for (int i = 0; i < 7; ++i) {
      const std::vector<float> b = torch_linspace_f32(0.1f, 1.0f, (int64_t(1) << i) + 1);
      const float scale = float(std::pow(10.0, double(i - 6)));
      for (size_t j = 0; j + 1 < b.size(); ++j) {
        const float mean = (b[j] + b[j + 1]) / 2.0f;
        data.push_back(scale * mean);
        data.push_back(-(scale * mean));
      }
    }
    data.push_back(0.0f);
    data.push_back(1.0f);
    LB_ASSERT(data.size() == 256);
    std::sort(data.begin(), data.end());
    std::array<float, 256> out{};
    std::copy(data.begin(), data.end(), out.begin());
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

}  // namespace

uint8_t nf4_code(float x) {
  const auto& t = nf4_thresholds();
  uint8_t c = 0;
  for (float th : t) c += x > th ? 1 : 0;
  return c;
}

float nf4_encode_block(const float* x, int64_t n, uint8_t* codes) {
  float m = 0.0f;
  for (int64_t i = 0; i < n; ++i) m = std::max(m, std::fabs(x[i]));
  const float inv = m > 0.0f ? 1.0f / m : 0.0f;
  for (int64_t i = 0; i < n; ++i) codes[i] = m > 0.0f ? nf4_code(x[i] * inv) : uint8_t(7);
  return m;
}

uint8_t nearest_dynamic_code(float x) {
  const auto& table = dynamic_map_signed();
  auto it = std::lower_bound(table.begin(), table.end(), x);
  if (it == table.begin()) return 0;
  if (it == table.end()) return 255;
  const size_t hi = size_t(it - table.begin()), lo = hi - 1;
  return (x - table[lo]) <= (table[hi] - x) ? uint8_t(lo) : uint8_t(hi);
}

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
    absmax[size_t(b)] = nf4_encode_block(w + i0, i1 - i0, q.codes.data() + i0);
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
      const uint8_t c = nearest_dynamic_code(m > 0.0f ? centered * inv : 0.0f);
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
