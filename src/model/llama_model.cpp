#include "model/llama_model.h"

#include "core/error.h"

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

std::shared_ptr<const BlockWeights> LlamaModel::block_weights(int64_t i) const {
  LB_ASSERT(i >= 0 && i < config().num_hidden_layers);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (blocks_[size_t(i)]) return blocks_[size_t(i)];
  }
  auto w = std::make_shared<BlockWeights>();
  w->input_norm = as_f32(*ck_.weights, hf_tensor_name(TensorKind::AttnNorm, i));
  w->post_norm = as_f32(*ck_.weights, hf_tensor_name(TensorKind::FfnNorm, i));
  for (LinearKind k : kAllLinears) {
    Tensor t = ck_.weights->get(linear_weight_name(i, k));
    if (keep_16bit_ && (t.dtype() == DType::BF16 || t.dtype() == DType::F16) && t.is_contiguous())
      w->kernel[size_t(k)] = std::make_shared<Dense16Linear>(std::move(t));
    else
      (*w)[k] = t.dtype() == DType::F32 ? t : t.to_f32();
  }
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
  auto copy = [](const Tensor& t) {
    Tensor c = Tensor::empty(t.dtype(), t.shape());
    std::memcpy(c.mutable_data(), t.data(), size_t(t.nbytes()));
    return c;
  };
  BlockWeights out;
  out.input_norm = copy(w.input_norm);
  out.post_norm = copy(w.post_norm);
  for (size_t i = 0; i < w.linear.size(); ++i)
    if (w.linear[i].data() != nullptr) out.linear[i] = copy(w.linear[i]);
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

bool stops_at(const BlockHooks* hooks, std::initializer_list<LinearKind> kinds) {
  if (!hooks || !hooks->stop_after_input) return false;
  for (LinearKind k : kinds)
    if (*hooks->stop_after_input == k) return true;
  return false;
}

}  // namespace

void KvCache::truncate(int64_t n) {
  LB_CHECK(n >= 0 && n <= length, "KV cache: cannot truncate {} positions to {}", length, n);
  length = n;
}

KvCache LlamaModel::make_kv_cache(int64_t capacity) const {
  const LlamaConfig& c = config();
  LB_CHECK(capacity > 0 && capacity <= c.max_position_embeddings,
           "KV cache of {} positions: the model's context is {}", capacity, c.max_position_embeddings);
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
  const int64_t H = c.hidden_size;
  LB_CHECK(T > 0, "forward_cached: no tokens");
  LB_CHECK(cache.length + T <= cache.capacity, "KV cache holds {} positions; {} + {} do not fit", cache.capacity,
           cache.length, T);
  if (hooks == nullptr) hooks = forward_hooks_.get();
  ensure_positions(cache.length + T);
  const float eps = float(c.rms_norm_eps);
  std::vector<float> x(size_t(T * H)), y(size_t(T * H));
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    auto w = block_weights(i);
    ops::rmsnorm(hidden_out, w->input_norm.data_as<float>(), x.data(), T, H, eps);
    attention_part(i, *w, x.data(), y.data(), 1, T, cache.length, hooks, &cache);
    for (int64_t j = 0; j < T * H; ++j) hidden_out[j] += y[size_t(j)];
    ops::rmsnorm(hidden_out, w->post_norm.data_as<float>(), x.data(), T, H, eps);
    mlp_part(i, *w, x.data(), y.data(), T, hooks);
    for (int64_t j = 0; j < T * H; ++j) hidden_out[j] += y[size_t(j)];
  }
  cache.length += T;
  final_norm(hidden_out, T);
}

