#include "train/llama_backward.h"

#include "backend/ops_backward.h"
#include "core/error.h"
#include "model/llama_block.h"
#include "train/iec.h"

#include <algorithm>
#include <cstring>

namespace lowbit::train {

int64_t Batch::num_targets() const {
  return std::count_if(targets.begin(), targets.end(), [](int32_t t) { return t >= 0; });
}

BaseGrads BaseGrads::zeros(const LlamaConfig& c) {
  const int64_t H = c.hidden_size, V = c.vocab_size;
  BaseGrads g;
  g.embed.assign(size_t(V * H), 0.0f);
  if (!c.tie_word_embeddings) g.lm_head.assign(size_t(V * H), 0.0f);
  g.final_norm.assign(size_t(H), 0.0f);
  g.blocks.resize(size_t(c.num_hidden_layers));
  for (auto& b : g.blocks) {
    b.input_norm.assign(size_t(H), 0.0f);
    b.post_norm.assign(size_t(H), 0.0f);
    for (LinearKind k : kAllLinears)
      b.linear[size_t(k)].assign(size_t(linear_out_features(c, k) * linear_in_features(c, k)), 0.0f);
  }
  return g;
}

BaseGrads BaseGrads::linears_only(const LlamaConfig& c) {
  BaseGrads g;
  g.blocks.resize(size_t(c.num_hidden_layers));
  for (auto& b : g.blocks)
    for (LinearKind k : kAllLinears)
      b.linear[size_t(k)].assign(size_t(linear_out_features(c, k) * linear_in_features(c, k)), 0.0f);
  return g;
}

namespace {

// The buffer's data, or null for an empty one (a gradient that is not wanted).
float* or_null(std::vector<float>& v) { return v.empty() ? nullptr : v.data(); }

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

struct Ctx {
  const LlamaModel& model;
  const LlamaConfig& c;
  const RopeTable& rope;
  const LoraAdapters* lora;
  bool dropout_on;
  uint64_t seed;
};

// What a linear's LoRA branch keeps for its backward.
struct LoraSaved {
  std::vector<float> xd;  // dropout(x) [N, in], only when dropout is on
  std::vector<float> t;   // dropout(x) A^T [N, r] (with IEC: h = that + a_s * mean_groups(x))
};

IecLora iec_view(const LoraLinear& a, double scaling) {
  return {a.a.data(), a.b.data(), a.r, a.in, a.out, a.a_scale[0], a.b_scale[0], float(scaling)};
}

// One block's intermediates, from its (re)computed forward.
struct BlockState {
  std::vector<float> x1, q, k, v, att, h_mid, x2, gate, up, act;
  std::array<LoraSaved, 7> lora;
};

const LoraLinear* adapter(const Ctx& cx, int64_t layer, LinearKind k) {
  if (cx.lora == nullptr) return nullptr;
  const LoraLinear& a = cx.lora->layers[size_t(layer)][size_t(k)];
  return a.active() ? &a : nullptr;
}

// The dropout mask's keep-scale of element i of (layer, kind)'s input: 0 or 1 / (1 - p).
float keep_scale(const Ctx& cx, int64_t layer, LinearKind k, int64_t i) {
  const double p = cx.lora->config.dropout;
  const uint64_t h = splitmix64(cx.seed ^ splitmix64(uint64_t(layer) * 8 + uint64_t(k) + 1) ^ uint64_t(i) * 0x2545f4914f6cdd1dull);
  const double u = double(h >> 11) * 0x1.0p-53;
  return u < p ? 0.0f : float(1.0 / (1.0 - p));
}

// y [N, out] = x W^T (+ scaling * dropout(x) A^T B^T).
void linear_forward(const Ctx& cx, int64_t layer, LinearKind k, const float* w, const float* x, float* y, int64_t N,
                    int64_t in, int64_t out, LoraSaved& s) {
  ops::linear(x, w, y, N, in, out);
  const LoraLinear* a = adapter(cx, layer, k);
  if (a == nullptr) return;
  const float* xd = x;
  if (cx.dropout_on && cx.lora->config.dropout > 0) {
    s.xd.resize(size_t(N * in));
    for (int64_t i = 0; i < N * in; ++i) s.xd[size_t(i)] = x[i] * keep_scale(cx, layer, k, i);
    xd = s.xd.data();
  } else {
    s.xd.clear();
  }
  s.t.resize(size_t(N * a->r));
  if (a->has_iec()) {
    const IecLora l = iec_view(*a, cx.lora->config.scaling());
    iec_down(l, x, xd, N, s.t.data());
    iec_up(l, s.t.data(), N, y);
    return;
  }
  ops::linear(xd, a->a.data(), s.t.data(), N, in, a->r);
  std::vector<float> tmp(size_t(N * out));
  ops::linear(s.t.data(), a->b.data(), tmp.data(), N, a->r, out);
  const float scaling = float(cx.lora->config.scaling());
  for (int64_t i = 0; i < N * out; ++i) y[i] += scaling * tmp[size_t(i)];
}

// dx [N, in] (= or += when accumulate) from dy [N, out]; dw += (may be null); LoRA gradients
// into g (may be null).
void linear_backward(const Ctx& cx, int64_t layer, LinearKind k, const float* w, const float* x, const LoraSaved& s,
                     const float* dy, float* dx, bool accumulate, float* dw, int64_t N, int64_t in, int64_t out,
                     LoraAdapters* grads) {
  ops::linear_backward(x, w, dy, dx, dw, N, in, out, accumulate);
  const LoraLinear* a = adapter(cx, layer, k);
  if (a == nullptr) return;
  LoraLinear* g = grads ? &grads->layers[size_t(layer)][size_t(k)] : nullptr;
  const bool dropped = !s.xd.empty();
  if (a->has_iec()) {
    std::vector<float> dxd(dropped ? size_t(N * in) : 0);
    IecGrads ig;
    ig.dx = dx;
    ig.dxd = dropped ? dxd.data() : dx;
    if (g != nullptr) ig = {dx, g->a.data(), g->b.data(), g->a_scale.data(), g->b_scale.data(), ig.dxd};
    iec_lora_backward(iec_view(*a, cx.lora->config.scaling()), x, dropped ? s.xd.data() : x, s.t.data(), dy, N, ig);
    if (dropped)
      for (int64_t i = 0; i < N * in; ++i) dx[i] += dxd[size_t(i)] * keep_scale(cx, layer, k, i);
    return;
  }
  const float scaling = float(cx.lora->config.scaling());
  std::vector<float> dys(size_t(N * out)), dt(size_t(N * a->r));
  for (int64_t i = 0; i < N * out; ++i) dys[size_t(i)] = scaling * dy[i];
  // t = xd A^T, y += scaling t B^T:  dB += scaling dy^T t,  dt = scaling dy B.
  ops::linear_backward(s.t.data(), a->b.data(), dys.data(), dt.data(), g ? g->b.data() : nullptr, N, a->r, out);
  const float* xd = dropped ? s.xd.data() : x;
  if (!dropped) {
    // dA += dt^T xd,  dx += dt A.
    ops::linear_backward(xd, a->a.data(), dt.data(), dx, g ? g->a.data() : nullptr, N, in, a->r, true);
    return;
  }
  std::vector<float> dxd(size_t(N * in));
  ops::linear_backward(xd, a->a.data(), dt.data(), dxd.data(), g ? g->a.data() : nullptr, N, in, a->r, false);
  for (int64_t i = 0; i < N * in; ++i) dx[i] += dxd[size_t(i)] * keep_scale(cx, layer, k, i);
}

// The block's steps (model/llama_block.h) for training: fp32 on the CPU, each linear with its
// LoRA branch, every intermediate the backward needs kept in a BlockState (the residual stream
// after the attention half in h_mid, not in place). No hooks: the training forward has none.
class TrainBlockOps final : public BlockOps {
 public:
  TrainBlockOps(const Ctx& cx, int64_t layer, const BlockWeights& w, float* h, int64_t B, int64_t T, BlockState& st)
      : cx_(cx), c_(cx.c), layer_(layer), w_(w), h_(h), B_(B), T_(T), N_(B * T), st_(st) {
    y_.resize(size_t(N_ * c_.hidden_size));
  }

