#include "model/llama_model.h"

#include "core/error.h"
#include "model/llama_block.h"

#include <algorithm>
#include <cstring>
#include <initializer_list>
#include <utility>

namespace lowbit {

namespace {

// fp32 view or converted copy of a weight.
Tensor as_f32(const WeightSource& w, const std::string& name) {
  Tensor t = w.get(name);
  return t.dtype() == DType::F32 ? t : t.to_f32();
}

// A contiguous tensor's copy in storage of its own.
Tensor copy_tensor(const Tensor& t) {
  LB_ASSERT(t.is_contiguous());
  Tensor c = Tensor::empty(t.dtype(), t.shape());
  std::memcpy(c.mutable_data(), t.data(), size_t(t.nbytes()));
  return c;
}

// A linear kept in its stored 16-bit dtype (set_keep_16bit_weights).
class Dense16Linear final : public LinearKernel {
 public:
  explicit Dense16Linear(Tensor w) : w_(std::move(w)) {}
  void apply(const float* x, float* y, int64_t rows) const override {
    const int64_t out = w_.dim(0), in = w_.dim(1);
    if (rows <= ops::gemv_max_rows()) return ops::gemv(x, w_.data(), w_.dtype(), y, rows, in, out);
    // Many rows: the product is compute-bound, so converting the weight per call costs little
    // beside it (one pass over the weight against `rows` passes of FMAs).
    thread_local std::vector<float> f;
    f.resize(size_t(out * in));
    convert_to_f32(w_.dtype(), w_.data(), f.data(), out * in);
    ops::linear(x, f.data(), y, rows, in, out);
  }
  int64_t in_features() const override { return w_.dim(1); }
  int64_t out_features() const override { return w_.dim(0); }

 private:
  Tensor w_;
};

}  // namespace

LlamaModel::LlamaModel(Checkpoint ck) : ck_(std::move(ck)) {
  const LlamaConfig& c = ck_.config;
  blocks_.resize(size_t(c.num_hidden_layers));
  replaced_.assign(size_t(c.num_hidden_layers), false);
  // Converted fp32 blocks are kept when all of them fit in 4 GiB; larger models convert each
  // block when it runs.
  const int64_t per_block = 4 * (4 * c.hidden_size * c.hidden_size + 3 * c.hidden_size * c.intermediate_size);
  cache_blocks_ = per_block * c.num_hidden_layers < (int64_t(4) << 30);
  final_norm_w_ = as_f32(*ck_.weights, hf_tensor_name(TensorKind::OutputNorm));
  ensure_positions(std::max<int64_t>(c.max_position_embeddings, 1));
}

void LlamaModel::ensure_positions(int64_t n) const {
  std::lock_guard<std::mutex> lock(mu_);
  if (rope_.n_pos < n) rope_ = make_rope_table(ck_.config, n);
}

BlockWeights LlamaModel::load_block(int64_t i, bool own, BlockWeights* reuse) const {
  // fp32 tensors are the checkpoint's own unless `own` asks for copies; others are converted,
  // into a tensor of `reuse` where one fits.
  const auto f32 = [own](Tensor t, Tensor* spare) {
    if (spare != nullptr && spare->dtype() == DType::F32 && spare->writable() && spare->is_contiguous() &&
        spare->sole_owner() && spare->shape() == t.shape() && t.is_contiguous()) {
      convert_to_f32(t.dtype(), t.data(), spare->mutable_data_as<float>(), t.numel());
      return std::move(*spare);
    }
    return t.dtype() != DType::F32 ? t.to_f32() : own ? copy_tensor(t) : t;
  };
  BlockWeights w;
  w.input_norm = f32(ck_.weights->get(hf_tensor_name(TensorKind::AttnNorm, i)), reuse ? &reuse->input_norm : nullptr);
  w.post_norm = f32(ck_.weights->get(hf_tensor_name(TensorKind::FfnNorm, i)), reuse ? &reuse->post_norm : nullptr);
  for (LinearKind k : kAllLinears) {
    Tensor t = ck_.weights->get(linear_weight_name(i, k));
    if (!own && keep_16bit_ && (t.dtype() == DType::BF16 || t.dtype() == DType::F16) && t.is_contiguous())
      w.kernel[size_t(k)] = std::make_shared<Dense16Linear>(std::move(t));
    else
      w[k] = f32(std::move(t), reuse ? &(*reuse)[k] : nullptr);
  }
  return w;
}

BlockWeights LlamaModel::writable_block_weights(int64_t i, BlockWeights reuse) const {
  LB_ASSERT(i >= 0 && i < config().num_hidden_layers);
  std::shared_ptr<const BlockWeights> held;
  {
    std::lock_guard<std::mutex> lock(mu_);
    held = blocks_[size_t(i)];
  }
  if (held) {
    reuse = BlockWeights{};  // released first: one block's weights in memory, not two
    return clone_block_weights(*held);
  }
  return load_block(i, /*own=*/true, &reuse);
}

std::shared_ptr<const BlockWeights> LlamaModel::block_weights(int64_t i) const {
  LB_ASSERT(i >= 0 && i < config().num_hidden_layers);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (blocks_[size_t(i)]) return blocks_[size_t(i)];
  }
  auto w = std::make_shared<BlockWeights>(load_block(i, /*own=*/false));
  if (cache_blocks_) {
    std::lock_guard<std::mutex> lock(mu_);
    blocks_[size_t(i)] = w;
  }
  return w;
}

