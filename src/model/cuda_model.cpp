#include "model/cuda_model.h"

#include "core/error.h"
#include "model/llama_block.h"

#include <algorithm>
#include <cstring>
#include <memory>

namespace lowbit {

using cuda::bf16;
using cuda::DeviceBuffer;


void upload_as_bf16(const Tensor& t, bf16* dst, cudaStream_t s) {
  LB_ASSERT(t.is_contiguous());
  const int64_t n = t.numel();
  // Through the pinned staging buffers, a piece at a time, on all cores: bf16 values copied,
  // others rounded to bf16 (fp32 read in place; other dtypes widened to fp32 first).
  const uint16_t* b16 = t.dtype() == DType::BF16 ? t.data_as<uint16_t>() : nullptr;
  Tensor wide;  // fp32 values of a tensor in another dtype
  if (b16 == nullptr && t.dtype() != DType::F32) wide = t.to_f32();
  const float* p = b16 != nullptr ? nullptr : t.dtype() == DType::F32 ? t.data_as<float>() : wide.data_as<float>();
  cuda::upload_staged(dst, sizeof(bf16), size_t(n), [&](size_t i0, size_t i1, void* out) {
    auto* o = static_cast<uint16_t*>(out);
    const int64_t m = int64_t(i1 - i0);
    if (b16 != nullptr) {
#pragma omp parallel for schedule(static) if (m > 65536)
      for (int64_t i = 0; i < m; ++i) o[i] = b16[int64_t(i0) + i];
    } else {
#pragma omp parallel for schedule(static) if (m > 65536)
      for (int64_t i = 0; i < m; ++i) o[i] = f32_to_bf16(p[int64_t(i0) + i]);
    }
  }, s);
}

void upload_as_bf16(const Tensor& t, DeviceBuffer<bf16>& dst, cudaStream_t s) {
  dst.resize(size_t(t.numel()));
  upload_as_bf16(t, dst.get(), s);
}

namespace {
GpuPackedFactory& packed_factory() {
  static GpuPackedFactory f;
  return f;
}
}  // namespace

void set_gpu_packed_factory(GpuPackedFactory f) { packed_factory() = std::move(f); }

GpuPackedLinears gpu_packed_linears(const LlamaModel& model, cudaStream_t s) {
  return packed_factory() ? packed_factory()(model, s) : GpuPackedLinears{};
}

CudaModel::CudaModel(const LlamaModel& host, cuda::Context& ctx, std::optional<bool> resident,
                     GpuPackedLinears packed)
    : host_(host), ctx_(ctx), packed_(std::move(packed)) {
  w4ws_.blas = ctx.cublas();
  const LlamaConfig& c = host.config();
  const nlohmann::json& q = host.checkpoint().quantization;
  act_ = parse_activation_scheme(q.is_object() ? q.value("activation", nlohmann::json(nullptr)) : nlohmann::json(nullptr));
  // The only forward hooks a model carries into an evaluation are its activation quantization's.
  LB_CHECK(host.forward_hooks() == nullptr || act_.has_value(),
           "the GPU forward applies a checkpoint's activation quantization, not other forward hooks");
  const WeightSource& ws = *host.checkpoint().weights;
  const cudaStream_t s = ctx.stream();
  // A packed model keeps its token embedding on the host when the LM head is a separate matrix
  // (a lookup reads n rows, not the [V, H] table: 1.05 GB of bf16 at LLaMA-3-8B's vocabulary
  // that the GPU need not hold); the rows are gathered there in bf16 and widened on the GPU,
  // the very values the device table would give.
  if (packed_ && !c.tie_word_embeddings) {
    const Tensor e = ws.get(hf_tensor_name(TensorKind::TokenEmbd));
    LB_ASSERT(e.is_contiguous());
    if (e.dtype() == DType::BF16) {
      embed_host_ = e;  // the loaded table itself (a view; no copy)
    } else {
      embed_host_ = Tensor::empty(DType::BF16, e.shape());
      const Tensor f = e.dtype() == DType::F32 ? e : e.to_f32();
      const float* p = f.data_as<float>();
      uint16_t* d = embed_host_.mutable_data_as<uint16_t>();
      for (int64_t i = 0; i < e.numel(); ++i) d[i] = f32_to_bf16(p[i]);
    }
  } else {
    upload_as_bf16(ws.get(hf_tensor_name(TensorKind::TokenEmbd)), embed_, s);
  }
  upload_as_bf16(ws.get(hf_tensor_name(TensorKind::OutputNorm)), final_norm_w_, s);
  if (!c.tie_word_embeddings) upload_as_bf16(ws.get(hf_tensor_name(TensorKind::Output)), lm_head_, s);
  // RoPE tables for the model's whole context.
  rope_positions_ = std::max<int64_t>(c.max_position_embeddings, 1);
  host.ensure_positions(rope_positions_);
  const RopeTable rt = make_rope_table(c, rope_positions_);
  rope_cos_.resize(rt.cos.size());
  rope_sin_.resize(rt.sin.size());
  cuda::upload(rope_cos_.get(), rt.cos.data(), rt.cos.size(), s);
  cuda::upload(rope_sin_.get(), rt.sin.data(), rt.sin.size(), s);
  // Residency: every block's bf16 weights under 70% of the free memory.
  int64_t per_block = 2 * c.hidden_size;
  per_block += c.hidden_size * (2 * c.q_dim() + 2 * c.kv_dim()) + 3 * c.hidden_size * c.intermediate_size;
  const double total = double(per_block) * 2.0 * double(c.num_hidden_layers);
  size_t free_b = 0, total_b = 0;
  LB_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
  // Packed linears are packed and uploaded once, so their blocks stay.
  resident_ = packed_ ? true : resident.value_or(total < 0.7 * double(free_b));
  if (resident_) {
    blocks_.resize(size_t(c.num_hidden_layers));
    for (int64_t i = 0; i < c.num_hidden_layers; ++i) upload_block(i, blocks_[size_t(i)]);
  }
  ctx.synchronize();
}

void CudaModel::upload_block(int64_t i, GpuBlockWeights& w) const {
  using K = LinearKind;
  const LlamaConfig& c = config();
  const WeightSource& ws = *host_.checkpoint().weights;
  const cudaStream_t s = ctx_.stream();
  const int64_t H = c.hidden_size, F = c.intermediate_size, qd = c.q_dim(), kvd = c.kv_dim();
  upload_as_bf16(ws.get(hf_tensor_name(TensorKind::AttnNorm, i)), w.input_norm, s);
  upload_as_bf16(ws.get(hf_tensor_name(TensorKind::FfnNorm, i)), w.post_norm, s);
  w.packed = {};
  if (packed_)
    for (K k : kAllLinears) w.packed[size_t(k)] = packed_(i, k);
  auto is_packed = [&](K k) { return w.packed[size_t(k)] != nullptr; };
  LB_CHECK(is_packed(K::Q) == is_packed(K::K) && is_packed(K::Q) == is_packed(K::V),
           "block {}: q_proj, k_proj and v_proj are packed in part (q {}, k {}, v {}); the GPU runs them as one group",
           i, is_packed(K::Q), is_packed(K::K), is_packed(K::V));
  LB_CHECK(is_packed(K::Gate) == is_packed(K::Up),
           "block {}: gate_proj and up_proj are packed in part (gate {}, up {}); the GPU runs them as one group", i,
           is_packed(K::Gate), is_packed(K::Up));
  w.linear = {};
  if (!is_packed(K::Q)) {
    w.qkv.resize(size_t((qd + 2 * kvd) * H));
    w.linear[size_t(K::Q)] = w.qkv.get();
    w.linear[size_t(K::K)] = w.qkv.get() + qd * H;
    w.linear[size_t(K::V)] = w.qkv.get() + (qd + kvd) * H;
  }
  if (!is_packed(K::O)) {
    w.o.resize(size_t(H * qd));
    w.linear[size_t(K::O)] = w.o.get();
  }
  if (!is_packed(K::Gate)) {
    w.gate_up.resize(size_t(2 * F * H));
    w.linear[size_t(K::Gate)] = w.gate_up.get();
    w.linear[size_t(K::Up)] = w.gate_up.get() + F * H;
  }
  if (!is_packed(K::Down)) {
    w.down.resize(size_t(H * F));
    w.linear[size_t(K::Down)] = w.down.get();
  }
  for (K k : kAllLinears) {
    const int64_t rows = linear_out_features(c, k), cols = linear_in_features(c, k);
    if (const cuda::PackedWeight* p = w.packed_linear(k)) {
      LB_CHECK(p->n() == rows && p->k() == cols, "{}: packed weight [{}, {}], the config implies [{}, {}]",
               linear_weight_name(i, k), p->n(), p->k(), rows, cols);
      continue;
    }
    const Tensor t = ws.get(linear_weight_name(i, k));
    LB_CHECK(t.numel() == rows * cols, "{}: {} elements, the config implies [{}, {}]", linear_weight_name(i, k),
             t.numel(), rows, cols);
    upload_as_bf16(t, w[k], s);
  }
}

void CudaModel::upload_weights(const BlockWeights& host, GpuBlockWeights& w, std::span<const LinearKind> only) const {
  using K = LinearKind;
  const LlamaConfig& c = config();
  const cudaStream_t s = ctx_.stream();
  const int64_t H = c.hidden_size, F = c.intermediate_size, qd = c.q_dim(), kvd = c.kv_dim();
  if (only.empty()) {
    upload_as_bf16(host.input_norm, w.input_norm, s);
    upload_as_bf16(host.post_norm, w.post_norm, s);
    w.packed = {};
    w.linear = {};
    w.qkv.resize(size_t((qd + 2 * kvd) * H));
    w.linear[size_t(K::Q)] = w.qkv.get();
    w.linear[size_t(K::K)] = w.qkv.get() + qd * H;
    w.linear[size_t(K::V)] = w.qkv.get() + (qd + kvd) * H;
    w.o.resize(size_t(H * qd));
    w.linear[size_t(K::O)] = w.o.get();
    w.gate_up.resize(size_t(2 * F * H));
    w.linear[size_t(K::Gate)] = w.gate_up.get();
    w.linear[size_t(K::Up)] = w.gate_up.get() + F * H;
    w.down.resize(size_t(H * F));
    w.linear[size_t(K::Down)] = w.down.get();
    only = kAllLinears;
  }
  for (K k : only) {
    const int64_t rows = linear_out_features(c, k), cols = linear_in_features(c, k);
    LB_CHECK(w[k] != nullptr, "{}: no bf16 matrix to upload into", linear_name(k));
    LB_CHECK(host[k].numel() == rows * cols, "layer weights: {} has {} elements, the config implies [{}, {}]",
             linear_name(k), host[k].numel(), rows, cols);
    upload_as_bf16(host[k], w[k], s);
  }
}

const GpuBlockWeights& CudaModel::block(int64_t i, GpuBlockWeights& scratch) const {
  if (resident_) return blocks_[size_t(i)];
  upload_block(i, scratch);
  return scratch;
}

void CudaModel::ensure_workspace(int64_t rows) {
  if (rows <= ws_rows_) return;
  const LlamaConfig& c = config();
  x_.resize(size_t(rows * c.hidden_size));
  qkv_.resize(size_t(rows * (c.q_dim() + 2 * c.kv_dim())));
  att_.resize(size_t(rows * c.q_dim()));
  gate_up_.resize(size_t(rows * 2 * c.intermediate_size));
  if (act_) {
    xa_.resize(size_t(rows * c.hidden_size));
    act_seg_.resize(size_t(rows));
  }
  ws_rows_ = rows;
}

void CudaModel::embed(const int32_t* tokens, int64_t n, float* hidden) {
  const LlamaConfig& c = config();
  for (int64_t i = 0; i < n; ++i)
    LB_CHECK(tokens[i] >= 0 && tokens[i] < c.vocab_size, "token id {} at position {} is outside the vocabulary "
             "(size {})", tokens[i], i, c.vocab_size);
  const int64_t H = c.hidden_size;
  if (embedding_on_host()) {
    const uint16_t* table = embed_host_.data_as<uint16_t>();
    std::vector<uint16_t> rows(size_t(n * H));
    for (int64_t i = 0; i < n; ++i)
      std::memcpy(rows.data() + i * H, table + int64_t(tokens[i]) * H, size_t(H) * sizeof(uint16_t));
    embed_rows_.resize(rows.size());
    cuda::upload(embed_rows_.get(), reinterpret_cast<const bf16*>(rows.data()), rows.size(), ctx_.stream());
    cuda::bf16_to_f32(embed_rows_.get(), hidden, n * H, ctx_.stream());
    LB_CUDA_CHECK(cudaStreamSynchronize(ctx_.stream()));  // rows is a temporary
    return;
  }
  ids_.resize(size_t(n));
  cuda::upload(ids_.get(), tokens, size_t(n), ctx_.stream());
  cuda::embed(ids_.get(), embed_.get(), hidden, n, H, ctx_.stream());
}

void CudaModel::enable_profile() {
  if (!profile_) profile_ = std::make_unique<cuda::OpProfile>(ctx_.stream());
}

void CudaModel::quantize_input(int64_t layer, LinearKind k, bf16* x, int64_t B, int64_t T, int64_t cols,
                               int64_t ld) {
  const bool per_tensor = act_->granularity == ActivationScheme::Granularity::PerTensor;
  const float scale =
      act_->granularity == ActivationScheme::Granularity::PerTensorStatic ? act_->static_scale(layer, k) : 0.0f;
  cuda::fake_quantize(x, B * T, cols, ld, act_->bits, per_tensor ? T : 1, scale, act_seg_.get(), ctx_.stream());
}

void CudaModel::grouped_linear(int64_t layer, std::span<const LinearKind> kinds, const GpuBlockWeights& w,
                               const bf16* stacked, bf16* x, bf16* out, int64_t B, int64_t T) {
  const LlamaConfig& c = config();
  const int64_t H = c.hidden_size, N = B * T;
  int64_t rows_total = 0;
  for (LinearKind k : kinds) rows_total += linear_out_features(c, k);
  // Linears sharing an input with one static scale each (the CPU hooks quantize a copy of the
  // input per linear): one product per linear; otherwise the input is quantized once and the
  // stacked product runs.
  bool one_input = !act_ || act_->granularity != ActivationScheme::Granularity::PerTensorStatic;
  if (!one_input) {
    one_input = true;
    for (LinearKind k : kinds) one_input = one_input && act_->static_scale(layer, k) == act_->static_scale(layer, kinds[0]);
  }
  // Packed linears run one product each, into their columns of the stacked output.
  const bool packed = w.packed_linear(kinds[0]) != nullptr;
  if (one_input) {
    if (act_) quantize_input(layer, kinds[0], x, B, T, H, H);
    if (!packed) {
      cuda::linear(ctx_, x, stacked, out, N, rows_total, H);
      return;
    }
  }
  int64_t col = 0;
  for (LinearKind k : kinds) {
    const int64_t rows = linear_out_features(c, k);
    const bf16* xk = x;
    if (!one_input) {
      LB_CUDA_CHECK(cudaMemcpyAsync(xa_.get(), x, size_t(N * H) * sizeof(bf16), cudaMemcpyDeviceToDevice,
                                    ctx_.stream()));
      quantize_input(layer, k, xa_.get(), B, T, H, H);
      xk = xa_.get();
    }
    if (packed)
      cuda::packed_linear(*w.packed_linear(k), xk, out + col, N, w4ws_, ctx_.stream(), /*lda=*/H, /*ldc=*/rows_total);
    else
      cuda::linear(ctx_, xk, w[k], out + col, N, rows, H, /*lda=*/H, /*ldc=*/rows_total);
    col += rows;
  }
}

// The block's steps (model/llama_block.h) on the GPU: bf16 GEMMs into the model's workspace, the
// residual stream fp32. The projections that end a half (o_proj, down_proj) add into their output
// in the GEMM's epilogue when accumulating (a whole block: into the residual stream), so the
// Residual step has nothing left to do.
class GpuBlockOps final : public BlockOps {
 public:
  GpuBlockOps(CudaModel& m, int64_t layer, const GpuBlockWeights& w, int64_t B, int64_t T, GpuKvCache* cache,
              const CudaModel::SiteInput* on_input)
      : m_(m), c_(m.config()), layer_(layer), w_(w), B_(B), T_(T), N_(B * T), cache_(cache), on_input_(on_input) {}