  void norm(BlockHalf half) override {
    const int64_t H = c_.hidden_size;
    const float eps = float(c_.rms_norm_eps);
    if (half == BlockHalf::Attention) {
      st_.x1.resize(size_t(N_ * H));
      ops::rmsnorm(h_, w_.input_norm.data_as<float>(), st_.x1.data(), N_, H, eps);
    } else {
      st_.x2.resize(size_t(N_ * H));
      ops::rmsnorm(st_.h_mid.data(), w_.post_norm.data_as<float>(), st_.x2.data(), N_, H, eps);
    }
  }

  void hooks(InputSite) override {}

  void products(InputSite s) override {
    const int64_t H = c_.hidden_size, F = c_.intermediate_size, qd = c_.q_dim(), kvd = c_.kv_dim();
    switch (s) {
      case InputSite::AttnIn:
        st_.q.resize(size_t(N_ * qd));
        st_.k.resize(size_t(N_ * kvd));
        st_.v.resize(size_t(N_ * kvd));
        lin(LinearKind::Q, st_.x1.data(), st_.q.data(), H, qd);
        lin(LinearKind::K, st_.x1.data(), st_.k.data(), H, kvd);
        lin(LinearKind::V, st_.x1.data(), st_.v.data(), H, kvd);
        break;
      case InputSite::AttnOut: lin(LinearKind::O, st_.att.data(), y_.data(), qd, H); break;
      case InputSite::MlpIn:
        st_.gate.resize(size_t(N_ * F));
        st_.up.resize(size_t(N_ * F));
        lin(LinearKind::Gate, st_.x2.data(), st_.gate.data(), H, F);
        lin(LinearKind::Up, st_.x2.data(), st_.up.data(), H, F);
        break;
      case InputSite::MlpOut: lin(LinearKind::Down, st_.act.data(), y_.data(), F, H); break;
    }
  }

