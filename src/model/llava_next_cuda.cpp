#include "model/llava_next_cuda.h"

#include "core/error.h"
#include "model/cuda_model.h"

#include <algorithm>

namespace lowbit {

using cuda::bf16;
using cuda::DeviceBuffer;

namespace {

// Uploads a [rows, cols] host tensor (any float dtype) as bf16 at row `row0` of dst.
void upload_rows(const Tensor& t, DeviceBuffer<bf16>& dst, int64_t row0, int64_t cols, cudaStream_t s) {
  upload_as_bf16(t, dst.get() + row0 * cols, s);
}

}  // namespace

CudaClipVision::CudaClipVision(const LlavaNextModel& host, cuda::Context& ctx) : host_(host), ctx_(ctx) {
  const vision::ClipVisionTower& tw = host.vision_tower();
  const cudaStream_t s = ctx.stream();
  const int64_t D = tw.config().hidden_size;
  upload_as_bf16(tw.patch_weight(), patch_w_, s);
  upload_as_bf16(tw.class_embedding(), class_emb_, s);
  upload_as_bf16(tw.position_embedding(), pos_emb_, s);
  upload_as_bf16(tw.pre_norm_weight(), pre_w_, s);
  upload_as_bf16(tw.pre_norm_bias(), pre_b_, s);
  layers_.resize(size_t(tw.layers_loaded()));
  for (int64_t i = 0; i < tw.layers_loaded(); ++i) {
    const auto& L = tw.layer(i);
    Layer& g = layers_[size_t(i)];
    upload_as_bf16(L.ln1_w, g.ln1_w, s);
    upload_as_bf16(L.ln1_b, g.ln1_b, s);
    // q, k and v stacked into one [3D, D] product.
    g.qkv_w.resize(size_t(3 * D * D));
    g.qkv_b.resize(size_t(3 * D));
    upload_rows(L.q_w, g.qkv_w, 0, D, s);
    upload_rows(L.k_w, g.qkv_w, D, D, s);
    upload_rows(L.v_w, g.qkv_w, 2 * D, D, s);
    upload_rows(L.q_b, g.qkv_b, 0, 1, s);
    upload_rows(L.k_b, g.qkv_b, D, 1, s);
    upload_rows(L.v_b, g.qkv_b, 2 * D, 1, s);
    upload_as_bf16(L.o_w, g.o_w, s);
    upload_as_bf16(L.o_b, g.o_b, s);
    upload_as_bf16(L.ln2_w, g.ln2_w, s);
    upload_as_bf16(L.ln2_b, g.ln2_b, s);
    upload_as_bf16(L.fc1_w, g.fc1_w, s);
    upload_as_bf16(L.fc1_b, g.fc1_b, s);
    upload_as_bf16(L.fc2_w, g.fc2_w, s);
    upload_as_bf16(L.fc2_b, g.fc2_b, s);
  }
  const LlavaNextModel::Projector p = host.projector();
  upload_as_bf16(p.w1, proj1_w_, s);
  upload_as_bf16(p.w2, proj2_w_, s);
  if (p.b1.defined() && p.b1.numel() > 0) upload_as_bf16(p.b1, proj1_b_, s);
  if (p.b2.defined() && p.b2.numel() > 0) upload_as_bf16(p.b2, proj2_b_, s);
  ctx.synchronize();
}

void CudaClipVision::run(const Tensor& pixel_values, int64_t k) {
  const vision::ClipVisionConfig& c = host_.vision_tower().config();
  const std::vector<float> patches = vision::clip_patches(pixel_values, c);  // checks the shape
  LB_CHECK(k >= 0 && k <= int64_t(layers_.size()), "vision tower: hidden state {} asked, {} layers loaded", k,
           layers_.size());
  const int64_t N = pixel_values.dim(0), P = c.num_patches(), T = P + 1, rows = N * T;
  const int64_t D = c.hidden_size, F = c.intermediate_size, K = c.num_channels * c.patch_size * c.patch_size;
  const float eps = float(c.layer_norm_eps);
  const cudaStream_t s = ctx_.stream();
  tiles_ = N;
  px_.resize(patches.size());
  x_.resize(size_t(std::max(rows * D, N * P * K)));
  h_.resize(size_t(rows * D));
  f32_.resize(size_t(rows * std::max({3 * D, F, D})));
  qkv_.resize(size_t(rows * 3 * D));
  att_.resize(size_t(rows * D));
  f16_.resize(size_t(rows * F));

  // Patch embedding (the stride-p convolution as one product), class and position embeddings.
  cuda::upload(px_.get(), patches.data(), patches.size(), s);
  cuda::f32_to_bf16(px_.get(), x_.get(), int64_t(patches.size()), s);
  cuda::linear(ctx_, x_.get(), patch_w_.get(), f32_.get(), N * P, D, K);
  cuda::clip_embeddings(f32_.get(), class_emb_.get(), pos_emb_.get(), h_.get(), N, P, D, s);
  cuda::layernorm(h_.get(), pre_w_.get(), pre_b_.get(), h_.get(), nullptr, rows, D, eps, s);

  const cuda::VisionAct act = c.hidden_act == "quick_gelu" ? cuda::VisionAct::QuickGelu : cuda::VisionAct::Gelu;
  for (int64_t i = 0; i < k; ++i) {
    const Layer& L = layers_[size_t(i)];
    cuda::layernorm(h_.get(), L.ln1_w.get(), L.ln1_b.get(), nullptr, x_.get(), rows, D, eps, s);
    cuda::linear(ctx_, x_.get(), L.qkv_w.get(), f32_.get(), rows, 3 * D, D);
    cuda::bias_act(f32_.get(), L.qkv_b.get(), qkv_.get(), rows, 3 * D, cuda::VisionAct::None, s);
    cuda::attention_bidirectional(ctx_, qkv_.get(), qkv_.get() + D, qkv_.get() + 2 * D, att_.get(), N, T,
                                  c.num_attention_heads, c.head_dim(), 3 * D, 3 * D, D, attn_ws_);
    cuda::linear(ctx_, att_.get(), L.o_w.get(), h_.get(), rows, D, D, /*accumulate=*/true);
    cuda::add_bias(h_.get(), L.o_b.get(), rows, D, s);
    cuda::layernorm(h_.get(), L.ln2_w.get(), L.ln2_b.get(), nullptr, x_.get(), rows, D, eps, s);
    cuda::linear(ctx_, x_.get(), L.fc1_w.get(), f32_.get(), rows, F, D);
    cuda::bias_act(f32_.get(), L.fc1_b.get(), f16_.get(), rows, F, act, s);
    cuda::linear(ctx_, f16_.get(), L.fc2_w.get(), h_.get(), rows, D, F, /*accumulate=*/true);
    cuda::add_bias(h_.get(), L.fc2_b.get(), rows, D, s);
  }
}

Tensor CudaClipVision::hidden_states(const Tensor& pixel_values, int64_t k) {
  run(pixel_values, k);
  const int64_t D = host_.vision_tower().config().hidden_size;
  const int64_t rows = tiles_ * (host_.vision_tower().config().num_patches() + 1);
  Tensor out = Tensor::empty(DType::F32, {rows, D});
  cuda::download(out.mutable_data_as<float>(), h_.get(), size_t(rows * D), ctx_.stream());
  return out;
}

Tensor CudaClipVision::projected_tiles(const vision::ProcessedImage& image) {
  const LlavaNextConfig& cfg = host_.config();
  const int64_t P = cfg.vision.num_patches(), Dv = cfg.vision.hidden_size, H = cfg.text.hidden_size;
  llava_next_tile_grid(cfg, image);  // the tile count, before any GPU work
  run(image.pixel_values, cfg.feature_layers());
  const int64_t n = tiles_ * P;
  const cudaStream_t s = ctx_.stream();
  // Each tile's rows after its CLS token ("default"), contiguous in h_.
  x_.resize(size_t(n * Dv));
  for (int64_t t = 0; t < tiles_; ++t)
    cuda::f32_to_bf16(h_.get() + (t * (P + 1) + 1) * Dv, x_.get() + t * P * Dv, P * Dv, s);
  f32_.resize(size_t(n * H));
  f16_.resize(size_t(n * H));
  cuda::linear(ctx_, x_.get(), proj1_w_.get(), f32_.get(), n, H, Dv);
  cuda::bias_act(f32_.get(), proj1_b_.get(), f16_.get(), n, H, cuda::VisionAct::Gelu, s);
  cuda::linear(ctx_, f16_.get(), proj2_w_.get(), f32_.get(), n, H, H);
  if (proj2_b_.get() != nullptr) cuda::add_bias(f32_.get(), proj2_b_.get(), n, H, s);
  Tensor out = Tensor::empty(DType::F32, {n, H});
  cuda::download(out.mutable_data_as<float>(), f32_.get(), size_t(n * H), s);
  return out;
}

Tensor CudaClipVision::image_features(const vision::ProcessedImage& image) {
  return host_.pack_image_features(image, projected_tiles(image));
}

namespace {

class CudaLlavaNextRunner final : public LlavaNextRunner {
 public:
  CudaLlavaNextRunner(const LlavaNextModel& m, int device)
      : model_(m),
        ctx_(std::make_unique<cuda::Context>(device)),
        vision_(m, *ctx_),
        // The language model's quantized linears run packed when `--packed` set the factory
        // (as the evaluation sessions' CudaModels do); otherwise every linear runs from bf16.
        llm_(m.language_model(), *ctx_, std::nullopt, gpu_packed_linears(m.language_model(), ctx_->stream())),
        logits_(static_cast<size_t>(kChunk * m.config().text.vocab_size)) {}