  // A whole block on hidden (fp32 [N, H], device), the normed input in the model's workspace.
  void set_hidden(float* hidden) {
    hidden_ = hidden;
    x_ = m_.x_.get();
    out_ = hidden;
    accumulate_ = true;
  }
  // One half on a normed input x (bf16 [N, H], device; the half may quantize it in place):
  // out = the half's output, or out += it with accumulate.
  void set_half(bf16* x, float* out, bool accumulate) {
    x_ = x;
    out_ = out;
    accumulate_ = accumulate;
  }

  void norm(BlockHalf h) override {
    m_.mark("rmsnorm");
    const bf16* weight = h == BlockHalf::Attention ? w_.input_norm.get() : w_.post_norm.get();
    cuda::rmsnorm(hidden_, weight, x_, N_, c_.hidden_size, float(c_.rms_norm_eps), m_.ctx_.stream());
  }

  void hooks(InputSite s) override {
    if (!on_input_) return;
    const int64_t H = c_.hidden_size, F = c_.intermediate_size, qd = c_.q_dim();
    switch (s) {
      case InputSite::AttnIn: (*on_input_)(LinearKind::Q, x_, N_, H, H); break;
      case InputSite::AttnOut: (*on_input_)(LinearKind::O, m_.att_.get(), N_, qd, qd); break;
      case InputSite::MlpIn: (*on_input_)(LinearKind::Gate, x_, N_, H, H); break;
      case InputSite::MlpOut: (*on_input_)(LinearKind::Down, m_.gate_up_.get(), N_, F, 2 * F); break;
    }
  }

