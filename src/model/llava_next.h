// LlavaNextModel: a Hugging Face LlavaNextForConditionalGeneration checkpoint on the CPU: the CLIP
// vision tower (vision/clip_vision.h), the two-layer projector, image_newline, the any-resolution
// feature packing, and the LLaMA language model (model/llama_model.h) run on token embeddings with
// the image features spliced in.
//
// Checkpoint layouts (all read; the first tensor found decides):
//   language model  model.language_model.*            | language_model.model.*       (older llava-hf)
//   LM head         lm_head.weight                     | language_model.lm_head.weight
//   vision tower    model.vision_tower.vision_model.*  | model.vision_tower.* | vision_tower.vision_model.* |
//                   vision_tower.*  (transformers 5 saves CLIP without the vision_model level)
//   projector       model.multi_modal_projector.*      | multi_modal_projector.*
//   newline         model.image_newline                | image_newline
//
// Image features of one image (transformers' get_image_features + pack_image_features), with
// G = image_size / patch_size patches per tile side, H the LLM's hidden size:
//   1. the processor's tiles [1 + r*c, 3, S, S] through the tower to hidden state
//      vision_feature_layer; "default" drops each tile's CLS token -> [tiles, G*G, Dv];
//   2. the projector: linear_2(gelu(linear_1(x))) -> [tiles, G*G, H];
//   3. tile 0 (the squashed whole image) stays [G*G, H]; the r x c grid tiles form one feature
//      map of (r*G) x (c*G) positions, cropped to the image's aspect ratio (unpad_image: the rows
//      or columns the processor's padding produced), each of its rows followed by image_newline;
//   4. packed = [base G*G rows; cropped rows * (cols + 1)] -> [image_token_count(h, w), H].
// The prompt holds exactly that many image_token_id tokens per image, in order; their embeddings
// are replaced by the packed features row by row.
#pragma once

#include "core/tensor.h"
#include "formats/checkpoint.h"
#include "model/llama_model.h"
#include "vision/clip_vision.h"
#include "vision/image_processor.h"

#include <functional>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace lowbit {

struct LlavaNextConfig {
  LlamaConfig text;
  vision::ClipVisionConfig vision;
  int64_t image_token_id = 0;
  int64_t vision_feature_layer = -2;  // transformers' hidden_states index (negative: from the end)
  std::string projector_hidden_act = "gelu";
  bool projector_bias = true;
  std::vector<std::pair<int64_t, int64_t>> pinpoints;  // (height, width)
  std::string source;

  // Encoder layers the feature layer needs (hidden_states index made non-negative).
  int64_t feature_layers() const;
};

// config.json of a LlavaNextForConditionalGeneration. text_config and vision_config fields that
// are absent take transformers' defaults (LlamaConfig's; LLaVA-Next's ViT-L/14-336). Refused
// with the file and field named: another architecture, a text model that is not LLaMA, a list
// vision_feature_layer, vision_feature_select_strategy "full" (its packing is undefined for
// any-resolution tiles in transformers), an image token outside the vocabulary.
LlavaNextConfig parse_llava_next_config(const std::string& json_text, const std::string& path);

// (rows, cols) of kept feature positions, and the first kept row and column, of the grid
// (grid_h, grid_w) = (r*G, c*G) for an image of height x width (transformers' unpad_image;
// Python's round(x, 7) is taken as rounding to 7 decimals in double).
struct UnpadBox {
  int64_t rows, cols, row0, col0;
};
UnpadBox unpad_box(int64_t height, int64_t width, int64_t grid_h, int64_t grid_w);

// Image tokens an image of height x width takes under config c: G*G for the base tile, plus the
// cropped grid's rows times (columns + 1).
int64_t llava_next_image_token_count(const LlavaNextConfig& c, int64_t height, int64_t width);
// (rows, cols) of a processed image's any-resolution tile grid; throws lowbit::Error when its
// tile count is not 1 + rows x cols (every device's tower checks this before any work).
std::pair<int64_t, int64_t> llava_next_tile_grid(const LlavaNextConfig& c, const vision::ProcessedImage& image);

