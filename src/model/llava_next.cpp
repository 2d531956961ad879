#include "model/llava_next.h"

#include "backend/ops.h"
#include "backend/vision_ops.h"
#include "core/error.h"
#include "formats/llama_tensors.h"
#include "formats/llava_next_checkpoint.h"
#include "formats/safetensors.h"
#include "formats/tokenizer.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace lowbit {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  LB_CHECK(in.good(), "cannot open '{}'", path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string first_present(const WeightSource& w, std::initializer_list<std::string> prefixes, const std::string& probe,
                          const std::string& what, const std::string& dir) {
  for (const std::string& p : prefixes)
    if (w.has(p + probe)) return p;
  std::string tried;
  for (const std::string& p : prefixes) tried += (tried.empty() ? "'" : ", '") + p + probe + "'";
  fail("{}: no {} found (looked for {})", dir, what, tried);
}

Tensor load_f32(const WeightSource& w, const std::string& name, std::vector<int64_t> shape) {
  const WeightInfo* info = w.info(name);
  LB_CHECK(info != nullptr, "LLaVA checkpoint: missing tensor '{}'", name);
  LB_CHECK(info->shape == shape, "LLaVA checkpoint: tensor '{}' has wrong shape: got {}, expected {}", name,
           shape_str(info->shape), shape_str(shape));
  Tensor t = w.get(name);
  return t.dtype() == DType::F32 && t.is_contiguous() ? t : t.to_f32();
}

}  // namespace

int64_t LlavaNextConfig::feature_layers() const {
  return vision_feature_layer >= 0 ? vision_feature_layer : vision.num_hidden_layers + 1 + vision_feature_layer;
}

LlavaNextConfig parse_llava_next_config(const std::string& text, const std::string& path) {
  json j = json::parse(text, nullptr, false);
  LB_CHECK(!j.is_discarded() && j.is_object(), "{}: not a JSON object", path);
  LB_CHECK(is_llava_next_config(j), "{}: not a LLaVA-Next model (model_type '{}'); expected "
           "LlavaNextForConditionalGeneration", path, j.value("model_type", ""));
  LlavaNextConfig c;
  c.source = path;
  try {
    c.text = llava_next_text_config(j, path);
    c.vision = vision::parse_clip_vision_config(j.value("vision_config", json::object()), path);
    c.image_token_id = j.value("image_token_index", j.value("image_token_id", int64_t(32000)));
    const json& fl = j.contains("vision_feature_layer") ? j["vision_feature_layer"] : json(-2);
    LB_CHECK(fl.is_number_integer(), "{}: vision_feature_layer {} is not one integer (several layers are not "
             "supported)", path, fl.dump());
    c.vision_feature_layer = fl.get<int64_t>();
    const std::string strategy = j.value("vision_feature_select_strategy", std::string("default"));
    LB_CHECK(strategy == "default", "{}: vision_feature_select_strategy '{}' is not supported (only 'default', "
             "which drops the CLS token, packs any-resolution tiles)", path, strategy);
    c.projector_hidden_act = j.value("projector_hidden_act", std::string("gelu"));
    LB_CHECK(c.projector_hidden_act == "gelu", "{}: projector_hidden_act '{}' is not supported (gelu)", path,
             c.projector_hidden_act);
    c.projector_bias = j.value("multimodal_projector_bias", true);
    if (j.contains("image_grid_pinpoints") && !j["image_grid_pinpoints"].is_null()) {
      for (const auto& p : j["image_grid_pinpoints"]) {
        const auto hw = p.get<std::vector<int64_t>>();
        LB_CHECK(hw.size() == 2 && hw[0] > 0 && hw[1] > 0, "{}: image_grid_pinpoints entry {} is not [height, width]",
                 path, p.dump());
        c.pinpoints.emplace_back(hw[0], hw[1]);
      }
    } else {
      c.pinpoints = {{336, 672}, {672, 336}, {672, 672}, {1008, 336}, {336, 1008}};
    }
  } catch (const json::exception& e) {
    fail("{}: a field has the wrong type: {}", path, e.what());
  }
  LB_CHECK(c.image_token_id >= 0 && c.image_token_id < c.text.vocab_size,
           "{}: image_token_index {} is outside the text model's vocabulary (size {})", path, c.image_token_id,
           c.text.vocab_size);
  LB_CHECK(c.feature_layers() >= 0 && c.feature_layers() <= c.vision.num_hidden_layers,
           "{}: vision_feature_layer {} is outside the tower's {} layers", path, c.vision_feature_layer,
           c.vision.num_hidden_layers);
  for (auto [h, w] : c.pinpoints)
    LB_CHECK(h % c.vision.image_size == 0 && w % c.vision.image_size == 0,
             "{}: pinpoint [{}, {}] is not a multiple of the vision tower's image_size {}", path, h, w,
             c.vision.image_size);
  return c;
}

