// Activation quantization in the forward of a quantized model (SmoothQuant's W*A* schemes):
// symmetric fake quantization of every linear's input, per token or per tensor.
//
// The scheme is part of the quantized checkpoint's metadata ("activation"):
//   {"bits": 8, "granularity": "per_token" | "per_tensor" | "per_tensor_static",
//    "static_scales": {"model.layers.3.self_attn.q_proj": 0.0123, ...}}   (static only)
// load_model() installs the hooks, so every evaluation of such a checkpoint quantizes its
// activations exactly as the method says. The GPU forward (model/cuda_model.h) reads the same
// metadata (model/activation_scheme.h).
#pragma once

#include "model/activation_scheme.h"
#include "model/llama_model.h"

#include <nlohmann/json.hpp>

#include <memory>
#include <string>

namespace lowbit {

// x <- round(x / s) * s over `rows` rows of `cols`, with s = max(max|x|, 1e-5) / (2^(bits-1) - 1)
// taken per row (per_token) or over all of x (per_tensor).
void fake_quantize_per_token(float* x, int64_t rows, int64_t cols, int bits);
void fake_quantize_per_tensor(float* x, int64_t n, int bits);
// With a fixed scale.
void fake_quantize_with_scale(float* x, int64_t n, int bits, float scale);

// Hooks implementing the scheme described by `activation` (see above); null for null.
std::shared_ptr<const BlockHooks> activation_quant_hooks(const nlohmann::json& activation);

}  // namespace lowbit