  void attention() override {
    const int64_t T = T_, nh = c_.num_attention_heads, nkv = c_.num_key_value_heads, hd = c_.head_dim;
    const int64_t qd = c_.q_dim(), kvd = c_.kv_dim();
    st_.att.resize(size_t(N_ * qd));
    for (int64_t b = 0; b < B_; ++b) {
      ops::rope(st_.q.data() + b * T * qd, T, nh, qd, cx_.rope, 0);
      ops::rope(st_.k.data() + b * T * kvd, T, nkv, kvd, cx_.rope, 0);
      ops::attention(st_.q.data() + b * T * qd, st_.k.data() + b * T * kvd, st_.v.data() + b * T * kvd,
                     st_.att.data() + b * T * qd, T, nh, nkv, hd);
    }
  }

  void swiglu() override {
    st_.act.resize(size_t(N_ * c_.intermediate_size));
    ops::swiglu(st_.gate.data(), st_.up.data(), st_.act.data(), N_ * c_.intermediate_size);
  }

  void residual(BlockHalf half) override {
    const int64_t n = N_ * c_.hidden_size;
    if (half == BlockHalf::Attention) {
      st_.h_mid.resize(size_t(n));
      for (int64_t i = 0; i < n; ++i) st_.h_mid[size_t(i)] = h_[i] + y_[size_t(i)];
    } else {
      for (int64_t i = 0; i < n; ++i) h_[i] = st_.h_mid[size_t(i)] + y_[size_t(i)];
    }
  }

 private:
  void lin(LinearKind k, const float* x, float* y, int64_t in, int64_t out) {
    linear_forward(cx_, layer_, k, w_[k].data_as<float>(), x, y, N_, in, out, st_.lora[size_t(k)]);
  }

