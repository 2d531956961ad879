#include "model/activation_scheme.h"

#include "core/error.h"

#include <string>

namespace lowbit {

float ActivationScheme::static_scale(int64_t layer, LinearKind k) const {
  auto it = static_scales.find({layer, int(k)});
  LB_CHECK(it != static_scales.end(), "activation quantization: no static scale for layer {} {}", layer, linear_name(k));
  return it->second;
}

std::optional<ActivationScheme> parse_activation_scheme(const nlohmann::json& a) {
  if (a.is_null()) return std::nullopt;
  LB_CHECK(a.is_object() && a.contains("bits") && a.contains("granularity"),
           "activation quantization metadata is malformed: {}", a.dump());
  ActivationScheme s;
  s.bits = a["bits"].get<int>();
  LB_CHECK(s.bits >= 2 && s.bits <= 16, "activation quantization: {} bits is outside 2..16", s.bits);
  const std::string g = a["granularity"].get<std::string>();
  if (g == "per_token") {
    s.granularity = ActivationScheme::Granularity::PerToken;
  } else if (g == "per_tensor") {
    s.granularity = ActivationScheme::Granularity::PerTensor;
  } else if (g == "per_tensor_static") {
    s.granularity = ActivationScheme::Granularity::PerTensorStatic;
    LB_CHECK(a.contains("static_scales") && a["static_scales"].is_object(),
             "activation quantization per_tensor_static needs static_scales");
    for (const auto& [name, v] : a["static_scales"].items()) {
      // A linear's base name, "model.layers.{i}.{self_attn|mlp}.{linear}".
      const auto parsed = parse_hf_tensor_name(name + ".weight");
      const auto linear = parsed ? tensor_spec(parsed->first).linear : std::nullopt;
      LB_CHECK(linear.has_value(), "activation quantization: static scale for unknown linear '{}'", name);
      s.static_scales[{parsed->second, int(*linear)}] = v.get<float>();
    }
  } else {
    fail("activation quantization: unknown granularity '{}' (per_token, per_tensor, per_tensor_static)", g);
  }
  return s;
}

}  // namespace lowbit