UnpadBox unpad_box(int64_t height, int64_t width, int64_t grid_h, int64_t grid_w) {
  const double original_aspect = double(width) / double(height);
  const double current_aspect = double(grid_w) / double(grid_h);
  auto round7 = [](double x) { return std::nearbyint(x * 1e7) / 1e7; };
  if (original_aspect > current_aspect) {
    const double scale = double(grid_w) / double(width);
    const int64_t new_h = int64_t(round7(double(height) * scale));
    const int64_t pad = (grid_h - new_h) / 2;
    return {grid_h - 2 * pad, grid_w, pad, 0};
  }
  const double scale = double(grid_h) / double(height);
  const int64_t new_w = int64_t(round7(double(width) * scale));
  const int64_t pad = (grid_w - new_w) / 2;
  return {grid_h, grid_w - 2 * pad, 0, pad};
}

std::unique_ptr<LlavaNextModel> LlavaNextModel::open(const std::string& dir) { return open_impl(dir, nullptr); }

std::unique_ptr<LlavaNextModel> LlavaNextModel::open(const std::string& dir, Checkpoint language_model) {
  return open_impl(dir, &language_model);
}

std::unique_ptr<LlavaNextModel> LlavaNextModel::open_impl(const std::string& dir, Checkpoint* language_model) {
  LB_CHECK(fs::is_directory(dir), "LLaVA-Next model '{}' is not a directory", dir);
  const std::string cfg_path = (fs::path(dir) / "config.json").string();
  LB_CHECK(fs::exists(cfg_path), "LLaVA-Next model '{}' has no config.json", dir);
  std::unique_ptr<LlavaNextModel> m(new LlavaNextModel());
  m->cfg_ = parse_llava_next_config(read_text(cfg_path), cfg_path);
  const LlavaNextConfig& c = m->cfg_;
  LB_CHECK(fs::exists(fs::path(dir) / "model.safetensors") || fs::exists(fs::path(dir) / "model.safetensors.index.json"),
           "LLaVA-Next model '{}' has no model.safetensors or model.safetensors.index.json", dir);
  m->weights_ = SafetensorsWeights::open(dir);
  const WeightSource& w = *m->weights_;

  // The language model: the directory's own, or the one given.
  Checkpoint ck;
  if (language_model != nullptr) {
    ck = std::move(*language_model);
    const LlamaConfig& a = ck.config;
    const LlamaConfig& b = c.text;
    auto same = [&](const char* field, int64_t x, int64_t y) {
      LB_CHECK(x == y, "LLaVA-Next model '{}': the language model '{}' has {} {}, the config's text_config {}", dir,
               ck.path, field, x, y);
    };
    same("hidden_size", a.hidden_size, b.hidden_size);
    same("vocab_size", a.vocab_size, b.vocab_size);
    same("num_hidden_layers", a.num_hidden_layers, b.num_hidden_layers);
    same("num_attention_heads", a.num_attention_heads, b.num_attention_heads);
    same("num_key_value_heads", a.num_key_value_heads, b.num_key_value_heads);
    same("intermediate_size", a.intermediate_size, b.intermediate_size);
    if (ck.tokenizer_path.empty()) ck.tokenizer_path = find_tokenizer_file(dir);
  } else {
    ck.path = dir;
    ck.format = "llava-next-language-model";
    ck.config = c.text;
    ck.weights = llava_next_language_weights(m->weights_, c.text, dir);
    validate_llama_weights(ck.config, *ck.weights, dir);
    ck.tokenizer_path = find_tokenizer_file(dir);
  }
  m->tokenizer_path_ = ck.tokenizer_path;
  m->llm_ = std::make_unique<LlamaModel>(std::move(ck));

  // The vision tower, the projector, the newline embedding.
  const std::string vt = first_present(w, {"model.vision_tower.vision_model.", "model.vision_tower.",
                                           "vision_tower.vision_model.", "vision_tower."},
                                       "embeddings.patch_embedding.weight", "vision tower", dir);
  m->tower_ = std::make_unique<vision::ClipVisionTower>(c.vision, w, vt, c.feature_layers());
  const std::string pj = first_present(w, {"model.multi_modal_projector.", "multi_modal_projector."},
                                       "linear_1.weight", "multi-modal projector", dir);
  const int64_t H = c.text.hidden_size, Dv = c.vision.hidden_size;
  m->proj1_w_ = load_f32(w, pj + "linear_1.weight", {H, Dv});
  m->proj2_w_ = load_f32(w, pj + "linear_2.weight", {H, H});
  if (c.projector_bias) {
    m->proj1_b_ = load_f32(w, pj + "linear_1.bias", {H});
    m->proj2_b_ = load_f32(w, pj + "linear_2.bias", {H});
  }
  const std::string nl = first_present(w, {"model.", ""}, "image_newline", "image_newline", dir);
  m->newline_ = load_f32(w, nl + "image_newline", {H});

  // The image processor.
  const fs::path pp = fs::path(dir) / "preprocessor_config.json";
  if (fs::exists(pp)) {
    m->processor_ = vision::load_image_processor_config(pp.string());
  } else {
    m->processor_ = vision::default_llava_next_processor_config();
    m->processor_.tile = c.vision.image_size;
    m->processor_.pinpoints = c.pinpoints;
  }
  LB_CHECK(m->processor_.tile == c.vision.image_size, "{}: the processor's tile size {} differs from the vision "
           "tower's image_size {}", m->processor_.source, m->processor_.tile, c.vision.image_size);
  LB_CHECK(m->processor_.pinpoints == c.pinpoints, "{}: image_grid_pinpoints differ from config.json's",
           m->processor_.source);
  return m;
}

