#include "model/cuda_model.h"

#include "core/error.h"

#include <algorithm>
#include <cstring>

namespace lowbit {

using cuda::bf16;
using cuda::DeviceBuffer;

void upload_as_bf16(const Tensor& t, DeviceBuffer<bf16>& dst, cudaStream_t s) {
  LB_ASSERT(t.is_contiguous());
  const int64_t n = t.numel();
  dst.resize(size_t(n));
  if (t.dtype() == DType::BF16) {
    cuda::upload(dst.get(), reinterpret_cast<const bf16*>(t.data()), size_t(n), s);
    LB_CUDA_CHECK(cudaStreamSynchronize(s));  // the source may be a temporary
    return;
  }
  std::vector<uint16_t> host(static_cast<size_t>(n));
  if (t.dtype() == DType::F32) {
    const float* p = t.data_as<float>();
    for (int64_t i = 0; i < n; ++i) host[size_t(i)] = f32_to_bf16(p[i]);
  } else {
    const Tensor f = t.to_f32();
    const float* p = f.data_as<float>();
    for (int64_t i = 0; i < n; ++i) host[size_t(i)] = f32_to_bf16(p[i]);
  }
  cuda::upload(dst.get(), reinterpret_cast<const bf16*>(host.data()), size_t(n), s);
  LB_CUDA_CHECK(cudaStreamSynchronize(s));
}

void GpuKvCache::truncate(int64_t n) {
  LB_CHECK(n >= 0 && n <= length, "KV cache: cannot truncate {} positions to {}", length, n);
  length = n;
}

CudaModel::CudaModel(const LlamaModel& host, cuda::Context& ctx, std::optional<bool> resident)
    : host_(host), ctx_(ctx) {
  const LlamaConfig& c = host.config();
  const WeightSource& ws = *host.checkpoint().weights;
  const cudaStream_t s = ctx.stream();
  upload_as_bf16(ws.get("model.embed_tokens.weight"), embed_, s);
  upload_as_bf16(ws.get("model.norm.weight"), final_norm_w_, s);
  if (!c.tie_word_embeddings) upload_as_bf16(ws.get("lm_head.weight"), lm_head_, s);
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
  resident_ = resident.value_or(total < 0.7 * double(free_b));
  if (resident_) {
    blocks_.resize(size_t(c.num_hidden_layers));
    for (int64_t i = 0; i < c.num_hidden_layers; ++i) upload_block(i, blocks_[size_t(i)]);
  }
  ctx.synchronize();
}

void CudaModel::upload_block(int64_t i, GpuBlockWeights& w) const {
  const WeightSource& ws = *host_.checkpoint().weights;
  const std::string p = "model.layers." + std::to_string(i) + ".";
  const cudaStream_t s = ctx_.stream();
  upload_as_bf16(ws.get(p + "input_layernorm.weight"), w.input_norm, s);
  upload_as_bf16(ws.get(p + "post_attention_layernorm.weight"), w.post_norm, s);
  for (LinearKind k : kAllLinears) upload_as_bf16(ws.get(linear_weight_name(i, k)), w.linear[size_t(k)], s);
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
  q_.resize(size_t(rows * c.q_dim()));
  k_.resize(size_t(rows * c.kv_dim()));
  v_.resize(size_t(rows * c.kv_dim()));
  att_.resize(size_t(rows * c.q_dim()));
  y_.resize(size_t(rows * c.hidden_size));
  gate_.resize(size_t(rows * c.intermediate_size));
  up_.resize(size_t(rows * c.intermediate_size));
  ws_rows_ = rows;
}

void CudaModel::embed(const int32_t* tokens, int64_t n, float* hidden) {
  const LlamaConfig& c = config();
  for (int64_t i = 0; i < n; ++i)
    LB_CHECK(tokens[i] >= 0 && tokens[i] < c.vocab_size, "token id {} at position {} is outside the vocabulary "
             "(size {})", tokens[i], i, c.vocab_size);
  ids_.resize(size_t(n));
  cuda::upload(ids_.get(), tokens, size_t(n), ctx_.stream());
  cuda::embed(ids_.get(), embed_.get(), hidden, n, c.hidden_size, ctx_.stream());
}

void CudaModel::run_block(int64_t layer, const GpuBlockWeights& w, float* hidden, int64_t B, int64_t T,
                          GpuKvCache* cache) {
  const LlamaConfig& c = config();
  const int64_t H = c.hidden_size, F = c.intermediate_size, N = B * T;
  const int64_t nh = c.num_attention_heads, nkv = c.num_key_value_heads, hd = c.head_dim;
  const int64_t qd = c.q_dim(), kvd = c.kv_dim();
  const float eps = float(c.rms_norm_eps);
  const cudaStream_t s = ctx_.stream();
  const int64_t past = cache ? cache->length : 0;
  LB_CHECK(past + T <= rope_positions_, "positions up to {} exceed the model's context {}", past + T, rope_positions_);
  ensure_workspace(N);
  cuda::rmsnorm(hidden, w.input_norm.get(), x_.get(), N, H, eps, s);
  bf16* kd = k_.get();
  bf16* vd = v_.get();
  if (cache) {
    LB_ASSERT(B == 1 && past + T <= cache->capacity);
    kd = cache->k[size_t(layer)].get() + past * kvd;
    vd = cache->v[size_t(layer)].get() + past * kvd;
  }
  cuda::linear(ctx_, x_.get(), w[LinearKind::Q], q_.get(), N, qd, H);
  cuda::linear(ctx_, x_.get(), w[LinearKind::K], kd, N, kvd, H);
  cuda::linear(ctx_, x_.get(), w[LinearKind::V], vd, N, kvd, H);
  cuda::rope(q_.get(), B, T, nh, hd, qd, rope_cos_.get(), rope_sin_.get(), past, s);
  cuda::rope(kd, B, T, nkv, hd, kvd, rope_cos_.get(), rope_sin_.get(), past, s);
  const bf16* kall = cache ? cache->k[size_t(layer)].get() : k_.get();
  const bf16* vall = cache ? cache->v[size_t(layer)].get() : v_.get();
  cuda::attention(q_.get(), kall, vall, att_.get(), B, T, past, nh, nkv, hd, qd, kvd, qd, s);
  cuda::linear(ctx_, att_.get(), w[LinearKind::O], y_.get(), N, H, qd);
  cuda::add_rmsnorm(hidden, y_.get(), w.post_norm.get(), x_.get(), N, H, eps, s);
  cuda::linear(ctx_, x_.get(), w[LinearKind::Gate], gate_.get(), N, F, H);
  cuda::linear(ctx_, x_.get(), w[LinearKind::Up], up_.get(), N, F, H);
  cuda::swiglu(gate_.get(), up_.get(), gate_.get(), N * F, s);
  cuda::linear(ctx_, gate_.get(), w[LinearKind::Down], y_.get(), N, H, F);
  cuda::add_residual(hidden, y_.get(), N * H, s);
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
  DeviceBuffer<float> hidden(static_cast<size_t>(batch * T * H));
  // LM head in chunks of rows, at most ~1 GiB of fp32 logits at a time.
  const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(T - 1, (int64_t(1) << 28) / V));
  DeviceBuffer<float> logits(static_cast<size_t>(chunk * V)), nll(static_cast<size_t>(chunk));
  DeviceBuffer<int32_t> targets(static_cast<size_t>(T));
  std::vector<float> nll_host(static_cast<size_t>(chunk));
  std::vector<double> out;
  GpuBlockWeights scratch;
  for (size_t b0 = 0; b0 < windows.size(); b0 += size_t(batch)) {
    const int64_t nb = std::min<int64_t>(batch, int64_t(windows.size() - b0));
    std::vector<int32_t> ids;
    for (int64_t b = 0; b < nb; ++b) ids.insert(ids.end(), windows[b0 + size_t(b)].begin(), windows[b0 + size_t(b)].end());
    embed(ids.data(), nb * T, hidden.get());
    for (int64_t i = 0; i < c.num_hidden_layers; ++i) run_block(i, block(i, scratch), hidden.get(), nb, T);
    final_norm(hidden.get(), x_.get(), nb * T);
    for (int64_t b = 0; b < nb; ++b) {
      const std::vector<int32_t>& w = windows[b0 + size_t(b)];
      cuda::upload(targets.get(), w.data() + 1, size_t(T - 1), ctx_.stream());
      double sum = 0;
      for (int64_t r0 = 0; r0 < T - 1; r0 += chunk) {
        const int64_t rows = std::min(chunk, T - 1 - r0);
        lm_head(x_.get() + (b * T + r0) * H, logits.get(), rows);
        cuda::nll_rows(logits.get(), targets.get() + r0, nll.get(), nullptr, rows, V, ctx_.stream());
        cuda::download(nll_host.data(), nll.get(), size_t(rows), ctx_.stream());
        for (int64_t r = 0; r < rows; ++r) sum += double(nll_host[size_t(r)]);
      }
      out.push_back(sum / double(T - 1));
    }
  }
  return out;
}

GpuKvCache CudaModel::make_kv_cache(int64_t capacity) const {
  const LlamaConfig& c = config();
  LB_CHECK(capacity > 0 && capacity <= rope_positions_, "KV cache of {} positions: the model's context is {}", capacity,
           rope_positions_);
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
  const LlamaConfig& c = config();
  const int64_t T = int64_t(tokens.size()), H = c.hidden_size;
  LB_CHECK(T > 0, "forward_cached: no tokens");
  LB_CHECK(cache.length + T <= cache.capacity, "KV cache holds {} positions; {} + {} do not fit", cache.capacity,
           cache.length, T);
  DeviceBuffer<float> hidden(static_cast<size_t>(T * H));
  embed(tokens.data(), T, hidden.get());
  GpuBlockWeights scratch;
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) run_block(i, block(i, scratch), hidden.get(), 1, T, &cache);
  cache.length += T;
  normed.resize(size_t(T * H));
  final_norm(hidden.get(), normed.get(), T);
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