  void products(InputSite s) override {
    static constexpr LinearKind kQkv[] = {LinearKind::Q, LinearKind::K, LinearKind::V};
    static constexpr LinearKind kGateUp[] = {LinearKind::Gate, LinearKind::Up};
    const int64_t F = c_.intermediate_size, qd = c_.q_dim();
    switch (s) {
      case InputSite::AttnIn:
        m_.mark("qkv_proj");
        m_.grouped_linear(layer_, kQkv, w_, w_.qkv.get(), x_, m_.qkv_.get(), B_, T_);
        break;
      case InputSite::AttnOut:
        m_.mark(accumulate_ ? "o_proj (+ residual)" : "o_proj");
        output_product(LinearKind::O, m_.att_.get(), qd, qd);
        break;
      case InputSite::MlpIn:
        m_.mark("gate_up_proj");
        m_.grouped_linear(layer_, kGateUp, w_, w_.gate_up.get(), x_, m_.gate_up_.get(), B_, T_);
        break;
      case InputSite::MlpOut:
        m_.mark(accumulate_ ? "down_proj (+ residual)" : "down_proj");
        output_product(LinearKind::Down, m_.gate_up_.get(), F, 2 * F);
        break;
    }
  }

  void attention() override {
    const int64_t T = T_, nh = c_.num_attention_heads, nkv = c_.num_key_value_heads, hd = c_.head_dim;
    const int64_t qd = c_.q_dim(), kvd = c_.kv_dim(), ldqkv = qd + 2 * kvd;
    const cudaStream_t s = m_.ctx_.stream();
    const int64_t past = cache_ ? cache_->length : 0;
    bf16* qkv = m_.qkv_.get();
    // Under a CUDA graph's capture (CudaDecodeGraph) the position is read from the device.
    const int32_t* past_dev = cache_ ? m_.device_past_ : nullptr;
    // Rows of qkv_ are [q | k | v]. RoPE here on k; attention rotates q as it reads it.
    m_.mark("rope_k");
    cuda::rope(qkv + qd, B_, T, nkv, hd, ldqkv, m_.rope_cos_.get(), m_.rope_sin_.get(), past, s, past_dev);
    const bf16* kall = qkv + qd;
    const bf16* vall = qkv + qd + kvd;
    int64_t ldk = ldqkv;
    if (cache_) {
      LB_ASSERT(B_ == 1 && past + T <= cache_->capacity);
      m_.mark("kv_cache");
      if (past_dev != nullptr) {
        cuda::kv_append(kall, vall, ldqkv, cache_->k[size_t(layer_)].get(), cache_->v[size_t(layer_)].get(), kvd, T,
                        past_dev, s);
      } else {
        const size_t row = size_t(kvd) * sizeof(bf16), pitch = size_t(ldqkv) * sizeof(bf16);
        LB_CUDA_CHECK(cudaMemcpy2DAsync(cache_->k[size_t(layer_)].get() + past * kvd, row, kall, pitch, row, size_t(T),
                                        cudaMemcpyDeviceToDevice, s));
        LB_CUDA_CHECK(cudaMemcpy2DAsync(cache_->v[size_t(layer_)].get() + past * kvd, row, vall, pitch, row, size_t(T),
                                        cudaMemcpyDeviceToDevice, s));
      }
      kall = cache_->k[size_t(layer_)].get();
      vall = cache_->v[size_t(layer_)].get();
      ldk = kvd;
    }
    m_.mark("attention");
    cuda::attention(qkv, kall, vall, m_.att_.get(), B_, T, past, nh, nkv, hd, ldqkv, ldk, qd, s, m_.rope_cos_.get(),
                    m_.rope_sin_.get(), past_dev);
  }