  const Ctx& cx_;
  const LlamaConfig& c_;
  const int64_t layer_;
  const BlockWeights& w_;
  float* h_;
  const int64_t B_, T_, N_;
  BlockState& st_;
  std::vector<float> y_;  // the output of o_proj, then of down_proj [N, H]
};

// h [N, H] in place: h += attn(norm(h)); h += mlp(norm(h)), keeping the intermediates in st.
void block_forward(const Ctx& cx, int64_t layer, const BlockWeights& w, float* h, int64_t B, int64_t T,
                   BlockState& st) {
  TrainBlockOps ops(cx, layer, w, h, B, T, st);
  run_block_steps(ops, block_steps());
}

// dh [N, H]: in, the gradient at the block's output; out, at its input h_in.
void block_backward(const Ctx& cx, int64_t layer, const BlockWeights& w, const float* h_in, const BlockState& st,
                    float* dh, int64_t B, int64_t T, LoraAdapters* lgrads, BaseGrads::Block* bg) {
  const LlamaConfig& c = cx.c;
  const int64_t H = c.hidden_size, F = c.intermediate_size, N = B * T;
  const int64_t nh = c.num_attention_heads, nkv = c.num_key_value_heads, hd = c.head_dim;
  const int64_t qd = nh * hd, kvd = nkv * hd;
  const float eps = float(c.rms_norm_eps);
  auto lin_bwd = [&](LinearKind k, const float* x, const float* dy, float* dx, bool acc, int64_t in, int64_t out) {
    linear_backward(cx, layer, k, w[k].data_as<float>(), x, st.lora[size_t(k)], dy, dx, acc,
                    bg ? bg->linear[size_t(k)].data() : nullptr, N, in, out, lgrads);
  };
  // MLP: h_out = h_mid + down(silu(gate(x2)) * up(x2)), x2 = norm(h_mid).
  std::vector<float> dact(size_t(N * F)), dgate(size_t(N * F)), dup(size_t(N * F));
  lin_bwd(LinearKind::Down, st.act.data(), dh, dact.data(), false, F, H);
  ops::swiglu_backward(st.gate.data(), st.up.data(), dact.data(), dgate.data(), dup.data(), N * F);
  dact = {};
  std::vector<float> dx(size_t(N * H));
  lin_bwd(LinearKind::Gate, st.x2.data(), dgate.data(), dx.data(), false, H, F);
  lin_bwd(LinearKind::Up, st.x2.data(), dup.data(), dx.data(), true, H, F);
  dgate = {};
  dup = {};
  std::vector<float> dn(size_t(N * H));
  ops::rmsnorm_backward(st.h_mid.data(), w.post_norm.data_as<float>(), dx.data(), dn.data(),
                        bg ? or_null(bg->post_norm) : nullptr, N, H, eps);
  for (int64_t i = 0; i < N * H; ++i) dh[i] += dn[size_t(i)];  // dh is now d h_mid
  // Attention: h_mid = h_in + o(attn(rope(q(x1)), rope(k(x1)), v(x1))), x1 = norm(h_in).
  std::vector<float> datt(size_t(N * qd)), dq(size_t(N * qd)), dk(size_t(N * kvd)), dv(size_t(N * kvd));
  lin_bwd(LinearKind::O, st.att.data(), dh, datt.data(), false, qd, H);
  for (int64_t b = 0; b < B; ++b) {
    ops::attention_backward(st.q.data() + b * T * qd, st.k.data() + b * T * kvd, st.v.data() + b * T * kvd,
                            datt.data() + b * T * qd, dq.data() + b * T * qd, dk.data() + b * T * kvd,
                            dv.data() + b * T * kvd, T, nh, nkv, hd);
    ops::rope_backward(dq.data() + b * T * qd, T, nh, qd, cx.rope, 0);
    ops::rope_backward(dk.data() + b * T * kvd, T, nkv, kvd, cx.rope, 0);
  }
  lin_bwd(LinearKind::Q, st.x1.data(), dq.data(), dx.data(), false, H, qd);
  lin_bwd(LinearKind::K, st.x1.data(), dk.data(), dx.data(), true, H, kvd);
  lin_bwd(LinearKind::V, st.x1.data(), dv.data(), dx.data(), true, H, kvd);
  ops::rmsnorm_backward(h_in, w.input_norm.data_as<float>(), dx.data(), dn.data(),
                        bg ? or_null(bg->input_norm) : nullptr, N, H, eps);
  for (int64_t i = 0; i < N * H; ++i) dh[i] += dn[size_t(i)];
}

StepResult run(const LlamaModel& model, const LoraAdapters* lora, const Batch& batch, const StepOptions& opt,
               bool backward, LoraAdapters* lora_grads, BaseGrads* base_grads) {
  check_step_input(model, lora, batch);
  const LlamaConfig& c = model.config();
  const int64_t B = batch.B, T = batch.T, N = B * T, H = c.hidden_size, V = c.vocab_size, L = c.num_hidden_layers;
  const RopeTable rope = make_rope_table(c, T);
  const Ctx cx{model, c, rope, lora, backward, opt.dropout_seed};

  StepResult res;
  res.num_targets = batch.num_targets();
  const double scale = opt.loss_scale > 0 ? opt.loss_scale : (res.num_targets ? 1.0 / double(res.num_targets) : 0.0);

  std::vector<float> h(size_t(N * H));
  model.embed(batch.tokens, h.data());
  std::vector<std::vector<float>> block_in(backward ? size_t(L) : 0);
  BlockState st;
  for (int64_t l = 0; l < L; ++l) {
    if (backward) block_in[size_t(l)] = h;
    block_forward(cx, l, *model.block_weights(l), h.data(), B, T, st);
  }
  st = {};
  // Final norm, LM head and loss in chunks of rows: the [N, V] logits never exist at once.
  std::vector<float> x(size_t(N * H));
  ops::rmsnorm(h.data(), model.final_norm_weight().data_as<float>(), x.data(), N, H, float(c.rms_norm_eps));
  const float* head = model.lm_head_f32();
  float* dhead = nullptr;
  if (base_grads) dhead = c.tie_word_embeddings ? or_null(base_grads->embed) : or_null(base_grads->lm_head);
  std::vector<float> dx(backward ? size_t(N * H) : 0);
  const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(N, (int64_t(64) << 20) / (4 * V)));
  std::vector<float> logits(size_t(chunk * V));
  for (int64_t r0 = 0; r0 < N; r0 += chunk) {
    const int64_t rows = std::min(chunk, N - r0);
    ops::linear(x.data() + r0 * H, head, logits.data(), rows, H, V);
    if (opt.logits_loss)
      res.loss_sum += opt.logits_loss(r0, rows, V, logits.data());
    else
      res.loss_sum += ops::cross_entropy_backward(logits.data(), batch.targets.data() + r0, logits.data(), rows, V,
                                                  float(scale));
    if (backward)
      ops::linear_backward(x.data() + r0 * H, head, logits.data(), dx.data() + r0 * H, dhead, rows, H, V);
  }
  if (!backward) return res;
  // dh at the final norm's input, then through the blocks in reverse, recomputing each.
  std::vector<float> dh(size_t(N * H));
  ops::rmsnorm_backward(h.data(), model.final_norm_weight().data_as<float>(), dx.data(), dh.data(),
                        base_grads ? or_null(base_grads->final_norm) : nullptr, N, H, float(c.rms_norm_eps));
  for (int64_t l = L - 1; l >= 0; --l) {
    auto w = model.block_weights(l);
    std::vector<float> hb = block_in[size_t(l)];
    block_forward(cx, l, *w, hb.data(), B, T, st);
    block_backward(cx, l, *w, block_in[size_t(l)].data(), st, dh.data(), B, T, lora_grads,
                   base_grads ? &base_grads->blocks[size_t(l)] : nullptr);
    block_in[size_t(l)] = {};
  }
  if (base_grads && !base_grads->embed.empty()) ops::embedding_backward(batch.tokens.data(), dh.data(), base_grads->embed.data(), N, H);
  return res;
}

}  // namespace