void LlamaModel::set_block_cache(bool on) {
  std::lock_guard<std::mutex> lock(mu_);
  cache_blocks_ = on;
  if (!on)
    for (auto& b : blocks_) b.reset();
}

BlockWeights clone_block_weights(const BlockWeights& w) {
  BlockWeights out;
  out.input_norm = copy_tensor(w.input_norm);
  out.post_norm = copy_tensor(w.post_norm);
  for (size_t i = 0; i < w.linear.size(); ++i)
    if (w.linear[i].data() != nullptr) out.linear[i] = copy_tensor(w.linear[i]);
  out.kernel = w.kernel;
  out.qkv = w.qkv;
  out.gate_up = w.gate_up;
  return out;
}

void LlamaModel::set_block_weights(int64_t i, std::shared_ptr<const BlockWeights> w) {
  LB_ASSERT(i >= 0 && i < config().num_hidden_layers);
  std::lock_guard<std::mutex> lock(mu_);
  blocks_[size_t(i)] = std::move(w);
  replaced_[size_t(i)] = true;
}

bool LlamaModel::block_weights_replaced(int64_t i) const {
  LB_ASSERT(i >= 0 && i < config().num_hidden_layers);
  std::lock_guard<std::mutex> lock(mu_);
  return replaced_[size_t(i)];
}

void LlamaModel::embed(std::span<const int32_t> tokens, float* hidden) const {
  const LlamaConfig& c = config();
  const Tensor& table = embedding_table();
  const int64_t H = c.hidden_size;
  const int64_t row_bytes = H * dtype_size(table.dtype());
  for (size_t t = 0; t < tokens.size(); ++t) {
    const int32_t id = tokens[t];
    LB_CHECK(id >= 0 && id < c.vocab_size, "token id {} at position {} is outside the vocabulary (size {})", id, t,
             c.vocab_size);
    convert_to_f32(table.dtype(), static_cast<const uint8_t*>(table.data()) + id * row_bytes, hidden + int64_t(t) * H, H);
  }
}

namespace {

void run_linear(const BlockWeights& w, LinearKind kind, const float* in, float* out, int64_t rows, int64_t in_cols,
                int64_t out_cols) {
  if (const auto& k = w.kernel[size_t(kind)]) {
    LB_ASSERT(k->in_features() == in_cols && k->out_features() == out_cols);
    k->apply(in, out, rows);
  } else {
    ops::linear(in, w[kind].data_as<float>(), out, rows, in_cols, out_cols);
  }
}

// Splits y [rows, sum of widths] into its column blocks, each [rows, width].
void split_columns(const float* y, int64_t rows, std::initializer_list<std::pair<float*, int64_t>> parts) {
  int64_t total = 0;
  for (const auto& p : parts) total += p.second;
  for (int64_t r = 0; r < rows; ++r) {
    int64_t off = 0;
    for (const auto& [dst, width] : parts) {
      std::memcpy(dst + r * width, y + r * total + off, size_t(width) * sizeof(float));
      off += width;
    }
  }
}

}  // namespace

