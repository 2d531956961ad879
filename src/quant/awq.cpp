#include "quant/awq.h"

#include "backend/ops.h"
#include "core/error.h"
#include "quant/method.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>

namespace lowbit {

namespace {

// Per (row, group): min/max over the group, AWQ's scale and zero.
struct AwqGrid {
  float scale, zero;
};
inline AwqGrid awq_grid(const float* x, int64_t n, int maxq) {
  float mn = x[0], mx = x[0];
  for (int64_t i = 1; i < n; ++i) {
    mn = std::min(mn, x[i]);
    mx = std::max(mx, x[i]);
  }
  AwqGrid g;
  g.scale = std::max(mx - mn, 1e-5f) / float(maxq);
  g.zero = std::clamp(-std::nearbyint(mn / g.scale), 0.0f, float(maxq));
  return g;
}
inline float awq_code(float x, const AwqGrid& g, int maxq) {
  return std::clamp(std::nearbyint(x / g.scale) + g.zero, 0.0f, float(maxq));
}

void check_group(int64_t cols, int64_t group, const char* what) {
  LB_CHECK(group > 0 && cols % group == 0, "awq: group size {} does not divide the {} input features of {}", group,
           cols, what);
}

}  // namespace

QuantizedLinear awq_quantize(const float* w, int64_t rows, int64_t cols, int bits, int64_t group_size, DType dtype) {
  const int64_t gs = group_size < 0 ? cols : group_size;
  check_group(cols, gs, "this linear");
  QuantizedLinear q;
  q.rows = rows;
  q.cols = cols;
  q.format = &kIntFormat;
  q.bits = bits;
  q.group_size = gs;
  q.dequant_dtype = dtype;
  q.zero_storage_bits = double(bits);
  const int maxq = (1 << bits) - 1;
  const int64_t ng = cols / gs;
  q.codes.resize(size_t(rows * cols));
  q.scales.resize(size_t(rows * ng));
  q.zeros.resize(size_t(rows * ng));
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t g = 0; g < ng; ++g) {
      const float* x = w + r * cols + g * gs;
      const AwqGrid p = awq_grid(x, gs, maxq);
      q.scales[size_t(r * ng + g)] = p.scale;
      q.zeros[size_t(r * ng + g)] = p.zero;
      for (int64_t c = 0; c < gs; ++c) q.codes[size_t(r * cols + g * gs + c)] = uint8_t(awq_code(x[c], p, maxq));
    }
  return q;
}

void awq_fake_quantize(float* w, int64_t rows, int64_t cols, int bits, int64_t group_size) {
  const int64_t gs = group_size < 0 ? cols : group_size;
  const int maxq = (1 << bits) - 1;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t g = 0; g < cols / gs; ++g) {
      float* x = w + r * cols + g * gs;
      const AwqGrid p = awq_grid(x, gs, maxq);
      for (int64_t c = 0; c < gs; ++c) x[c] = (awq_code(x[c], p, maxq) - p.zero) * p.scale;
    }
}