int64_t llava_next_image_token_count(const LlavaNextConfig& c, int64_t height, int64_t width) {
  LB_CHECK(height > 0 && width > 0, "image of {} x {} pixels", height, width);
  const int64_t G = c.vision.grid(), S = c.vision.image_size;
  const auto best = vision::select_best_resolution(height, width, c.pinpoints);
  const UnpadBox b = unpad_box(height, width, best.first / S * G, best.second / S * G);
  return G * G + b.rows * (b.cols + 1);
}

int64_t LlavaNextModel::image_token_count(int64_t height, int64_t width) const {
  return llava_next_image_token_count(cfg_, height, width);
}

std::pair<int64_t, int64_t> llava_next_tile_grid(const LlavaNextConfig& cfg, const vision::ProcessedImage& image) {
  const int64_t S = cfg.vision.image_size;
  const int64_t tiles = image.pixel_values.ndim() == 4 ? image.pixel_values.dim(0) : 0;
  const auto best = vision::select_best_resolution(image.height, image.width, cfg.pinpoints);
  const int64_t r = best.first / S, c = best.second / S;
  LB_CHECK(tiles == 1 + r * c, "image of {} x {}: {} tiles given, the pinpoints imply {} (1 + {} x {})", image.height,
           image.width, tiles, 1 + r * c, r, c);
  return {r, c};
}

