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
  if (a.is_null()) return nullptr;
  LB_CHECK(a.is_object() && a.contains("bits") && a.contains("granularity"),
           "activation quantization metadata is malformed: {}", a.dump());
  const int bits = a["bits"].get<int>();
  LB_CHECK(bits >= 2 && bits <= 16, "activation quantization: {} bits is outside 2..16", bits);
  const std::string g = a["granularity"].get<std::string>();
  auto hooks = std::make_shared<BlockHooks>();
  if (g == "per_token") {
    hooks->on_input = [bits](int64_t, LinearKind, float* x, int64_t rows, int64_t cols) {
      fake_quantize_per_token(x, rows, cols, bits);
    };
  } else if (g == "per_tensor") {
    hooks->on_input = [bits](int64_t, LinearKind, float* x, int64_t rows, int64_t cols) {
      fake_quantize_per_tensor(x, rows * cols, bits);
    };
  } else if (g == "per_tensor_static") {
    LB_CHECK(a.contains("static_scales") && a["static_scales"].is_object(),
             "activation quantization per_tensor_static needs static_scales");
    std::map<std::pair<int64_t, int>, float> scales;
    for (const auto& [name, v] : a["static_scales"].items()) {
      // "model.layers.{i}.{self_attn|mlp}.{linear}"
      bool found = false;
      for (LinearKind k : kAllLinears) {
        const std::string suffix = std::string(".") + linear_name(k);
        if (!name.ends_with(suffix)) continue;
        const size_t p = std::string("model.layers.").size();
        scales[{std::stoll(name.substr(p)), int(k)}] = v.get<float>();
        found = true;
      }
      LB_CHECK(found, "activation quantization: static scale for unknown linear '{}'", name);
    }
    hooks->on_input = [bits, scales](int64_t layer, LinearKind k, float* x, int64_t rows, int64_t cols) {
      auto it = scales.find({layer, int(k)});
      LB_CHECK(it != scales.end(), "activation quantization: no static scale for layer {} {}", layer, linear_name(k));
      fake_quantize_with_scale(x, rows * cols, bits, it->second);
    };
  } else {
    fail("activation quantization: unknown granularity '{}' (per_token, per_tensor, per_tensor_static)", g);
  }
  return hooks;
}

}  // namespace lowbit