namespace {

using K = LinearKind;

using Part = BlockContext::Part;

// The group's scales: the grid point whose scaled, fake-quantized weights change the module's
// output (judged through ctx.probe, on the context's device) least.
AwqBlockChoices::Group search_scales(const BlockContext& ctx, const std::string& name, Part what, K single,
                                     const std::vector<K>& linears, const BlockWeights& w0, const std::vector<float>& x,
                                     int64_t in_cols, const AwqOptions& opt) {
  const int64_t N = ctx.nseq() * ctx.seqlen();
  // mean |x| per input channel (AWQ's get_act_scale).
  std::vector<double> sum(size_t(in_cols), 0.0);
  for (int64_t t = 0; t < N; ++t)
    for (int64_t c = 0; c < in_cols; ++c) sum[size_t(c)] += std::fabs(x[size_t(t * in_cols + c)]);
  std::vector<float> x_mean(static_cast<size_t>(in_cols));
  for (int64_t c = 0; c < in_cols; ++c) x_mean[size_t(c)] = float(sum[size_t(c)] / double(N));

  const auto probe = ctx.probe(what, single, w0, linears, x);
  AwqBlockChoices::Group best;
  best.name = name;
  double best_loss = INFINITY;
  // The trial block shares w0's tensors (Tensor copies are views of one storage) except the
  // group's linears, which it owns and rewrites at every grid point: one group's weights more,
  // not a block.
  BlockWeights trial = w0;
  for (K k : linears) trial[k] = Tensor::empty(DType::F32, w0[k].shape());
  for (int i = 0; i < opt.grid; ++i) {
    const float ratio = float(i) / float(opt.grid);
    std::vector<float> s(static_cast<size_t>(in_cols));
    float smax = 0, smin = INFINITY;
    for (int64_t c = 0; c < in_cols; ++c) {
      s[size_t(c)] = std::max(std::pow(x_mean[size_t(c)], ratio), 1e-4f);
      smax = std::max(smax, s[size_t(c)]);
      smin = std::min(smin, s[size_t(c)]);
    }
    const float norm = std::sqrt(smax * smin);
    for (float& v : s) v /= norm;
    for (K k : linears) {
      Tensor& t = trial[k];
      const int64_t rows = t.dim(0);
      float* p = t.mutable_data_as<float>();
      const float* src = w0[k].data_as<float>();
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < in_cols; ++c) p[r * in_cols + c] = src[r * in_cols + c] * s[size_t(c)];
      awq_fake_quantize(p, rows, in_cols, opt.bits, opt.group_size);
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < in_cols; ++c) p[r * in_cols + c] /= s[size_t(c)];
    }
    const double loss = probe->mse(trial);
    best.losses.push_back(loss);
    if (loss < best_loss) {
      best_loss = loss;
      best.ratio = double(i) / double(opt.grid);
      best.loss = loss;
      best.scales = s;
    }
  }
  LB_CHECK(best.ratio >= 0, "awq: layer {} group {}: no finite loss in the scale search", ctx.layer(), name);
  return best;
}

// Columns of `k` times s; for a norm or a previous linear's rows, divided by s.
void scale_columns(Tensor& t, const std::vector<float>& s) {
  const int64_t rows = t.dim(0), cols = t.dim(1);
  float* p = t.mutable_data_as<float>();
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) p[r * cols + c] *= s[size_t(c)];
}
void divide_vector(Tensor& t, const std::vector<float>& s) {
  float* p = t.mutable_data_as<float>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] /= s[size_t(i)];
}
void divide_rows(Tensor& t, const std::vector<float>& s) {
  const int64_t rows = t.dim(0), cols = t.dim(1);
  float* p = t.mutable_data_as<float>();
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) p[r * cols + c] /= s[size_t(r)];
}
void divide_features(std::vector<float>& x, int64_t cols, const std::vector<float>& s) {
  const int64_t n = int64_t(x.size()) / cols;
  for (int64_t t = 0; t < n; ++t)
    for (int64_t c = 0; c < cols; ++c) x[size_t(t * cols + c)] /= s[size_t(c)];
}

}  // namespace