Tensor LlavaNextModel::image_features(const vision::ProcessedImage& image) const {
  return pack_image_features(image, projected_tiles(image));
}

Tensor LlavaNextModel::projected_tiles(const vision::ProcessedImage& image) const {
  const int64_t G = cfg_.vision.grid(), P = G * G;
  const int64_t H = cfg_.text.hidden_size, Dv = cfg_.vision.hidden_size;
  llava_next_tile_grid(cfg_, image);
  const int64_t tiles = image.pixel_values.dim(0);

  // Tower, CLS dropped ("default"), projector.
  const Tensor hs = tower_->hidden_states(image.pixel_values, cfg_.feature_layers());
  std::vector<float> x(size_t(tiles * P * Dv));
  for (int64_t t = 0; t < tiles; ++t)
    std::memcpy(x.data() + t * P * Dv, hs.data_as<float>() + (t * (P + 1) + 1) * Dv, size_t(P * Dv) * 4);
  std::vector<float> y(size_t(tiles * P * H));
  Tensor out = Tensor::empty(DType::F32, {tiles * P, H});
  float* z = out.mutable_data_as<float>();
  ops::linear(x.data(), proj1_w_.data_as<float>(), y.data(), tiles * P, Dv, H);
  if (proj1_b_.defined() && proj1_b_.numel() > 0) ops::add_bias(y.data(), proj1_b_.data_as<float>(), tiles * P, H);
  ops::gelu(y.data(), tiles * P * H);
  ops::linear(y.data(), proj2_w_.data_as<float>(), z, tiles * P, H, H);
  if (proj2_b_.defined() && proj2_b_.numel() > 0) ops::add_bias(z, proj2_b_.data_as<float>(), tiles * P, H);
  return out;
}

Tensor LlavaNextModel::pack_image_features(const vision::ProcessedImage& image, const Tensor& projected) const {
  const int64_t G = cfg_.vision.grid(), P = G * G, H = cfg_.text.hidden_size;
  const auto [r, c] = llava_next_tile_grid(cfg_, image);
  const int64_t tiles = 1 + r * c;
  LB_CHECK(projected.dtype() == DType::F32 && projected.ndim() == 2 && projected.dim(0) == tiles * P &&
               projected.dim(1) == H && projected.is_contiguous(),
           "LLaVA-Next: projected tile features of shape {} ({}), expected [{}, {}] float32", projected.shape_str(),
           dtype_name(projected.dtype()), tiles * P, H);
  const float* z = projected.data_as<float>();

  // Base tile, then the grid's kept rows, each followed by the newline embedding.
  const UnpadBox b = unpad_box(image.height, image.width, r * G, c * G);
  const int64_t n = P + b.rows * (b.cols + 1);
  Tensor out = Tensor::empty(DType::F32, {n, H});
  float* o = out.mutable_data_as<float>();
  std::memcpy(o, z, size_t(P * H) * 4);
  o += P * H;
  for (int64_t Y = b.row0; Y < b.row0 + b.rows; ++Y) {
    for (int64_t X = b.col0; X < b.col0 + b.cols; ++X) {
      const int64_t tile = 1 + (Y / G) * c + X / G, pos = (Y % G) * G + X % G;
      std::memcpy(o, z + (tile * P + pos) * H, size_t(H) * 4);
      o += H;
    }
    std::memcpy(o, newline_.data_as<float>(), size_t(H) * 4);
    o += H;
  }
  return out;
}