KvCache LlamaModel::make_kv_cache(int64_t capacity) const {
  const LlamaConfig& c = config();
  KvPositions::check_capacity(capacity, c.max_position_embeddings);
  KvCache kv;
  kv.capacity = capacity;
  kv.k.assign(size_t(c.num_hidden_layers), std::vector<float>(size_t(capacity * c.kv_dim())));
  kv.v.assign(size_t(c.num_hidden_layers), std::vector<float>(size_t(capacity * c.kv_dim())));
  return kv;
}

void LlamaModel::forward_cached(std::span<const int32_t> tokens, KvCache& cache, float* hidden_out,
                                const BlockHooks* hooks) const {
  LB_CHECK(!tokens.empty(), "forward_cached: no tokens");
  embed(tokens, hidden_out);
  run_cached(hidden_out, int64_t(tokens.size()), cache, hooks);
}

void LlamaModel::run_cached(float* hidden_out, int64_t T, KvCache& cache, const BlockHooks* hooks) const {
  const LlamaConfig& c = config();
  LB_CHECK(T > 0, "forward_cached: no tokens");
  cache.check_room(T);
  if (hooks == nullptr) hooks = forward_hooks_.get();
  ensure_positions(cache.length + T);
  for (int64_t i = 0; i < c.num_hidden_layers; ++i)
    run_block(i, *block_weights(i), hidden_out, 1, T, cache.length, hooks, &cache);
  cache.length += T;
  final_norm(hidden_out, T);
}

namespace {

// The block's steps (model/llama_block.h) on the CPU: fp32 host buffers, hooks per linear.
class CpuBlockOps final : public BlockOps {
 public:
  CpuBlockOps(const LlamaConfig& c, const RopeTable& rope, int64_t layer, const BlockWeights& w, int64_t B, int64_t T,
              int64_t pos0, const BlockHooks* hooks, KvCache* cache)
      : c_(c), rope_(rope), layer_(layer), w_(w), B_(B), T_(T), N_(B * T), pos0_(pos0), hooks_(hooks), cache_(cache) {}

  // A whole block: hidden [N, H] runs in place; the normed input and each half's output live here.
  void set_hidden(float* hidden) {
    hidden_ = hidden;
    xbuf_.resize(size_t(N_ * c_.hidden_size));
    ybuf_.resize(size_t(N_ * c_.hidden_size));
    x_ = xbuf_.data();
    out_ = ybuf_.data();
  }
  // One half on a normed input x [N, H], writing its output [N, H] (before the residual add).
  void set_half(const float* x, float* out) {
    x_ = x;
    out_ = out;
  }

  void norm(BlockHalf h) override {
    const Tensor& weight = h == BlockHalf::Attention ? w_.input_norm : w_.post_norm;
    ops::rmsnorm(hidden_, weight.data_as<float>(), xbuf_.data(), N_, c_.hidden_size, float(c_.rms_norm_eps));
  }

  void hooks(InputSite s) override {
    const int64_t H = c_.hidden_size;
    switch (s) {
      case InputSite::AttnIn:
        q_.resize(size_t(N_ * c_.q_dim()));
        k_.resize(size_t(N_ * c_.kv_dim()));
        v_.resize(size_t(N_ * c_.kv_dim()));
        att_.resize(size_t(N_ * c_.q_dim()));
        // q, k and v read the same input; a hook that rewrites it (activation quantization) must
        // see it once per linear, so each gets its own copy.
        if (has_input_hooks()) {
          xq_.assign(x_, x_ + N_ * H);
          xk_ = xq_;
          xv_ = xq_;
          hooks_->on_input(layer_, LinearKind::Q, xq_.data(), N_, H);
          hooks_->on_input(layer_, LinearKind::K, xk_.data(), N_, H);
          hooks_->on_input(layer_, LinearKind::V, xv_.data(), N_, H);
        }
        break;
      case InputSite::AttnOut:
        if (has_input_hooks()) hooks_->on_input(layer_, LinearKind::O, att_.data(), N_, c_.q_dim());
        break;
      case InputSite::MlpIn:
        gate_.resize(size_t(N_ * c_.intermediate_size));
        up_.resize(size_t(N_ * c_.intermediate_size));
        if (has_input_hooks()) {
          xq_.assign(x_, x_ + N_ * H);
          xk_ = xq_;
          hooks_->on_input(layer_, LinearKind::Gate, xq_.data(), N_, H);
          hooks_->on_input(layer_, LinearKind::Up, xk_.data(), N_, H);
        }
        break;
      case InputSite::MlpOut:
        if (has_input_hooks()) hooks_->on_input(layer_, LinearKind::Down, gate_.data(), N_, c_.intermediate_size);
        break;
    }
  }

