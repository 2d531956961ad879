// The CLIP ViT vision tower (transformers' CLIPVisionModel) on the CPU, fp32 compute over weights
// converted from their stored dtype when the tower is built.
//
// For N tiles pixel_values [N, 3, S, S] (S = image_size, p = patch_size, G = S/p, P = G*G):
//   patches  [N*P, 3*p*p]   tile n, patch (gy, gx) at row n*P + gy*G + gx; columns (c, ky, kx)
//   embed    [N*(P+1), D]   per tile: class_embedding, then patches @ patch_embedding^T (a stride-p
//                           convolution without bias), plus position_embedding [P+1, D]
//   pre_layrnorm, then layers: h += out_proj(attn(LN1(h))); h += fc2(act(fc1(LN2(h))))
//                           (bidirectional attention within each tile, act = quick_gelu)
// hidden_states(k) is transformers' hidden_states[k]: k = 0 the embeddings after pre_layrnorm,
// k = i the output of encoder layer i (post_layernorm is not applied to any of them).
#pragma once

#include "core/tensor.h"
#include "formats/weights.h"

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

namespace lowbit::vision {

struct ClipVisionConfig {
  int64_t hidden_size = 1024;        // D
  int64_t intermediate_size = 4096;
  int64_t num_hidden_layers = 24;
  int64_t num_attention_heads = 16;
  int64_t image_size = 336;          // S
  int64_t patch_size = 14;           // p
  int64_t num_channels = 3;
  double layer_norm_eps = 1e-5;
  std::string hidden_act = "quick_gelu";  // or "gelu"

  int64_t grid() const { return image_size / patch_size; }       // G
  int64_t num_patches() const { return grid() * grid(); }       // P
  int64_t head_dim() const { return hidden_size / num_attention_heads; }
};

// A CLIPVisionConfig JSON object (LLaVA's vision_config). Absent fields take LLaVA-Next's
// defaults above (ViT-L/14 at 336 px); `what` names the config in errors.
ClipVisionConfig parse_clip_vision_config(const nlohmann::json& j, const std::string& what);

// The patches of pixel_values [N, 3, S, S] float32 as rows [N*P, 3*p*p] (tile n, patch (gy, gx) at
// row n*P + gy*G + gx; columns in the patch embedding weight's (c, ky, kx) order): the stride-p
// convolution as one product. Throws naming the shape when pixel_values is not [N, 3, S, S] float32.
std::vector<float> clip_patches(const Tensor& pixel_values, const ClipVisionConfig& cfg);

class ClipVisionTower {
 public:
  // Reads the tower's tensors named prefix + "embeddings.patch_embedding.weight", prefix +
  // "encoder.layers.{i}.self_attn.q_proj.weight", ... from `w` (checking every shape), for the first
  // `layers` encoder layers only (the ones a feature layer needs).
  ClipVisionTower(const ClipVisionConfig& cfg, const WeightSource& w, const std::string& prefix, int64_t layers);

  const ClipVisionConfig& config() const { return cfg_; }
  int64_t layers_loaded() const { return int64_t(layers_.size()); }
  // hidden_states(k) [N*(P+1), D] for pixel_values [N, 3, S, S] float32, 0 <= k <= layers_loaded().
  Tensor hidden_states(const Tensor& pixel_values, int64_t k) const;

  // The weights (fp32, [out, in] matrices and [n] vectors as stored), for a copy on another device.
  struct Layer {
    Tensor ln1_w, ln1_b, q_w, q_b, k_w, k_b, v_w, v_b, o_w, o_b, ln2_w, ln2_b, fc1_w, fc1_b, fc2_w, fc2_b;
  };
  const Layer& layer(int64_t i) const { return layers_.at(size_t(i)); }
  const Tensor& patch_weight() const { return patch_w_; }         // [D, 3*p*p]
  const Tensor& class_embedding() const { return class_emb_; }    // [D]
  const Tensor& position_embedding() const { return pos_emb_; }   // [P+1, D]
  const Tensor& pre_norm_weight() const { return pre_ln_w_; }     // [D]
  const Tensor& pre_norm_bias() const { return pre_ln_b_; }       // [D]

 private:
  ClipVisionConfig cfg_;
  Tensor patch_w_;        // [D, 3*p*p]
  Tensor class_emb_;      // [D]
  Tensor pos_emb_;        // [P+1, D]
  Tensor pre_ln_w_, pre_ln_b_;
  std::vector<Layer> layers_;
};

}  // namespace lowbit::vision