bool LlamaModel::attention_part(int64_t layer, const BlockWeights& w, const float* xin, float* out, int64_t B,
                                int64_t T, int64_t pos0, const BlockHooks* hooks, KvCache* cache) const {
  const LlamaConfig& c = config();
  const int64_t H = c.hidden_size, N = B * T;
  const int64_t nh = c.num_attention_heads, nkv = c.num_key_value_heads, hd = c.head_dim;
  const int64_t qd = nh * hd, kvd = nkv * hd;
  ensure_positions(pos0 + T);
  std::vector<float> q(size_t(N * qd)), k(size_t(N * kvd)), v(size_t(N * kvd)), att(size_t(N * qd));
  auto product = [&](LinearKind kind, const float* in, int64_t in_cols, float* o, int64_t out_cols) {
    run_linear(w, kind, in, o, N, in_cols, out_cols);
    if (hooks && hooks->on_output) hooks->on_output(layer, kind, o, N, out_cols);
  };
  if (hooks && hooks->on_input) {
    // q, k and v read the same input; a hook that rewrites it (activation quantization) must
    // see it once per linear, so each gets its own copy.
    std::vector<float> xq(xin, xin + N * H), xk(xq), xv(xq);
    hooks->on_input(layer, LinearKind::Q, xq.data(), N, H);
    hooks->on_input(layer, LinearKind::K, xk.data(), N, H);
    hooks->on_input(layer, LinearKind::V, xv.data(), N, H);
    if (stops_at(hooks, {LinearKind::Q, LinearKind::K, LinearKind::V})) return true;
    product(LinearKind::Q, xq.data(), H, q.data(), qd);
    product(LinearKind::K, xk.data(), H, k.data(), kvd);
    product(LinearKind::V, xv.data(), H, v.data(), kvd);
  } else {
    if (stops_at(hooks, {LinearKind::Q, LinearKind::K, LinearKind::V})) return true;
    if (w.qkv) {
      LB_ASSERT(w.qkv->in_features() == H && w.qkv->out_features() == qd + 2 * kvd);
      std::vector<float> qkv(size_t(N * (qd + 2 * kvd)));
      w.qkv->apply(xin, qkv.data(), N);
      split_columns(qkv.data(), N, {{q.data(), qd}, {k.data(), kvd}, {v.data(), kvd}});
      if (hooks && hooks->on_output) {
        hooks->on_output(layer, LinearKind::Q, q.data(), N, qd);
        hooks->on_output(layer, LinearKind::K, k.data(), N, kvd);
        hooks->on_output(layer, LinearKind::V, v.data(), N, kvd);
      }
    } else {
      product(LinearKind::Q, xin, H, q.data(), qd);
      product(LinearKind::K, xin, H, k.data(), kvd);
      product(LinearKind::V, xin, H, v.data(), kvd);
    }
  }
  if (cache != nullptr) {
    LB_ASSERT(B == 1 && pos0 == cache->length && cache->length + T <= cache->capacity);
    ops::rope(q.data(), T, nh, qd, rope_, pos0);
    ops::rope(k.data(), T, nkv, kvd, rope_, pos0);
    float* kc = cache->k[size_t(layer)].data();
    float* vc = cache->v[size_t(layer)].data();
    std::memcpy(kc + pos0 * kvd, k.data(), size_t(T * kvd) * sizeof(float));
    std::memcpy(vc + pos0 * kvd, v.data(), size_t(T * kvd) * sizeof(float));
    ops::attention(q.data(), kc, vc, att.data(), T, nh, nkv, hd, pos0);
  } else {
    for (int64_t b = 0; b < B; ++b) {
      ops::rope(q.data() + b * T * qd, T, nh, qd, rope_, pos0);
      ops::rope(k.data() + b * T * kvd, T, nkv, kvd, rope_, pos0);
      ops::attention(q.data() + b * T * qd, k.data() + b * T * kvd, v.data() + b * T * kvd, att.data() + b * T * qd,
                     T, nh, nkv, hd);
    }
  }
  if (hooks && hooks->on_input) hooks->on_input(layer, LinearKind::O, att.data(), N, qd);
  if (stops_at(hooks, {LinearKind::O})) return true;
  product(LinearKind::O, att.data(), qd, out, H);
  return false;
}

bool LlamaModel::mlp_part(int64_t layer, const BlockWeights& w, const float* xin, float* out, int64_t N,
                          const BlockHooks* hooks) const {
  const int64_t H = config().hidden_size, F = config().intermediate_size;
  auto product = [&](LinearKind kind, const float* in, int64_t in_cols, float* o, int64_t out_cols) {
    run_linear(w, kind, in, o, N, in_cols, out_cols);
    if (hooks && hooks->on_output) hooks->on_output(layer, kind, o, N, out_cols);
  };
  std::vector<float> gate(size_t(N * F)), up(size_t(N * F));
  if (hooks && hooks->on_input) {
    std::vector<float> xg(xin, xin + N * H), xu(xg);
    hooks->on_input(layer, LinearKind::Gate, xg.data(), N, H);
    hooks->on_input(layer, LinearKind::Up, xu.data(), N, H);
    if (stops_at(hooks, {LinearKind::Gate, LinearKind::Up})) return true;
    product(LinearKind::Gate, xg.data(), H, gate.data(), F);
    product(LinearKind::Up, xu.data(), H, up.data(), F);
  } else {
    if (stops_at(hooks, {LinearKind::Gate, LinearKind::Up})) return true;
    if (w.gate_up) {
      LB_ASSERT(w.gate_up->in_features() == H && w.gate_up->out_features() == 2 * F);
      std::vector<float> gu(size_t(N * 2 * F));
      w.gate_up->apply(xin, gu.data(), N);
      split_columns(gu.data(), N, {{gate.data(), F}, {up.data(), F}});
      if (hooks && hooks->on_output) {
        hooks->on_output(layer, LinearKind::Gate, gate.data(), N, F);
        hooks->on_output(layer, LinearKind::Up, up.data(), N, F);
      }
    } else {
      product(LinearKind::Gate, xin, H, gate.data(), F);
      product(LinearKind::Up, xin, H, up.data(), F);
    }
  }
  ops::swiglu(gate.data(), up.data(), gate.data(), N * F);
  up = {};
  if (hooks && hooks->on_input) hooks->on_input(layer, LinearKind::Down, gate.data(), N, F);
  if (stops_at(hooks, {LinearKind::Down})) return true;
  product(LinearKind::Down, gate.data(), F, out, H);
  return false;
}

void LlamaModel::run_block(int64_t layer, const BlockWeights& w, float* hidden, int64_t B, int64_t T, int64_t pos0,
                           const BlockHooks* hooks) const {
  const LlamaConfig& c = config();
  const int64_t H = c.hidden_size, N = B * T;
  const float eps = float(c.rms_norm_eps);
  std::vector<float> x(size_t(N * H)), y(size_t(N * H));
  // h += attention(norm(h)); h += mlp(norm(h)).
  ops::rmsnorm(hidden, w.input_norm.data_as<float>(), x.data(), N, H, eps);
  if (attention_part(layer, w, x.data(), y.data(), B, T, pos0, hooks)) return;
  for (int64_t i = 0; i < N * H; ++i) hidden[i] += y[size_t(i)];
  ops::rmsnorm(hidden, w.post_norm.data_as<float>(), x.data(), N, H, eps);
  if (mlp_part(layer, w, x.data(), y.data(), N, hooks)) return;
  for (int64_t i = 0; i < N * H; ++i) hidden[i] += y[size_t(i)];
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