  void swiglu() override {
    m_.mark("swiglu");
    cuda::swiglu_rows(m_.gate_up_.get(), N_, c_.intermediate_size, m_.ctx_.stream());
  }

  void residual(BlockHalf) override {}

 private:
  // o_proj or down_proj on its input a [N, cols] (row stride lda), quantized in place under an
  // activation scheme: out = or += a W^T.
  void output_product(LinearKind k, bf16* a, int64_t cols, int64_t lda) {
    const int64_t H = c_.hidden_size;
    const cudaStream_t s = m_.ctx_.stream();
    if (m_.act_) m_.quantize_input(layer_, k, a, B_, T_, cols, lda);
    if (const cuda::PackedWeight* p = w_.packed_linear(k)) {
      if (!accumulate_) LB_CUDA_CHECK(cudaMemsetAsync(out_, 0, size_t(N_ * H) * sizeof(float), s));
      cuda::packed_linear_accumulate(*p, a, out_, N_, m_.w4ws_, s, /*lda=*/lda, /*ldc=*/H);
    } else {
      cuda::linear(m_.ctx_, a, w_[k], out_, N_, H, cols, accumulate_, /*lda=*/lda);
    }
  }

  CudaModel& m_;
  const LlamaConfig& c_;
  const int64_t layer_;
  const GpuBlockWeights& w_;
  const int64_t B_, T_, N_;
  GpuKvCache* cache_;
  const CudaModel::SiteInput* on_input_;
  float* hidden_ = nullptr;
  bf16* x_ = nullptr;
  float* out_ = nullptr;
  bool accumulate_ = true;
};

void CudaModel::attention_part(int64_t layer, const GpuBlockWeights& w, bf16* x, float* out, int64_t B, int64_t T,
                               bool accumulate, GpuKvCache* cache, const SiteInput* on_input,
                               std::optional<InputSite> stop_after) {
  const int64_t past = cache ? cache->length : 0;
  LB_CHECK(past + T <= rope_positions_, "positions up to {} exceed the model's context {}", past + T, rope_positions_);
  ensure_workspace(B * T);
  GpuBlockOps ops(*this, layer, w, B, T, cache, on_input);
  ops.set_half(x, out, accumulate);
  run_block_steps(ops, half_steps(BlockHalf::Attention), stop_after);
}

void CudaModel::mlp_part(int64_t layer, const GpuBlockWeights& w, bf16* x, float* out, int64_t B, int64_t T,
                         bool accumulate, const SiteInput* on_input, std::optional<InputSite> stop_after) {
  ensure_workspace(B * T);
  GpuBlockOps ops(*this, layer, w, B, T, nullptr, on_input);
  ops.set_half(x, out, accumulate);
  run_block_steps(ops, half_steps(BlockHalf::Mlp), stop_after);
}

void CudaModel::run_block(int64_t layer, const GpuBlockWeights& w, float* hidden, int64_t B, int64_t T,
                          GpuKvCache* cache, const SiteInput* on_input, std::optional<InputSite> stop_after) {
  const int64_t past = cache ? cache->length : 0;
  LB_CHECK(past + T <= rope_positions_, "positions up to {} exceed the model's context {}", past + T, rope_positions_);
  ensure_workspace(B * T);
  GpuBlockOps ops(*this, layer, w, B, T, cache, on_input);
  ops.set_hidden(hidden);
  run_block_steps(ops, block_steps(), stop_after);
}

void CudaModel::final_norm(const float* hidden, bf16* out, int64_t rows) {
  cuda::rmsnorm(hidden, final_norm_w_.get(), out, rows, config().hidden_size, float(config().rms_norm_eps),
                ctx_.stream());
}

void CudaModel::lm_head(const bf16* rows, float* logits, int64_t n) {
  const LlamaConfig& c = config();
  cuda::linear(ctx_, rows, c.tie_word_embeddings ? embed_.get() : lm_head_.get(), logits, n, c.vocab_size,
               c.hidden_size);
}

std::vector<double> CudaModel::window_nll(const std::vector<std::vector<int32_t>>& windows, int64_t batch) {
  const LlamaConfig& c = config();
  const int64_t H = c.hidden_size, V = c.vocab_size;
  LB_CHECK(!windows.empty(), "no windows");
  const int64_t T = int64_t(windows[0].size());
  LB_CHECK(T >= 2, "windows of {} tokens: need at least 2", T);
  for (const auto& w : windows) LB_CHECK(int64_t(w.size()) == T, "windows differ in length");
  batch = std::max<int64_t>(1, batch);
  const cudaStream_t s = ctx_.stream();
  hidden_.resize(size_t(batch * T * H));
  // LM head in chunks of rows, at most ~1 GiB of fp32 logits at a time.
  const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(T - 1, (int64_t(1) << 28) / V));
  logits_.resize(size_t(chunk * V));
  nll_.resize(size_t(batch * (T - 1)));
  targets_.resize(size_t(batch * (T - 1)));
  std::vector<int32_t> ids, targets;
  std::vector<float> nll_host;
  std::vector<double> out;
  GpuBlockWeights scratch;
  for (size_t b0 = 0; b0 < windows.size(); b0 += size_t(batch)) {
    const int64_t nb = std::min<int64_t>(batch, int64_t(windows.size() - b0));
    ids.clear();
    targets.clear();
    for (int64_t b = 0; b < nb; ++b) {
      const std::vector<int32_t>& w = windows[b0 + size_t(b)];
      ids.insert(ids.end(), w.begin(), w.end());
      targets.insert(targets.end(), w.begin() + 1, w.end());
    }
    mark("embed");
    cuda::upload(targets_.get(), targets.data(), targets.size(), s);
    embed(ids.data(), nb * T, hidden_.get());
    for (int64_t i = 0; i < c.num_hidden_layers; ++i) run_block(i, block(i, scratch), hidden_.get(), nb, T);
    mark("final_norm");
    final_norm(hidden_.get(), x_.get(), nb * T);
    for (int64_t b = 0; b < nb; ++b) {
      for (int64_t r0 = 0; r0 < T - 1; r0 += chunk) {
        const int64_t rows = std::min(chunk, T - 1 - r0), at = b * (T - 1) + r0;
        mark("lm_head");
        lm_head(x_.get() + (b * T + r0) * H, logits_.get(), rows);
        mark("nll");
        cuda::nll_rows(logits_.get(), targets_.get() + at, nll_.get() + at, nullptr, rows, V, s);
      }
    }
    mark("download");
    nll_host.resize(size_t(nb * (T - 1)));
    cuda::download(nll_host.data(), nll_.get(), nll_host.size(), s);
    if (profile_) profile_->collect();
    for (int64_t b = 0; b < nb; ++b) {
      double sum = 0;
      for (int64_t r = 0; r < T - 1; ++r) sum += double(nll_host[size_t(b * (T - 1) + r)]);
      out.push_back(sum / double(T - 1));
    }
  }
  return out;
}

