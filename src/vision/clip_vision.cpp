#include "vision/clip_vision.h"

#include "backend/ops.h"
#include "backend/vision_ops.h"
#include "core/error.h"

#include <cstring>

namespace lowbit::vision {

using json = nlohmann::json;

ClipVisionConfig parse_clip_vision_config(const json& j, const std::string& what) {
  LB_CHECK(j.is_object(), "{}: vision_config is not an object", what);
  ClipVisionConfig c;
  auto get = [&](const char* key, int64_t& dst) {
    if (!j.contains(key) || j[key].is_null()) return;
    LB_CHECK(j[key].is_number_integer(), "{}: vision_config.{} is not an integer", what, key);
    dst = j[key].get<int64_t>();
    LB_CHECK(dst > 0, "{}: vision_config.{} = {} is not positive", what, key, dst);
  };
  get("hidden_size", c.hidden_size);
  get("intermediate_size", c.intermediate_size);
  get("num_hidden_layers", c.num_hidden_layers);
  get("num_attention_heads", c.num_attention_heads);
  get("image_size", c.image_size);
  get("patch_size", c.patch_size);
  get("num_channels", c.num_channels);
  if (j.contains("layer_norm_eps")) c.layer_norm_eps = j["layer_norm_eps"].get<double>();
  if (j.contains("hidden_act")) c.hidden_act = j["hidden_act"].get<std::string>();
  const std::string type = j.value("model_type", std::string("clip_vision_model"));
  LB_CHECK(type == "clip_vision_model", "{}: vision_config.model_type is '{}'; lowbit implements the CLIP vision "
           "tower (clip_vision_model)", what, type);
  LB_CHECK(c.hidden_act == "quick_gelu" || c.hidden_act == "gelu",
           "{}: vision_config.hidden_act '{}' is not supported (quick_gelu or gelu)", what, c.hidden_act);
  LB_CHECK(c.num_channels == 3, "{}: vision_config.num_channels is {}; images are RGB (3)", what, c.num_channels);
  LB_CHECK(c.image_size % c.patch_size == 0, "{}: image_size {} is not a multiple of patch_size {}", what,
           c.image_size, c.patch_size);
  LB_CHECK(c.hidden_size % c.num_attention_heads == 0, "{}: hidden_size {} is not a multiple of num_attention_heads {}",
           what, c.hidden_size, c.num_attention_heads);
  return c;
}

namespace {

Tensor load(const WeightSource& w, const std::string& name, std::vector<int64_t> shape) {
  const WeightInfo* info = w.info(name);
  LB_CHECK(info != nullptr, "vision tower: missing tensor '{}'", name);
  LB_CHECK(info->shape == shape, "vision tower: tensor '{}' has wrong shape: got {}, expected {}", name,
           shape_str(info->shape), shape_str(shape));
  LB_CHECK(info->dtype == DType::F32 || info->dtype == DType::F16 || info->dtype == DType::BF16,
           "vision tower: tensor '{}' has dtype {}; expected F32, F16 or BF16", name, dtype_name(info->dtype));
  Tensor t = w.get(name);
  return t.dtype() == DType::F32 && t.is_contiguous() ? t : t.to_f32();
}

// y[rows, out] = x @ w^T + b
void linear_bias(const float* x, const Tensor& w, const Tensor& b, float* y, int64_t rows) {
  const int64_t out = w.dim(0), in = w.dim(1);
  ops::linear(x, w.data_as<float>(), y, rows, in, out);
  ops::add_bias(y, b.data_as<float>(), rows, out);
}

}  // namespace

ClipVisionTower::ClipVisionTower(const ClipVisionConfig& cfg, const WeightSource& w, const std::string& prefix,
                                 int64_t layers)
    : cfg_(cfg) {
  LB_CHECK(layers >= 0 && layers <= cfg.num_hidden_layers, "vision tower: {} layers requested, the config has {}",
           layers, cfg.num_hidden_layers);
  const int64_t D = cfg.hidden_size, F = cfg.intermediate_size, p = cfg.patch_size;
  patch_w_ = load(w, prefix + "embeddings.patch_embedding.weight", {D, cfg.num_channels, p, p});
  patch_w_ = Tensor::view(DType::F32, {D, cfg.num_channels * p * p}, patch_w_.data(),
                          std::make_shared<Tensor>(patch_w_));
  class_emb_ = load(w, prefix + "embeddings.class_embedding", {D});
  pos_emb_ = load(w, prefix + "embeddings.position_embedding.weight", {cfg.num_patches() + 1, D});
  pre_ln_w_ = load(w, prefix + "pre_layrnorm.weight", {D});
  pre_ln_b_ = load(w, prefix + "pre_layrnorm.bias", {D});
  for (int64_t i = 0; i < layers; ++i) {
    const std::string l = prefix + "encoder.layers." + std::to_string(i) + ".";
    Layer L;
    L.ln1_w = load(w, l + "layer_norm1.weight", {D});
    L.ln1_b = load(w, l + "layer_norm1.bias", {D});
    L.q_w = load(w, l + "self_attn.q_proj.weight", {D, D});
    L.q_b = load(w, l + "self_attn.q_proj.bias", {D});
    L.k_w = load(w, l + "self_attn.k_proj.weight", {D, D});
    L.k_b = load(w, l + "self_attn.k_proj.bias", {D});
    L.v_w = load(w, l + "self_attn.v_proj.weight", {D, D});
    L.v_b = load(w, l + "self_attn.v_proj.bias", {D});
    L.o_w = load(w, l + "self_attn.out_proj.weight", {D, D});
    L.o_b = load(w, l + "self_attn.out_proj.bias", {D});
    L.ln2_w = load(w, l + "layer_norm2.weight", {D});
    L.ln2_b = load(w, l + "layer_norm2.bias", {D});
    L.fc1_w = load(w, l + "mlp.fc1.weight", {F, D});
    L.fc1_b = load(w, l + "mlp.fc1.bias", {F});
    L.fc2_w = load(w, l + "mlp.fc2.weight", {D, F});
    L.fc2_b = load(w, l + "mlp.fc2.bias", {D});
    layers_.push_back(std::move(L));
  }
}

std::vector<float> clip_patches(const Tensor& pixel_values, const ClipVisionConfig& cfg) {
  const int64_t S = cfg.image_size, p = cfg.patch_size, G = cfg.grid(), P = cfg.num_patches(), C = cfg.num_channels;
  LB_CHECK(pixel_values.dtype() == DType::F32 && pixel_values.ndim() == 4 && pixel_values.dim(1) == C &&
               pixel_values.dim(2) == S && pixel_values.dim(3) == S && pixel_values.is_contiguous(),
           "vision tower: pixel_values has shape {} ({}), expected [N, {}, {}, {}] float32",
           pixel_values.shape_str(), dtype_name(pixel_values.dtype()), C, S, S);
  const int64_t N = pixel_values.dim(0);
  const float* px = pixel_values.data_as<float>();
  std::vector<float> patches(size_t(N * P * C * p * p));
#pragma omp parallel for collapse(2) schedule(static) if (N * P > 64)
  for (int64_t n = 0; n < N; ++n)
    for (int64_t g = 0; g < P; ++g) {
      const int64_t gy = g / G, gx = g % G;
      float* dst = patches.data() + (n * P + g) * C * p * p;
      for (int64_t c = 0; c < C; ++c)
        for (int64_t ky = 0; ky < p; ++ky)
          std::memcpy(dst + (c * p + ky) * p, px + ((n * C + c) * S + gy * p + ky) * S + gx * p, size_t(p) * 4);
    }
  return patches;
}

Tensor ClipVisionTower::hidden_states(const Tensor& pixel_values, int64_t k) const {
  const int64_t p = cfg_.patch_size, P = cfg_.num_patches();
  const int64_t D = cfg_.hidden_size, F = cfg_.intermediate_size, C = cfg_.num_channels;
  const std::vector<float> patches = clip_patches(pixel_values, cfg_);
  LB_CHECK(k >= 0 && k <= layers_loaded(), "vision tower: hidden state {} asked, {} layers loaded", k, layers_loaded());
  const int64_t N = pixel_values.dim(0), T = P + 1, rows = N * T;

  Tensor out = Tensor::empty(DType::F32, {rows, D});
  float* h = out.mutable_data_as<float>();
  std::vector<float> pe(size_t(N * P * D));
  ops::linear(patches.data(), patch_w_.data_as<float>(), pe.data(), N * P, C * p * p, D);
  const float* pos = pos_emb_.data_as<float>();
  for (int64_t n = 0; n < N; ++n) {
    float* tile = h + n * T * D;
    for (int64_t d = 0; d < D; ++d) tile[d] = class_emb_.data_as<float>()[d] + pos[d];
    for (int64_t g = 0; g < P; ++g)
      for (int64_t d = 0; d < D; ++d) tile[(g + 1) * D + d] = pe[size_t((n * P + g) * D + d)] + pos[(g + 1) * D + d];
  }
  const float eps = float(cfg_.layer_norm_eps);
  ops::layernorm(h, pre_ln_w_.data_as<float>(), pre_ln_b_.data_as<float>(), h, rows, D, eps);

  std::vector<float> x(size_t(rows * D)), q(size_t(rows * D)), kk(size_t(rows * D)), v(size_t(rows * D)),
      a(size_t(rows * D)), f(size_t(rows * F));
  for (int64_t i = 0; i < k; ++i) {
    const Layer& L = layers_[size_t(i)];
    ops::layernorm(h, L.ln1_w.data_as<float>(), L.ln1_b.data_as<float>(), x.data(), rows, D, eps);
    linear_bias(x.data(), L.q_w, L.q_b, q.data(), rows);
    linear_bias(x.data(), L.k_w, L.k_b, kk.data(), rows);
    linear_bias(x.data(), L.v_w, L.v_b, v.data(), rows);
    ops::attention_bidirectional(q.data(), kk.data(), v.data(), a.data(), N, T, cfg_.num_attention_heads,
                                 cfg_.head_dim());
    linear_bias(a.data(), L.o_w, L.o_b, x.data(), rows);
    for (int64_t j = 0; j < rows * D; ++j) h[j] += x[size_t(j)];
    ops::layernorm(h, L.ln2_w.data_as<float>(), L.ln2_b.data_as<float>(), x.data(), rows, D, eps);
    linear_bias(x.data(), L.fc1_w, L.fc1_b, f.data(), rows);
    if (cfg_.hidden_act == "quick_gelu")
      ops::quick_gelu(f.data(), rows * F);
    else
      ops::gelu(f.data(), rows * F);
    linear_bias(f.data(), L.fc2_w, L.fc2_b, x.data(), rows);
    for (int64_t j = 0; j < rows * D; ++j) h[j] += x[size_t(j)];
  }
  return out;
}

}  // namespace lowbit::vision
