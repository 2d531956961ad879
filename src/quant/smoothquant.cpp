#include "quant/smoothquant.h"

#include "core/error.h"
#include "quant/method.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

namespace lowbit {

std::vector<float> smoothquant_factors(const std::vector<float>& act_absmax, const std::vector<const Tensor*>& weights,
                                       double alpha) {
  const int64_t in = int64_t(act_absmax.size());
  std::vector<float> wmax(static_cast<size_t>(in), 0.0f);
  for (const Tensor* w : weights) {
    LB_ASSERT(w->dim(1) == in);
    const float* p = w->data_as<float>();
    for (int64_t r = 0; r < w->dim(0); ++r)
      for (int64_t c = 0; c < in; ++c) wmax[size_t(c)] = std::max(wmax[size_t(c)], std::fabs(p[r * in + c]));
  }
  std::vector<float> s(static_cast<size_t>(in));
  const float a = float(alpha);
  for (int64_t c = 0; c < in; ++c) {
    const float ws = std::max(wmax[size_t(c)], 1e-5f);
    s[size_t(c)] = std::max(std::pow(act_absmax[size_t(c)], a) / std::pow(ws, 1.0f - a), 1e-5f);
  }
  return s;
}

QuantizedLinear smoothquant_weight(const float* w, int64_t rows, int64_t cols, int bits, DType dtype) {
  QuantizedLinear q;
  q.rows = rows;
  q.cols = cols;
  q.format = &kIntFormat;
  q.bits = bits;
  q.group_size = cols;
  q.dequant_dtype = dtype;
  q.zero_storage_bits = 0.0;  // fixed at 2^(bits-1)
  const float qmax = float((1 << (bits - 1)) - 1), zero = float(1 << (bits - 1));
  q.codes.resize(size_t(rows * cols));
  q.scales.resize(size_t(rows));
  q.zeros.assign(size_t(rows), zero);
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const float* x = w + r * cols;
    float m = 0;
    for (int64_t c = 0; c < cols; ++c) m = std::max(m, std::fabs(x[c]));
    const float s = std::max(m, 1e-5f) / qmax;
    q.scales[size_t(r)] = s;
    for (int64_t c = 0; c < cols; ++c) q.codes[size_t(r * cols + c)] = uint8_t(std::nearbyint(x[c] / s) + zero);
  }
  return q;
}

SmoothingResult smoothquant_smooth_block(BlockContext& ctx, double alpha) {
  using K = LinearKind;
  StatsRequest req;
  req.absmax = true;
  SmoothingResult r;
  r.stats = ctx.collect(kAllLinears, req);
  BlockWeights& w = ctx.weights();
  r.qkv = smoothquant_factors(r.stats.at(K::Q)->absmax, {&w[K::Q], &w[K::K], &w[K::V]}, alpha);
  r.gate_up = smoothquant_factors(r.stats.at(K::Gate)->absmax, {&w[K::Gate], &w[K::Up]}, alpha);
  auto fold = [](Tensor& norm, std::vector<Tensor*> fcs, const std::vector<float>& s) {
    float* n = norm.mutable_data_as<float>();
    for (int64_t c = 0; c < norm.numel(); ++c) n[c] /= s[size_t(c)];
    for (Tensor* t : fcs) {
      float* p = t->mutable_data_as<float>();
      const int64_t rows = t->dim(0), cols = t->dim(1);
      for (int64_t i = 0; i < rows; ++i)
        for (int64_t c = 0; c < cols; ++c) p[i * cols + c] *= s[size_t(c)];
    }
  };
  fold(w.input_norm, {&w[K::Q], &w[K::K], &w[K::V]}, r.qkv);
  fold(w.post_norm, {&w[K::Gate], &w[K::Up]}, r.gate_up);
  return r;
}

namespace {

using K = LinearKind;

class SmoothQuant : public QuantMethod {
 public:
  explicit SmoothQuant(QuantSpec s) : QuantMethod(std::move(s)) {
    wbits_ = int(spec_.take_int("w", 8, 2, 8, "weight bits (per output channel, symmetric)"));
    abits_ = int(spec_.take_int("a", 8, 2, 16, "activation bits (symmetric)"));
    alpha_ = spec_.take_double("alpha", 0.5, 0.0, 1.0, "migration strength: s = max|X|^alpha / max|W|^(1-alpha)");
    act_ = spec_.take_choice("act", "per_token", {"per_token", "per_tensor", "per_tensor_static"},
                             "activation scale: per token or per tensor (dynamic), or per tensor from calibration");
    spec_.finish();
    activation_ = {{"bits", abits_}, {"granularity", act_}, {"scheme", "symmetric absmax, every linear's input"}};
    if (act_ == "per_tensor_static") activation_["static_scales"] = nlohmann::json::object();
  }
  bool needs_calibration() const override { return true; }
  double weight_bits() const override { return wbits_; }
  int activation_bits() const override { return abits_; }
  int64_t group_size() const override { return -1; }
  bool propagates_quantized() const override { return false; }
  nlohmann::json activation_config() const override { return activation_; }

  void quantize_block(BlockContext& ctx, QuantizedBlock& out) override {
    const SmoothingResult sm = smoothquant_smooth_block(ctx, alpha_);
    const auto& stats = sm.stats;
    const std::vector<float>& s_qkv = sm.qkv;
    const std::vector<float>& s_gu = sm.gate_up;
    BlockWeights& w = ctx.weights();
    auto range = [](const std::vector<float>& v) {
      return fmt::format("[{:.3g}, {:.3g}]", *std::min_element(v.begin(), v.end()), *std::max_element(v.begin(), v.end()));
    };
    ctx.note(fmt::format("smoothing alpha {}: q/k/v factors in {}, gate/up factors in {}", alpha_, range(s_qkv),
                         range(s_gu)));
    if (act_ == "per_tensor_static") {
      // Per-tensor maxima of the (smoothed) inputs on the calibration data.
      const float qmax = float((1 << (abits_ - 1)) - 1);
      for (K k : kAllLinears) {
        const auto& am = stats.at(k)->absmax;
        const std::vector<float>* s = k == K::Q || k == K::K || k == K::V ? &s_qkv
                                      : k == K::Gate || k == K::Up      ? &s_gu
                                                                        : nullptr;
        float m = 0;
        for (size_t c = 0; c < am.size(); ++c) m = std::max(m, s ? am[c] / (*s)[c] : am[c]);
        std::string name = linear_weight_name(ctx.layer(), k);
        name.resize(name.size() - std::string(".weight").size());
        activation_["static_scales"][name] = std::max(m, 1e-5f) / qmax;
      }
    }
    for (K k : kAllLinears) {
      const auto t0 = std::chrono::steady_clock::now();
      const Tensor& t = w[k];
      finish_linear(ctx, k,
                    smoothquant_weight(t.data_as<float>(), t.dim(0), t.dim(1), wbits_,
                                       linear_storage_dtype(ctx.model(), ctx.layer(), k)),
                    out, t0, nullptr, "");
    }
  }

 private:
  int wbits_ = 8, abits_ = 8;
  double alpha_ = 0.5;
  std::string act_;
  nlohmann::json activation_;
};

}  // namespace

std::unique_ptr<QuantMethod> make_smoothquant(QuantSpec spec) { return std::make_unique<SmoothQuant>(std::move(spec)); }

}  // namespace lowbit