// AWQ's auto_clip_layer: per (row, group), the max |w| that minimizes the output error.
std::vector<float> awq_search_clip(const Tensor& wt, const std::vector<float>& x, const AwqOptions& opt) {
  const int64_t rows = wt.dim(0), cols = wt.dim(1);
  const int64_t gs = opt.group_size < 0 ? cols : opt.group_size, ng = cols / gs;
  const int64_t N = int64_t(x.size()) / cols;
  // input_feat[:, 0::N // n_sample_token]
  const int64_t stride = std::max<int64_t>(1, N / opt.clip_tokens);
  std::vector<int64_t> tokens;
  for (int64_t t = 0; t < N; t += stride) tokens.push_back(t);
  const int64_t nt = int64_t(tokens.size());
  const int maxq = (1 << opt.bits) - 1;
  const float* w = wt.data_as<float>();
  std::vector<float> best(size_t(rows * ng));
  const int shrinks = int(opt.max_shrink * opt.clip_grid);
  for (int64_t g = 0; g < ng; ++g) {
    // Xg [nt, gs], the group's columns of the sampled tokens.
    std::vector<float> xg(size_t(nt * gs));
    for (int64_t i = 0; i < nt; ++i)
      std::memcpy(xg.data() + i * gs, x.data() + tokens[size_t(i)] * cols + g * gs, size_t(gs) * sizeof(float));
    std::vector<float> wg(size_t(rows * gs)), qg(size_t(rows * gs)), org(size_t(nt * rows)), cur(size_t(nt * rows));
    std::vector<float> org_max(static_cast<size_t>(rows)), min_err(static_cast<size_t>(rows), 1e9f);
    for (int64_t r = 0; r < rows; ++r) {
      std::memcpy(wg.data() + r * gs, w + r * cols + g * gs, size_t(gs) * sizeof(float));
      float m = 0;
      for (int64_t c = 0; c < gs; ++c) m = std::max(m, std::fabs(wg[size_t(r * gs + c)]));
      org_max[size_t(r)] = m;
      best[size_t(r * ng + g)] = m;
    }
    ops::linear(xg.data(), wg.data(), org.data(), nt, gs, rows);
    for (int i = 0; i < shrinks; ++i) {
      // max |w| x (1 - i / grid) in fp32 (the factor computed in fp64 and rounded, as PyTorch
      // multiplies an fp32 tensor by a Python float).
      const float f = float(1.0 - double(i) / double(opt.clip_grid));
      auto shrunk = [&](int64_t r) { return org_max[size_t(r)] * f; };
#pragma omp parallel for schedule(static)
      for (int64_t r = 0; r < rows; ++r) {
        const float mx = shrunk(r);
        float* q = qg.data() + r * gs;
        for (int64_t c = 0; c < gs; ++c) q[c] = std::clamp(wg[size_t(r * gs + c)], -mx, mx);
        const AwqGrid p = awq_grid(q, gs, maxq);
        for (int64_t c = 0; c < gs; ++c) q[c] = (awq_code(q[c], p, maxq) - p.zero) * p.scale;
      }
      ops::linear(xg.data(), qg.data(), cur.data(), nt, gs, rows);
      for (int64_t r = 0; r < rows; ++r) {
        double e = 0;
        for (int64_t t = 0; t < nt; ++t) {
          const double d = double(cur[size_t(t * rows + r)]) - double(org[size_t(t * rows + r)]);
          e += d * d;
        }
        const float err = float(e / double(nt));
        if (err < min_err[size_t(r)]) {
          min_err[size_t(r)] = err;
          best[size_t(r * ng + g)] = shrunk(r);
        }
      }
    }
  }
  return best;
}

namespace {

void apply_clip(Tensor& t, const std::vector<float>& max_val, int64_t group_size) {
  const int64_t rows = t.dim(0), cols = t.dim(1);
  const int64_t gs = group_size < 0 ? cols : group_size, ng = cols / gs;
  float* p = t.mutable_data_as<float>();
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) {
      const float m = max_val[size_t(r * ng + c / gs)];
      p[r * cols + c] = std::clamp(p[r * cols + c], -m, m);
    }
}

}  // namespace