void CudaModel::forward_rows(const int32_t* ids, int64_t B, int64_t T, const std::vector<int32_t>& rows,
                             DeviceBuffer<bf16>& out) {
  const LlamaConfig& c = config();
  const int64_t H = c.hidden_size, n = int64_t(rows.size());
  for (int32_t r : rows) LB_CHECK(r >= 0 && r < B * T, "row {} outside the batch of {} x {} positions", r, B, T);
  const cudaStream_t s = ctx_.stream();
  hidden_.resize(size_t(B * T * H));
  mark("embed");
  embed(ids, B * T, hidden_.get());
  GpuBlockWeights scratch;
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) run_block(i, block(i, scratch), hidden_.get(), B, T);
  mark("final_norm");
  final_norm(hidden_.get(), x_.get(), B * T);
  // The scored rows of the normed states: the embedding lookup is that gather (into fp32, which
  // holds bf16 exactly), then back to bf16.
  targets_.resize(size_t(n));
  cuda::upload(targets_.get(), rows.data(), size_t(n), s);
  logits_.resize(size_t(n * H));
  cuda::embed(targets_.get(), x_.get(), logits_.get(), n, H, s);
  out.resize(size_t(n * H));
  cuda::f32_to_bf16(logits_.get(), out.get(), n * H, s);
}