  void products(InputSite s) override {
    const int64_t H = c_.hidden_size, F = c_.intermediate_size, qd = c_.q_dim(), kvd = c_.kv_dim();
    switch (s) {
      case InputSite::AttnIn:
        if (has_input_hooks()) {
          product(LinearKind::Q, xq_.data(), H, q_.data(), qd);
          product(LinearKind::K, xk_.data(), H, k_.data(), kvd);
          product(LinearKind::V, xv_.data(), H, v_.data(), kvd);
          xq_ = {}, xk_ = {}, xv_ = {};
        } else if (w_.qkv) {
          LB_ASSERT(w_.qkv->in_features() == H && w_.qkv->out_features() == qd + 2 * kvd);
          std::vector<float> qkv(size_t(N_ * (qd + 2 * kvd)));
          w_.qkv->apply(x_, qkv.data(), N_);
          split_columns(qkv.data(), N_, {{q_.data(), qd}, {k_.data(), kvd}, {v_.data(), kvd}});
          if (hooks_ && hooks_->on_output) {
            hooks_->on_output(layer_, LinearKind::Q, q_.data(), N_, qd);
            hooks_->on_output(layer_, LinearKind::K, k_.data(), N_, kvd);
            hooks_->on_output(layer_, LinearKind::V, v_.data(), N_, kvd);
          }
        } else {
          product(LinearKind::Q, x_, H, q_.data(), qd);
          product(LinearKind::K, x_, H, k_.data(), kvd);
          product(LinearKind::V, x_, H, v_.data(), kvd);
        }
        break;
      case InputSite::AttnOut:
        product(LinearKind::O, att_.data(), qd, out_, H);
        q_ = {}, k_ = {}, v_ = {}, att_ = {};
        break;
      case InputSite::MlpIn:
        if (has_input_hooks()) {
          product(LinearKind::Gate, xq_.data(), H, gate_.data(), F);
          product(LinearKind::Up, xk_.data(), H, up_.data(), F);
          xq_ = {}, xk_ = {};
        } else if (w_.gate_up) {
          LB_ASSERT(w_.gate_up->in_features() == H && w_.gate_up->out_features() == 2 * F);
          std::vector<float> gu(size_t(N_ * 2 * F));
          w_.gate_up->apply(x_, gu.data(), N_);
          split_columns(gu.data(), N_, {{gate_.data(), F}, {up_.data(), F}});
          if (hooks_ && hooks_->on_output) {
            hooks_->on_output(layer_, LinearKind::Gate, gate_.data(), N_, F);
            hooks_->on_output(layer_, LinearKind::Up, up_.data(), N_, F);
          }
        } else {
          product(LinearKind::Gate, x_, H, gate_.data(), F);
          product(LinearKind::Up, x_, H, up_.data(), F);
        }
        break;
      case InputSite::MlpOut:
        product(LinearKind::Down, gate_.data(), F, out_, H);
        gate_ = {};
        break;
    }
  }