  std::string device_name() const override { return ctx_->name(); }

  Tensor image_features(const vision::ProcessedImage& image) override { return vision_.image_features(image); }

  Tensor forward(std::span<const int32_t> ids, std::span<const vision::ProcessedImage> images) override {
    const int64_t T = int64_t(ids.size()), V = model_.config().text.vocab_size, H = model_.config().text.hidden_size;
    const Tensor hidden = embeddings(ids, images);
    GpuKvCache cache = llm_.make_kv_cache(T);
    llm_.forward_embeddings_cached(hidden.data_as<float>(), T, cache, normed_);
    Tensor out = Tensor::empty(DType::F32, {T, V});
    // The head in chunks of rows: a long prompt's logits need not fit on the GPU at once.
    for (int64_t r0 = 0; r0 < T; r0 += kChunk) {
      const int64_t n = std::min(kChunk, T - r0);
      llm_.lm_head(normed_.get() + r0 * H, logits_.get(), n);
      cuda::download(out.mutable_data_as<float>() + r0 * V, logits_.get(), size_t(n * V), ctx_->stream());
    }
    return out;
  }

  std::vector<int32_t> generate(std::span<const int32_t> ids, std::span<const vision::ProcessedImage> images,
                                int64_t max_new_tokens, std::span<const int64_t> stop_ids,
                                const std::function<void(int32_t)>& on_token) override {
    const LlamaConfig& c = model_.config().text;
    const int64_t T = int64_t(ids.size()), H = c.hidden_size, V = c.vocab_size;
    LB_CHECK(T < c.max_position_embeddings, "LLaVA-Next: the prompt has {} tokens; the model's context is {}", T,
             c.max_position_embeddings);
    const Tensor hidden = embeddings(ids, images);
    GpuKvCache cache = llm_.make_kv_cache(std::min(c.max_position_embeddings, T + max_new_tokens));
    llm_.forward_embeddings_cached(hidden.data_as<float>(), T, cache, normed_);
    std::vector<float> logits(static_cast<size_t>(V));
    const bf16* last = normed_.get() + (T - 1) * H;
    std::vector<int32_t> out;
    while (int64_t(out.size()) < max_new_tokens) {
      llm_.lm_head(last, logits_.get(), 1);
      cuda::download(logits.data(), logits_.get(), size_t(V), ctx_->stream());
      const int32_t next = int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
      out.push_back(next);
      if (on_token) on_token(next);
      if (std::find(stop_ids.begin(), stop_ids.end(), int64_t(next)) != stop_ids.end()) break;
      if (int64_t(out.size()) == max_new_tokens || cache.length >= cache.capacity) break;
      llm_.forward_cached(std::span<const int32_t>(&out.back(), 1), cache, normed_);
      last = normed_.get();
    }
    return out;
  }

  std::optional<double> peak_memory_bytes() const override { return double(cuda::peak_device_bytes()); }

 private:
  static constexpr int64_t kChunk = 256;
  // The token embeddings with the images' features (computed here) spliced in, on the host.
  Tensor embeddings(std::span<const int32_t> ids, std::span<const vision::ProcessedImage> images) {
    std::vector<Tensor> feats;
    for (const auto& im : images) feats.push_back(vision_.image_features(im));
    return model_.embed(ids, feats);
  }

  const LlavaNextModel& model_;
  std::unique_ptr<cuda::Context> ctx_;
  CudaClipVision vision_;
  CudaModel llm_;
  DeviceBuffer<float> logits_;
  DeviceBuffer<bf16> normed_;
};

}  // namespace

std::unique_ptr<LlavaNextRunner> make_cuda_llava_next_runner(const LlavaNextModel& model, int device) {
  return std::make_unique<CudaLlavaNextRunner>(model, device);
}

}  // namespace lowbit