GpuKvCache CudaModel::make_kv_cache(int64_t capacity) const {
  const LlamaConfig& c = config();
  KvPositions::check_capacity(capacity, rope_positions_);
  GpuKvCache kv;
  kv.capacity = capacity;
  kv.k.resize(size_t(c.num_hidden_layers));
  kv.v.resize(size_t(c.num_hidden_layers));
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    kv.k[size_t(i)].resize(size_t(capacity * c.kv_dim()));
    kv.v[size_t(i)].resize(size_t(capacity * c.kv_dim()));
  }
  return kv;
}

void CudaModel::forward_cached(std::span<const int32_t> tokens, GpuKvCache& cache, DeviceBuffer<bf16>& normed) {
  const int64_t T = int64_t(tokens.size()), H = config().hidden_size;
  LB_CHECK(T > 0, "forward_cached: no tokens");
  DeviceBuffer<float> hidden(static_cast<size_t>(T * H));
  embed(tokens.data(), T, hidden.get());
  run_cached(hidden.get(), T, cache, normed);
}

void CudaModel::forward_embeddings_cached(const float* hidden_host, int64_t T, GpuKvCache& cache,
                                         DeviceBuffer<bf16>& normed) {
  const int64_t H = config().hidden_size;
  LB_CHECK(T > 0, "forward_embeddings_cached: no positions");
  DeviceBuffer<float> hidden(static_cast<size_t>(T * H));
  cuda::upload(hidden.get(), hidden_host, size_t(T * H), ctx_.stream());
  run_cached(hidden.get(), T, cache, normed);
}