  void attention() override {
    const int64_t T = T_, nh = c_.num_attention_heads, nkv = c_.num_key_value_heads, hd = c_.head_dim;
    const int64_t qd = c_.q_dim(), kvd = c_.kv_dim();
    if (cache_ != nullptr) {
      LB_ASSERT(B_ == 1 && pos0_ == cache_->length && cache_->length + T <= cache_->capacity);
      ops::rope(q_.data(), T, nh, qd, rope_, pos0_);
      ops::rope(k_.data(), T, nkv, kvd, rope_, pos0_);
      float* kc = cache_->k[size_t(layer_)].data();
      float* vc = cache_->v[size_t(layer_)].data();
      std::memcpy(kc + pos0_ * kvd, k_.data(), size_t(T * kvd) * sizeof(float));
      std::memcpy(vc + pos0_ * kvd, v_.data(), size_t(T * kvd) * sizeof(float));
      ops::attention(q_.data(), kc, vc, att_.data(), T, nh, nkv, hd, pos0_);
    } else {
      for (int64_t b = 0; b < B_; ++b) {
        ops::rope(q_.data() + b * T * qd, T, nh, qd, rope_, pos0_);
        ops::rope(k_.data() + b * T * kvd, T, nkv, kvd, rope_, pos0_);
        ops::attention(q_.data() + b * T * qd, k_.data() + b * T * kvd, v_.data() + b * T * kvd,
                       att_.data() + b * T * qd, T, nh, nkv, hd);
      }
    }
  }

  void swiglu() override {
    ops::swiglu(gate_.data(), up_.data(), gate_.data(), N_ * c_.intermediate_size);
    up_ = {};
  }

  void residual(BlockHalf) override {
    for (int64_t i = 0; i < N_ * c_.hidden_size; ++i) hidden_[i] += out_[i];
  }

 private:
  bool has_input_hooks() const { return hooks_ && hooks_->on_input; }
  void product(LinearKind kind, const float* in, int64_t in_cols, float* o, int64_t out_cols) {
    run_linear(w_, kind, in, o, N_, in_cols, out_cols);
    if (hooks_ && hooks_->on_output) hooks_->on_output(layer_, kind, o, N_, out_cols);
  }

  const LlamaConfig& c_;
  const RopeTable& rope_;
  const int64_t layer_;
  const BlockWeights& w_;
  const int64_t B_, T_, N_, pos0_;
  const BlockHooks* hooks_;
  KvCache* cache_;
  float* hidden_ = nullptr;
  const float* x_ = nullptr;
  float* out_ = nullptr;
  std::vector<float> xbuf_, ybuf_;
  // Per-linear copies of a site's input (q/k/v or gate/up) when input hooks run.
  std::vector<float> xq_, xk_, xv_;
  std::vector<float> q_, k_, v_, att_, gate_, up_;
};

}  // namespace

bool LlamaModel::attention_part(int64_t layer, const BlockWeights& w, const float* xin, float* out, int64_t B,
                                int64_t T, int64_t pos0, const BlockHooks* hooks, KvCache* cache) const {
  ensure_positions(pos0 + T);
  CpuBlockOps ops(config(), rope_, layer, w, B, T, pos0, hooks, cache);
  ops.set_half(xin, out);
  return run_block_steps(ops, half_steps(BlockHalf::Attention), hooks ? hooks->stop_after : std::nullopt);
}

bool LlamaModel::mlp_part(int64_t layer, const BlockWeights& w, const float* xin, float* out, int64_t N,
                          const BlockHooks* hooks) const {
  CpuBlockOps ops(config(), rope_, layer, w, 1, N, 0, hooks, nullptr);
  ops.set_half(xin, out);
  return run_block_steps(ops, half_steps(BlockHalf::Mlp), hooks ? hooks->stop_after : std::nullopt);
}

void LlamaModel::run_block(int64_t layer, const BlockWeights& w, float* hidden, int64_t B, int64_t T, int64_t pos0,
                           const BlockHooks* hooks, KvCache* cache) const {
  // h += attention(norm(h)); h += mlp(norm(h)): the steps of model/llama_block.h.
  ensure_positions(pos0 + T);
  CpuBlockOps ops(config(), rope_, layer, w, B, T, pos0, hooks, cache);
  ops.set_hidden(hidden);
  run_block_steps(ops, block_steps(), hooks ? hooks->stop_after : std::nullopt);
}

void LlamaModel::final_norm(float* hidden, int64_t rows) const {
  ops::rmsnorm(hidden, final_norm_w_.data_as<float>(), hidden, rows, config().hidden_size, float(config().rms_norm_eps));
}