AwqBlockChoices awq_scale_and_clip(BlockContext& ctx, const AwqOptions& opt) {
  BlockWeights& w = ctx.weights();
  for (K k : kAllLinears) check_group(w[k].dim(1), opt.group_size < 0 ? w[k].dim(1) : opt.group_size, linear_name(k));
  AwqBlockChoices out;
  // The inputs of every linear in one pass of the unmodified block. The search needs them as
  // recorded (every group is judged on the original inputs) and the clipping needs them divided
  // by the scales, so they are held for the whole block; capture_inputs hands the buffers over,
  // and they are moved out, not copied. That is the method's peak: [nseq * seqlen] tokens x
  // (3 x hidden + intermediate) fp32.
  auto feats = ctx.capture_inputs(kAllLinears);
  std::vector<float> x_qkv = std::move(*feats.at(K::Q)), x_o = std::move(*feats.at(K::O)),
                     x_gu = std::move(*feats.at(K::Gate)), x_down = std::move(*feats.at(K::Down));
  feats.clear();
  const int64_t H = w[K::Q].dim(1), qd = w[K::O].dim(1), F = w[K::Down].dim(1);
  const bool v_to_o = w[K::V].dim(0) == w[K::O].dim(0) && w[K::V].dim(1) == w[K::O].dim(1);

  // 1. every group searched on the original weights.
  out.groups.push_back(search_scales(ctx, "qkv", Part::Attention, K::Q, {K::Q, K::K, K::V}, w, x_qkv, H, opt));
  if (v_to_o)
    out.groups.push_back(search_scales(ctx, "v->o", Part::Linear, K::O, {K::O}, w, x_o, qd, opt));
  else
    out.notes.push_back(fmt::format("v_proj -> o_proj scaling skipped: v_proj is [{}, {}], o_proj [{}, {}] (grouped-"
                                    "query attention), as in AWQ's reference",
                                    w[K::V].dim(0), w[K::V].dim(1), w[K::O].dim(0), w[K::O].dim(1)));
  out.groups.push_back(search_scales(ctx, "gate,up", Part::Mlp, K::Gate, {K::Gate, K::Up}, w, x_gu, H, opt));
  out.groups.push_back(search_scales(ctx, "up->down", Part::Linear, K::Down, {K::Down}, w, x_down, F, opt));

  // 2. fold the scales; the recorded inputs follow.
  for (const auto& g : out.groups) {
    if (g.name == "qkv") {
      divide_vector(w.input_norm, g.scales);
      for (K k : {K::Q, K::K, K::V}) scale_columns(w[k], g.scales);
      divide_features(x_qkv, H, g.scales);
    } else if (g.name == "v->o") {
      divide_rows(w[K::V], g.scales);
      scale_columns(w[K::O], g.scales);
      divide_features(x_o, qd, g.scales);
    } else if (g.name == "gate,up") {
      divide_vector(w.post_norm, g.scales);
      for (K k : {K::Gate, K::Up}) scale_columns(w[k], g.scales);
      divide_features(x_gu, H, g.scales);
    } else {
      divide_rows(w[K::Up], g.scales);
      scale_columns(w[K::Down], g.scales);
      divide_features(x_down, F, g.scales);
    }
  }
  // 3. clipping, q and k excepted.
  if (opt.clip) {
    const std::pair<K, const std::vector<float>*> clipped[] = {
        {K::V, &x_qkv}, {K::O, &x_o}, {K::Gate, &x_gu}, {K::Up, &x_gu}, {K::Down, &x_down}};
    for (const auto& [k, x] : clipped) {
      out.clip_max[k] = awq_search_clip(w[k], *x, opt);
      apply_clip(w[k], out.clip_max[k], opt.group_size);
    }
  }
  return out;
}

namespace {

class Awq : public QuantMethod {
 public:
  explicit Awq(QuantSpec s) : QuantMethod(std::move(s)) {
    opt_.bits = spec_.take_weight_bits(4);
    opt_.group_size = spec_.take_group_size(128);
    opt_.grid = int(spec_.take_int("grid", 20, 1, 1000, "points of the scale exponent grid in [0, 1)"));
    opt_.clip = spec_.take_bool("clip", true, "search the clipping range of every linear but q and k");
    spec_.finish();
  }
  bool needs_calibration() const override { return true; }
  double weight_bits() const override { return opt_.bits; }
  int64_t group_size() const override { return opt_.group_size; }
  bool propagates_quantized() const override { return false; }
  void check_shapes(const LlamaConfig& c) const override {
    if (opt_.group_size < 0) return;
    check_group(c.hidden_size, opt_.group_size, "q_proj");
    check_group(c.q_dim(), opt_.group_size, "o_proj");
    check_group(c.intermediate_size, opt_.group_size, "down_proj");
  }

  void quantize_block(BlockContext& ctx, QuantizedBlock& out) override {
    const auto t0 = std::chrono::steady_clock::now();
    const AwqBlockChoices ch = awq_scale_and_clip(ctx, opt_);
    for (const auto& n : ch.notes) ctx.note(n);
    std::string summary;
    for (const auto& g : ch.groups) summary += fmt::format("{}{} ratio {:.2f} (loss {:.3g})", summary.empty() ? "" : ", ",
                                                           g.name, g.ratio, g.loss);
    ctx.note(fmt::format("awq scales: {}; search {:.1f} s", summary,
                         std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()));
    for (K k : kAllLinears) {
      const auto t1 = std::chrono::steady_clock::now();
      const Tensor& w = ctx.weights()[k];
      QuantizedLinear q = awq_quantize(w.data_as<float>(), w.dim(0), w.dim(1), opt_.bits, opt_.group_size,
                                       linear_storage_dtype(ctx.model(), ctx.layer(), k));
      // The reported weight error is against the scaled (and clipped) weights the grid was
      // computed on: the block's 16-bit function is the original's, the weights are not.
      finish_linear(ctx, k, std::move(q), out, t1, nullptr, "");
    }
  }

 private:
  AwqOptions opt_;
};

}  // namespace

std::unique_ptr<QuantMethod> make_awq(QuantSpec spec) { return std::make_unique<Awq>(std::move(spec)); }

}  // namespace lowbit
