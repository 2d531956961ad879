#include "quant/activation_quant.h"

#include "core/error.h"

#include <algorithm>
#include <cmath>
#include <map>

namespace lowbit {

namespace {

inline float qmax_of(int bits) { return float((1 << (bits - 1)) - 1); }

}  // namespace

void fake_quantize_per_token(float* x, int64_t rows, int64_t cols, int bits) {
  const float qmax = qmax_of(bits);
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    float* xr = x + r * cols;
    float m = 0;
    for (int64_t c = 0; c < cols; ++c) m = std::max(m, std::fabs(xr[c]));
    const float s = std::max(m, 1e-5f) / qmax;
    for (int64_t c = 0; c < cols; ++c) xr[c] = std::nearbyint(xr[c] / s) * s;
  }
}

void fake_quantize_with_scale(float* x, int64_t n, int bits, float s) {
  const float qmax = qmax_of(bits);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) x[i] = std::clamp(std::nearbyint(x[i] / s), -qmax - 1, qmax) * s;
}

void fake_quantize_per_tensor(float* x, int64_t n, int bits) {
  float m = 0;
  for (int64_t i = 0; i < n; ++i) m = std::max(m, std::fabs(x[i]));
  const float s = std::max(m, 1e-5f) / qmax_of(bits);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) x[i] = std::nearbyint(x[i] / s) * s;
}

std::shared_ptr<const BlockHooks> activation_quant_hooks(const nlohmann::json& a) {
  const std::optional<ActivationScheme> scheme = parse_activation_scheme(a);
  if (!scheme) return nullptr;
  const int bits = scheme->bits;
  auto hooks = std::make_shared<BlockHooks>();
  switch (scheme->granularity) {
    case ActivationScheme::Granularity::PerToken:
      hooks->on_input = [bits](int64_t, LinearKind, float* x, int64_t rows, int64_t cols) {
        fake_quantize_per_token(x, rows, cols, bits);
      };
      break;
    case ActivationScheme::Granularity::PerTensor:
      hooks->on_input = [bits](int64_t, LinearKind, float* x, int64_t rows, int64_t cols) {
        fake_quantize_per_tensor(x, rows * cols, bits);
      };
      break;
    case ActivationScheme::Granularity::PerTensorStatic:
      hooks->on_input = [bits, scheme = *scheme](int64_t layer, LinearKind k, float* x, int64_t rows, int64_t cols) {
        fake_quantize_with_scale(x, rows * cols, bits, scheme.static_scale(layer, k));
      };
      break;
  }
  return hooks;
}

}  // namespace lowbit