Tensor LlavaNextModel::embed(std::span<const int32_t> ids, std::span<const Tensor> features) const {
  const int64_t T = int64_t(ids.size()), H = cfg_.text.hidden_size;
  LB_CHECK(T > 0, "LLaVA-Next: empty input");
  int64_t n_image_tokens = 0, n_features = 0;
  for (int32_t id : ids) n_image_tokens += id == cfg_.image_token_id;
  for (const Tensor& f : features) {
    LB_CHECK(f.ndim() == 2 && f.dim(1) == H && f.dtype() == DType::F32, "LLaVA-Next: image features of shape {}, "
             "expected [n, {}] float32", f.shape_str(), H);
    n_features += f.dim(0);
  }
  LB_CHECK(n_image_tokens == n_features, "LLaVA-Next: the prompt has {} image tokens (id {}) but the images have {} "
           "features", n_image_tokens, cfg_.image_token_id, n_features);
  Tensor hidden = Tensor::empty(DType::F32, {T, H});
  float* h = hidden.mutable_data_as<float>();
  llm_->embed(ids, h);
  size_t img = 0;
  int64_t row = 0;
  for (int64_t t = 0; t < T; ++t) {
    if (ids[size_t(t)] != cfg_.image_token_id) continue;
    while (row == features[img].dim(0)) ++img, row = 0;
    std::memcpy(h + t * H, features[img].data_as<float>() + row * H, size_t(H) * 4);
    ++row;
  }
  return hidden;
}

Tensor LlavaNextModel::forward_embeddings(Tensor hidden) const {
  const int64_t T = hidden.dim(0);
  LB_CHECK(hidden.writable() && hidden.dim(1) == cfg_.text.hidden_size, "LLaVA-Next: embeddings of shape {}",
           hidden.shape_str());
  llm_->ensure_positions(T);
  float* h = hidden.mutable_data_as<float>();
  for (int64_t i = 0; i < cfg_.text.num_hidden_layers; ++i) llm_->run_block(i, h, 1, T, 0, llm_->forward_hooks());
  llm_->final_norm(h, T);
  Tensor logits = Tensor::empty(DType::F32, {T, cfg_.text.vocab_size});
  llm_->lm_head(h, T, logits.mutable_data_as<float>());
  return logits;
}

Tensor LlavaNextModel::forward(std::span<const int32_t> ids, std::span<const vision::ProcessedImage> images) const {
  std::vector<Tensor> feats;
  for (const auto& im : images) feats.push_back(image_features(im));
  return forward_embeddings(embed(ids, feats));
}

std::vector<int32_t> LlavaNextModel::generate(std::span<const int32_t> ids,
                                              std::span<const vision::ProcessedImage> images, int64_t max_new_tokens,
                                              std::span<const int64_t> stop_ids,
                                              const std::function<void(int32_t)>& on_token) const {
  const int64_t T = int64_t(ids.size()), H = cfg_.text.hidden_size, V = cfg_.text.vocab_size;
  const int64_t context = cfg_.text.max_position_embeddings;
  LB_CHECK(T < context, "LLaVA-Next: the prompt has {} tokens; the model's context is {}", T, context);
  std::vector<Tensor> feats;
  for (const auto& im : images) feats.push_back(image_features(im));
  Tensor hidden = embed(ids, feats);
  KvCache cache = llm_->make_kv_cache(std::min(context, T + max_new_tokens));
  llm_->run_cached(hidden.mutable_data_as<float>(), T, cache);
  std::vector<float> logits(static_cast<size_t>(V)), h(static_cast<size_t>(H));
  const float* last = hidden.data_as<float>() + (T - 1) * H;
  std::vector<int32_t> out;
  while (int64_t(out.size()) < max_new_tokens) {
    llm_->lm_head(last, 1, logits.data());
    const int32_t next = int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
    out.push_back(next);
    if (on_token) on_token(next);
    if (std::find(stop_ids.begin(), stop_ids.end(), int64_t(next)) != stop_ids.end()) break;
    if (int64_t(out.size()) == max_new_tokens || cache.length >= cache.capacity) break;
    llm_->embed(std::span<const int32_t>(&out.back(), 1), h.data());
    llm_->run_cached(h.data(), 1, cache);
    last = h.data();
  }
  return out;
}

}  // namespace lowbit