void CudaModel::run_cached(float* hidden, int64_t T, GpuKvCache& cache, DeviceBuffer<bf16>& normed) {
  const LlamaConfig& c = config();
  const int64_t H = c.hidden_size;
  cache.check_room(T);
  GpuBlockWeights scratch;
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) run_block(i, block(i, scratch), hidden, 1, T, &cache);
  cache.length += T;
  normed.resize(size_t(T * H));
  final_norm(hidden, normed.get(), T);
}

void CudaModel::score_rows(const bf16* rows, const int32_t* targets_host, int64_t n, double* loglik, bool* greedy) {
  const int64_t V = config().vocab_size;
  DeviceBuffer<float> logits(static_cast<size_t>(n * V)), nll(static_cast<size_t>(n));
  DeviceBuffer<int32_t> targets(static_cast<size_t>(n)), argmax(static_cast<size_t>(n));
  cuda::upload(targets.get(), targets_host, size_t(n), ctx_.stream());
  lm_head(rows, logits.get(), n);
  cuda::nll_rows(logits.get(), targets.get(), nll.get(), argmax.get(), n, V, ctx_.stream());
  std::vector<float> nll_host(static_cast<size_t>(n));
  std::vector<int32_t> arg_host(static_cast<size_t>(n));
  cuda::download(nll_host.data(), nll.get(), size_t(n), ctx_.stream());
  cuda::download(arg_host.data(), argmax.get(), size_t(n), ctx_.stream());
  for (int64_t r = 0; r < n; ++r) {
    loglik[r] = -double(nll_host[size_t(r)]);
    greedy[r] = arg_host[size_t(r)] == targets_host[r];
  }
}

}  // namespace lowbit