void check_step_input(const LlamaModel& model, const LoraAdapters* lora, const Batch& batch) {
  const LlamaConfig& c = model.config();
  LB_CHECK(batch.B > 0 && batch.T > 0, "training batch of {} x {} tokens is empty", batch.B, batch.T);
  LB_CHECK(int64_t(batch.tokens.size()) == batch.B * batch.T && int64_t(batch.targets.size()) == batch.B * batch.T,
           "training batch: {} tokens and {} targets for {} x {}", batch.tokens.size(), batch.targets.size(),
           batch.B, batch.T);
  LB_CHECK(batch.T <= c.max_position_embeddings, "training sequence of {} tokens is longer than the model's context {}",
           batch.T, c.max_position_embeddings);
  for (size_t i = 0; i < batch.targets.size(); ++i)
    LB_CHECK(batch.targets[i] < c.vocab_size, "target token {} at position {} is outside the vocabulary (size {})",
             batch.targets[i], i, c.vocab_size);
  if (lora != nullptr)
    LB_CHECK(int64_t(lora->layers.size()) == c.num_hidden_layers, "LoRA adapters for {} layers on a model of {}",
             lora->layers.size(), c.num_hidden_layers);
}

StepResult forward_backward(const LlamaModel& model, const LoraAdapters* lora, const Batch& batch,
                            const StepOptions& opt, LoraAdapters* lora_grads, BaseGrads* base_grads) {
  return run(model, lora, batch, opt, true, lora_grads, base_grads);
}

StepResult forward_loss(const LlamaModel& model, const LoraAdapters* lora, const Batch& batch) {
  return run(model, lora, batch, StepOptions{}, false, nullptr, nullptr);
}

}  // namespace lowbit::train
