// The activation quantization scheme of a quantized checkpoint (its "activation" metadata, written
// by SmoothQuant and RTN with activation bits; quant/activation_quant.h): bits, granularity and,
// for per_tensor_static, one scale per linear. The CPU forward applies it through hooks, the GPU
// forward (model/cuda_model.h) with its own kernel; there "per_tensor" takes one scale per
// sequence of a batched forward, as the CPU forward, which runs one sequence at a time, does.
#pragma once

#include "model/llama_model.h"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <map>
#include <optional>
#include <utility>

namespace lowbit {

struct ActivationScheme {
  enum class Granularity { PerToken, PerTensor, PerTensorStatic };
  int bits = 8;
  Granularity granularity = Granularity::PerToken;
  std::map<std::pair<int64_t, int>, float> static_scales;  // (layer, int(LinearKind)): PerTensorStatic only

  // The static scale of a linear (throws when the checkpoint has none).
  float static_scale(int64_t layer, LinearKind k) const;
};

// The scheme of a checkpoint's "activation" metadata; nullopt for null. Throws on malformed metadata.
std::optional<ActivationScheme> parse_activation_scheme(const nlohmann::json& activation);

}  // namespace lowbit