const Tensor& LlamaModel::embedding_table() const {
  // Read once: a memory-mapped source hands out a view (no copy), a GGUF source a dequantized
  // table that would otherwise be rebuilt on every call.
  std::call_once(embed_once_, [&] { embed_table_ = ck_.weights->get(hf_tensor_name(TensorKind::TokenEmbd)); });
  return embed_table_;
}

const Tensor& LlamaModel::lm_head_stored() const {
  std::call_once(lm_head_stored_once_, [&] {
    lm_head_stored_ = config().tie_word_embeddings ? embedding_table() : ck_.weights->get(hf_tensor_name(TensorKind::Output));
  });
  return lm_head_stored_;
}

const float* LlamaModel::lm_head_f32() const {
  std::call_once(lm_head_once_, [&] {
    const Tensor& t = lm_head_stored();
    lm_head_ = t.dtype() == DType::F32 ? t : t.to_f32();
  });
  return lm_head_.data_as<float>();
}

void LlamaModel::set_lm_head_kernel(std::shared_ptr<const LinearKernel> k) {
  LB_CHECK(!k || (k->in_features() == config().hidden_size && k->out_features() == config().vocab_size),
           "LM head kernel: [{}, {}] for a model with vocabulary {} and hidden size {}", k ? k->out_features() : 0,
           k ? k->in_features() : 0, config().vocab_size, config().hidden_size);
  lm_head_kernel_ = std::move(k);
}

void LlamaModel::lm_head(const float* hidden, int64_t rows, float* logits) const {
  const int64_t H = config().hidden_size, V = config().vocab_size;
  if (lm_head_kernel_) return lm_head_kernel_->apply(hidden, logits, rows);
  // A few rows (decode) read the head as stored: a 16-bit head is not widened to fp32 for them.
  const Tensor& t = lm_head_stored();
  if (rows <= ops::gemv_max_rows() && t.is_contiguous() &&
      (t.dtype() == DType::F32 || t.dtype() == DType::BF16 || t.dtype() == DType::F16))
    return ops::gemv(hidden, t.data(), t.dtype(), logits, rows, H, V);
  ops::linear(hidden, lm_head_f32(), logits, rows, H, V);
}

Tensor LlamaModel::forward(std::span<const int32_t> tokens, const BlockHooks* hooks) const {
  const int64_t T = int64_t(tokens.size()), H = config().hidden_size;
  LB_CHECK(T > 0, "forward: empty input");
  ensure_positions(T);
  std::vector<float> hidden(size_t(T * H));
  embed(tokens, hidden.data());
  if (hooks == nullptr) hooks = forward_hooks_.get();
  for (int64_t i = 0; i < config().num_hidden_layers; ++i) run_block(i, hidden.data(), 1, T, 0, hooks);
  final_norm(hidden.data(), T);
  Tensor logits = Tensor::empty(DType::F32, {T, config().vocab_size});
  lm_head(hidden.data(), T, logits.mutable_data_as<float>());
  return logits;
}

std::vector<double> LlamaModel::next_token_nll(std::span<const int32_t> tokens, const BlockHooks* hooks) const {
  const int64_t T = int64_t(tokens.size()), H = config().hidden_size, V = config().vocab_size;
  LB_CHECK(T >= 2, "next_token_nll: need at least 2 tokens, got {}", T);
  ensure_positions(T);
  std::vector<float> hidden(size_t(T * H));
  embed(tokens, hidden.data());
  if (hooks == nullptr) hooks = forward_hooks_.get();
  for (int64_t i = 0; i < config().num_hidden_layers; ++i) run_block(i, hidden.data(), 1, T, 0, hooks);
  final_norm(hidden.data(), T);
  std::vector<double> nll(size_t(T - 1));
  constexpr int64_t kChunk = 256;
  std::vector<float> logits(size_t(std::min(kChunk, T - 1) * V));
  for (int64_t r0 = 0; r0 < T - 1; r0 += kChunk) {
    const int64_t rows = std::min(kChunk, T - 1 - r0);
    lm_head(hidden.data() + r0 * H, rows, logits.data());
    ops::nll_rows(logits.data(), tokens.data() + r0 + 1, nll.data() + r0, rows, V);
  }
  return nll;
}

}  // namespace lowbit