class LlavaNextModel {
 public:
  // A directory with config.json and model.safetensors (or a sharded index); the image processor
  // from preprocessor_config.json beside them, or LLaVA-Next's defaults with the config's pinpoints
  // and the tower's image size.
  static std::unique_ptr<LlavaNextModel> open(const std::string& dir);
  // The same directory's vision tower, projector, image_newline, processor and config, around the
  // language model `language_model` instead of the directory's own (e.g. the quantized LLM part
  // that quant/llava_next_quantized.h writes beside the vision tensors, or one held in memory).
  // Its hyper-parameters must be the config's text_config (hidden size, vocabulary, layers,
  // heads); refused otherwise, naming both values.
  static std::unique_ptr<LlavaNextModel> open(const std::string& dir, Checkpoint language_model);

  const LlavaNextConfig& config() const { return cfg_; }
  const LlamaModel& language_model() const { return *llm_; }
  LlamaModel& language_model() { return *llm_; }
  const vision::ImageProcessorConfig& processor() const { return processor_; }
  const vision::ClipVisionTower& vision_tower() const { return *tower_; }
  const std::string& tokenizer_path() const { return tokenizer_path_; }

  // Image tokens an image of height x width takes.
  int64_t image_token_count(int64_t height, int64_t width) const;
  // Packed features [image_token_count, H] of one preprocessed image: pack_image_features of
  // projected_tiles.
  Tensor image_features(const vision::ProcessedImage& image) const;
  // Steps 1-2 on the CPU: the projector's output [tiles * G*G, H] (fp32) for the image's tiles
  // (tile t's patch g at row t*G*G + g). Throws when the tile count is not the one the pinpoints
  // imply for the image's size.
  Tensor projected_tiles(const vision::ProcessedImage& image) const;
  // Steps 3-4, whichever device computed `projected` [tiles * G*G, H] (fp32, host): the base
  // tile, the cropped grid and the newline rows -> [image_token_count, H].
  Tensor pack_image_features(const vision::ProcessedImage& image, const Tensor& projected) const;

  // The projector's weights (fp32; biases empty without multimodal_projector_bias) and
  // image_newline, for a copy on another device.
  struct Projector {
    Tensor w1, b1, w2, b2;  // [H, Dv], [H], [H, H], [H]
  };
  Projector projector() const { return {proj1_w_, proj1_b_, proj2_w_, proj2_b_}; }
  const Tensor& image_newline() const { return newline_; }  // [H]
  // Input embeddings [T, H]: token embeddings with the image tokens' rows replaced by the images'
  // features (each [n_i, H], in prompt order). The number of image tokens must equal sum n_i.
  Tensor embed(std::span<const int32_t> ids, std::span<const Tensor> features) const;
  // Logits [T, V] of one sequence with its images.
  Tensor forward(std::span<const int32_t> ids, std::span<const vision::ProcessedImage> images) const;
  // Runs embeddings [T, H] (from embed) through the language model; logits [T, V].
  Tensor forward_embeddings(Tensor hidden) const;
  // Greedy decoding (transformers' generate with do_sample=False): the prompt with its images in
  // one forward through a KV cache, then one token per step; at most max_new_tokens, or fewer at
  // the model's context or after a token of stop_ids (which is returned as the last token, as
  // transformers returns its EOS). on_token sees each new token as it is chosen.
  std::vector<int32_t> generate(std::span<const int32_t> ids, std::span<const vision::ProcessedImage> images,
                                int64_t max_new_tokens, std::span<const int64_t> stop_ids,
                                const std::function<void(int32_t)>& on_token = nullptr) const;

 private:
  LlavaNextModel() = default;
  static std::unique_ptr<LlavaNextModel> open_impl(const std::string& dir, Checkpoint* language_model);
  LlavaNextConfig cfg_;
  vision::ImageProcessorConfig processor_;
  std::string tokenizer_path_;
  std::shared_ptr<WeightSource> weights_;
  std::unique_ptr<LlamaModel> llm_;
  std::unique_ptr<vision::ClipVisionTower> tower_;
  Tensor proj1_w_, proj1_b_, proj2_w_, proj2_b_;  // [H, Dv], [H], [H, H], [H]
  Tensor newline_;                                // [H]
};

}  // namespace lowbit
