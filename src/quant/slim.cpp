#include "quant/slim.h"

#include "core/error.h"
#include "core/phase_profile.h"
#include "quant/affine_grid.h"
#include "quant/formats/slim_format.h"
#include "quant/gptq.h"
#include "quant/method.h"

#include <cblas.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <limits>
#include <numeric>
#include <optional>

namespace lowbit {

void slim_salience_hessian_edit(std::vector<double>& h, int64_t cols) {
  for (int64_t c = 0; c < cols; ++c) {
    double& d = h[size_t(c * cols + c)];
    if (d == 0.0) d = 1.0;
    d += 0.01;
  }
}

std::vector<double> slim_group_salience(const float* w, int64_t rows, int64_t cols, const float* hinv,
                                        int64_t group_size, DType square_dtype) {
  const int64_t ng = (cols + group_size - 1) / group_size;
  std::vector<double> s(size_t(ng), 0.0);
  for (int64_t g = 0; g < ng; ++g) {
    const int64_t c0 = g * group_size, c1 = std::min(cols, c0 + group_size);
    double sum = 0;
#pragma omp parallel for reduction(+ : sum) schedule(static)
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = c0; c < c1; ++c) {
        const float d = hinv[c * cols + c];
        const float sq = round_to_dtype(w[r * cols + c] * w[r * cols + c], square_dtype);
        sum += double(sq / (d * d));
      }
    s[size_t(g)] = sum;
  }
  return s;
}

namespace {

std::vector<int64_t> ascending_order(const std::vector<double>& v) {
  std::vector<int64_t> order(v.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return v[size_t(a)] < v[size_t(b)]; });
  return order;
}

// binary()/binary_scale(): mu = mean(w), alpha = mean(|w|) over n values at x[0], x[stride], ...
void binary_params(const float* x, int64_t n, int64_t stride, float* alpha, float* mu) {
  double s = 0, a = 0;
  for (int64_t i = 0; i < n; ++i) {
    s += x[i * stride];
    a += std::fabs(x[i * stride]);
  }
  *mu = float(s / double(n));
  *alpha = float(a / double(n));
}

inline float binary_value(float x, float alpha, float mu, uint8_t* code) {
  const float d = x - mu;
  const float sign = d > 0 ? 1.0f : d < 0 ? -1.0f : 0.0f;
  if (code) *code = d > 0 ? 1 : d < 0 ? 0 : 2;
  return sign * alpha + mu;
}

}  // namespace

std::vector<int> slim_allocate(const std::vector<double>& salience, int64_t count, int bits) {
  const std::vector<int64_t> order = ascending_order(salience);
  const int64_t n = int64_t(order.size());
  std::vector<int> out(order.size(), bits);
  for (int64_t i = 0; i < std::min(count, n); ++i) out[size_t(order[size_t(i)])] = bits - 1;
  for (int64_t i = 0; i < std::min(count, n); ++i) out[size_t(order[size_t(n - 1 - i)])] = bits + 1;
  return out;
}

void slim_search_quantize(const float* w, int64_t rows, int64_t cols, int64_t c0, int64_t c1, int bits, float* out) {
  const int maxq = (1 << bits) - 1;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const float* x = w + r * cols + c0;
    float* y = out + r * cols + c0;
    if (bits == 1) {
      float alpha, mu;
      binary_params(x, c1 - c0, 1, &alpha, &mu);
      for (int64_t c = 0; c < c1 - c0; ++c) y[c] = binary_value(x[c], alpha, mu, nullptr);
    } else {
      const AffineParams p = affine_minmax(x, c1 - c0, 1, maxq, false);
      for (int64_t c = 0; c < c1 - c0; ++c) y[c] = affine_value(affine_code(x[c], p, maxq), p);
    }
  }
}

SlimSearch::SlimSearch(const float* w, int64_t rows, int64_t cols, int64_t group_size, int bits,
                       std::vector<double> salience) {
  const size_t n = size_t(rows * cols);
  mid_.resize(n);
  dlo_.resize(n);
  dhi_.resize(n);
  std::vector<float> lo(n), hi(n);
  for (int64_t c0 = 0; c0 < cols; c0 += group_size) {
    const int64_t c1 = std::min(cols, c0 + group_size);
    slim_search_quantize(w, rows, cols, c0, c1, bits, mid_.data());
    slim_search_quantize(w, rows, cols, c0, c1, bits - 1, lo.data());
    slim_search_quantize(w, rows, cols, c0, c1, bits + 1, hi.data());
  }
  for (size_t i = 0; i < n; ++i) {
    dlo_[i] = lo[i] - mid_[i];
    dhi_[i] = hi[i] - mid_[i];
  }
  // Each candidate moves one more group down and one up, so Z is updated by the two groups'
  // differences.
  const std::vector<int64_t> order = ascending_order(salience);
  const int64_t ng = int64_t(order.size());
  search_.rows = rows;
  search_.cols = cols;
  search_.w = w;
  search_.start = mid_.data();
  for (int64_t i = 1; i <= ng / 2 - 1; ++i) {
    std::vector<KlSearch::Step> steps;
    for (const auto& [g, d] : {std::pair{order[size_t(i - 1)], &dlo_}, std::pair{order[size_t(ng - i)], &dhi_}})
      steps.push_back({g * group_size, std::min(cols, (g + 1) * group_size), d->data()});
    search_.candidates.push_back(std::move(steps));
  }
}

std::vector<double> SlimSearch::errors(const float* x, int64_t tokens) const {
  return kl_search_errors(search_, x, tokens);
}

int64_t slim_pick_count(const std::vector<std::vector<double>>& errors_per_window) {
  LB_CHECK(!errors_per_window.empty() && !errors_per_window[0].empty(),
           "slim: the bit-allocation search has no candidates (fewer than 4 groups per row, or no calibration)");
  const size_t n = errors_per_window[0].size();
  std::vector<double> mean(n, 0.0);
  for (const auto& e : errors_per_window) {
    LB_ASSERT(e.size() == n);
    for (size_t i = 0; i < n; ++i) mean[i] += e[i];
  }
  return int64_t(std::min_element(mean.begin(), mean.end()) - mean.begin()) + 1;
}

const std::vector<float>& slim_shrink_candidates() {
  // torch.cat([ones(1), linspace(1, 1.1, 51)[1:], linspace(1, 0.9, 51)[1:]]) in fp32; torch's
  // CPU linspace computes step = (end - start) / (steps - 1) in the dtype and fills the first
  // half from the start (start + i * step) and the second from the end (end - (steps-1-i) * step).
  static const std::vector<float> p = [] {
    std::vector<float> out{1.0f};
    for (float end : {1.1f, 0.9f}) {
      const float start = 1.0f, step = (end - start) / 50.0f;
      for (int i = 1; i <= 50; ++i) out.push_back(i < 51 / 2 ? start + step * float(i) : end - step * float(50 - i));
    }
    return out;
  }();
  return p;
}

SlimGroupFit slim_fit_group(const float* w1, int64_t rows, int64_t n, const float* hinv_diag, int bits, bool sym,
                            double lambda) {
  SlimGroupFit f;
  f.scale.assign(size_t(rows), 0.0f);
  f.zero.assign(size_t(rows), 0.0f);
  f.choice.assign(size_t(rows), 0);
  if (bits == 1) {
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; ++r) binary_params(w1 + r, n, rows, &f.scale[size_t(r)], &f.zero[size_t(r)]);
    return f;
  }
  const int maxq = (1 << bits) - 1;
  // saliency_mask: sensitivity W^2 / Hinv_cc^2; salient where it reaches the least of the
  // entries whose z-score (mean and unbiased std over the block) exceeds 2. With no such entry
  // the reference fails (min of an empty tensor); here nothing is salient then.
  std::vector<float> sens(size_t(rows * n));
  double mean = 0;
  for (int64_t j = 0; j < n; ++j)
    for (int64_t r = 0; r < rows; ++r) {
      const float w = w1[j * rows + r], d = hinv_diag[j];
      sens[size_t(j * rows + r)] = (w * w) / (d * d);
      mean += sens[size_t(j * rows + r)];
    }
  const double cnt = double(rows * n);
  mean /= cnt;
  double var = 0;
  for (float s : sens) var += (s - mean) * (s - mean);
  const double sd = std::sqrt(var / (cnt - 1));
  float thr = std::numeric_limits<float>::infinity();
  for (float s : sens)
    if (std::fabs((s - mean) / sd) > 2.0) thr = std::min(thr, s);

  const std::vector<float>& cand = slim_shrink_candidates();
  const float fmaxq = float(maxq);
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    float xmin = 0.0f, xmax = 0.0f;
    for (int64_t j = 0; j < n; ++j) {
      xmin = std::min(xmin, w1[j * rows + r]);
      xmax = std::max(xmax, w1[j * rows + r]);
    }
    if (xmin == 0.0f && xmax == 0.0f) {
      xmin = -1.0f;
      xmax = 1.0f;
    }
    const float sym_zero = float(maxq + 1) / 2.0f;
    double best = std::numeric_limits<double>::infinity();
    for (size_t k = 0; k < cand.size(); ++k) {
      const float p = cand[k];
      const float xmin1 = p * xmin, xmax1 = p * xmax;
      const float scale1 = (xmax1 - xmin1) / fmaxq;
      const float zero1 = sym ? sym_zero : std::nearbyint(-xmin1 / scale1);
      double err_ns = 0, err_s = 0;
      for (int64_t j = 0; j < n; ++j) {
        const float x = w1[j * rows + r];
        const float q = std::clamp(std::nearbyint(x / scale1) + zero1, 0.0f, fmaxq);
        const float e = std::pow(std::fabs(scale1 * (q - zero1) - x), 2.4f);
        if (sens[size_t(j * rows + r)] >= thr) err_s += e;
        else err_ns += e;
      }
      const double err = err_ns + lambda * err_s;
      if (err < best) {
        best = err;
        f.scale[size_t(r)] = scale1;
        f.zero[size_t(r)] = zero1;
        f.choice[size_t(r)] = int(k);
      }
    }
  }
  return f;
}

SlimResult slim_quantize(const float* w, int64_t rows, int64_t cols, std::vector<double> h, const SlimOptions& opt,
                         std::vector<int> group_bits, int64_t count, DType dtype, const InverseFactorFn& factor) {
  LB_CHECK(int64_t(h.size()) == cols * cols, "slim: Hessian has {} entries for {} columns", h.size(), cols);
  const int64_t gs = opt.group_size, ng = (cols + gs - 1) / gs;
  SlimResult res;

  std::vector<float> wt(size_t(cols * rows));
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < cols; ++c)
    for (int64_t r = 0; r < rows; ++r) wt[size_t(c * rows + r)] = w[r * cols + c];
  for (int64_t c = 0; c < cols; ++c) {
    if (h[size_t(c * cols + c)] != 0.0) continue;
    h[size_t(c * cols + c)] = 1.0;
    std::fill(wt.begin() + c * rows, wt.begin() + (c + 1) * rows, 0.0f);
    ++res.dead_columns;
  }
  const std::vector<float> hinv =
      factor ? factor(h, cols, opt.damp, &res.damp) : gptq_inverse_factor(h, cols, opt.damp, &res.damp);
  h = {};

  // The search's allocation is made on the fp32 salience with this factor; the quantizer then
  // starts symmetric (the reference's `sym` flag) until the first group of N or more bits.
  bool sym = false;
  if (group_bits.empty()) {
    std::vector<float> wr(size_t(rows * cols));
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) wr[size_t(r * cols + c)] = wt[size_t(c * rows + r)];
    group_bits = slim_allocate(slim_group_salience(wr.data(), rows, cols, hinv.data(), gs, DType::F32), count, opt.bits);
    sym = true;
  }
  LB_CHECK(int64_t(group_bits.size()) == ng, "slim: {} group widths for {} groups", group_bits.size(), ng);
  res.group_bits = group_bits;

  QuantizedLinear& q = res.q;
  q.rows = rows;
  q.cols = cols;
  q.format = &kSlimFormat;
  q.bits = opt.bits + 1;
  q.group_size = gs;
  q.dequant_dtype = dtype;
  q.codes.assign(size_t(rows * cols), 0);
  q.scales.assign(size_t(rows * ng), 0.0f);
  q.zeros.assign(size_t(rows * ng), 0.0f);
  slim_set_group_bits(q, group_bits);
  res.choice.assign(size_t(rows * ng), 0);

  std::vector<float> w1(size_t(gs * rows)), err(size_t(gs * rows)), hd(static_cast<size_t>(gs));
  double loss = 0;
  for (int64_t g = 0; g < ng; ++g) {
    const int64_t i1 = g * gs, i2 = std::min(cols, i1 + gs), count_cols = i2 - i1;
    const int b = group_bits[size_t(g)];
    if (b >= opt.bits) sym = false;
    std::copy(wt.begin() + i1 * rows, wt.begin() + i2 * rows, w1.begin());
    for (int64_t j = 0; j < count_cols; ++j) hd[size_t(j)] = hinv[size_t((i1 + j) * cols + i1 + j)];
    const SlimGroupFit fit = slim_fit_group(w1.data(), rows, count_cols, hd.data(), b, sym, opt.lambda);
    for (int64_t r = 0; r < rows; ++r) {
      q.scales[size_t(r * ng + g)] = fit.scale[size_t(r)];
      q.zeros[size_t(r * ng + g)] = fit.zero[size_t(r)];
      res.choice[size_t(r * ng + g)] = fit.choice[size_t(r)];
    }
    const int maxq = (1 << b) - 1;
#pragma omp parallel reduction(+ : loss)
    {
      const int nt = omp_get_num_threads(), t = omp_get_thread_num();
      const int64_t r0 = rows * t / nt, r1 = rows * (t + 1) / nt;
      for (int64_t i = 0; i < count_cols; ++i) {
        const int64_t col = i1 + i;
        const float d = hinv[size_t(col * cols + col)];
        float* wi = w1.data() + i * rows;
        float* ei = err.data() + i * rows;
        for (int64_t r = r0; r < r1; ++r) {
          uint8_t code;
          float qv;
          if (b == 1) {
            qv = binary_value(wi[r], fit.scale[size_t(r)], fit.zero[size_t(r)], &code);
          } else {
            const AffineParams p{fit.scale[size_t(r)], fit.zero[size_t(r)]};
            code = affine_code(wi[r], p, maxq);
            qv = affine_value(code, p);
          }
          q.codes[size_t(r * cols + col)] = code;
          const float diff = wi[r] - qv;
          loss += double(diff) * double(diff) / (double(d) * double(d));
          ei[r] = diff / d;
        }
        for (int64_t j = i + 1; j < count_cols; ++j) {
          const float hij = hinv[size_t(col * cols + i1 + j)];
          float* wj = w1.data() + j * rows;
          for (int64_t r = r0; r < r1; ++r) wj[r] -= ei[r] * hij;
        }
      }
    }
    if (i2 < cols)
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, blasint(cols - i2), blasint(rows), blasint(count_cols), -1.0f,
                  hinv.data() + i1 * cols + i2, blasint(cols), err.data(), blasint(rows), 1.0f,
                  wt.data() + i2 * rows, blasint(rows));
  }
  res.loss = loss / 2.0;
  return res;
}

std::map<std::string, std::vector<int>> slim_read_allocation(const std::string& path) {
  std::ifstream f(path);
  LB_CHECK(f.good(), "slim: cannot open the allocation file '{}'", path);
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(f);
  } catch (const std::exception& e) {
    fail("slim: the allocation file '{}' is not valid JSON: {}", path, e.what());
  }
  LB_CHECK(j.is_object(), "slim: the allocation file '{}' must hold a JSON object of linear name -> bit widths", path);
  std::map<std::string, std::vector<int>> out;
  for (const auto& [name, v] : j.items()) {
    LB_CHECK(v.is_array(), "slim: allocation file '{}': entry '{}' is not a list of bit widths", path, name);
    std::vector<int> bits;
    for (const auto& b : v) {
      LB_CHECK(b.is_number_integer(), "slim: allocation file '{}': entry '{}' holds a non-integer width {}", path, name,
               b.dump());
      bits.push_back(b.get<int>());
    }
    out[name] = std::move(bits);
  }
  return out;
}

// ---- the method ------------------------------------------------------------------------------

namespace {

class Slim : public QuantMethod {
 public:
  explicit Slim(QuantSpec s) : QuantMethod(std::move(s)) {
    opt_.bits = int(spec_.take_int("w", 2, 2, 8, "weight bits N: groups get N-1, N or N+1 bits, N on average"));
    opt_.group_size = spec_.take_int("g", 128, 1, 1 << 20, "group size along the input dimension");
    opt_.damp = spec_.take_double("damp", 0.01, 0.0, 10.0, "GPTQ damping, a fraction of the mean Hessian diagonal");
    opt_.lambda = spec_.take_double("lambda", 1.0, 0.0, 1e6, "weight of salient weights in the quantizer fit's error");
    alloc_path_ = spec_.take_string("alloc", "", "JSON file of per-group bit widths per linear (skips the search)");
    spec_.finish();
    if (!alloc_path_.empty()) alloc_ = slim_read_allocation(alloc_path_);
  }
  bool needs_calibration() const override { return true; }
  double weight_bits() const override { return opt_.bits; }
  int64_t group_size() const override { return opt_.group_size; }

  void check_shapes(const LlamaConfig& config) const override {
    const int64_t g = opt_.group_size;
    size_t expected = 0;
    for (int64_t l = 0; l < config.num_hidden_layers; ++l)
      for (LinearKind k : kAllLinears) {
        const int64_t cols = linear_in_features(config, k), ng = (cols + g - 1) / g;
        if (alloc_path_.empty()) continue;
        const std::string name = linear_weight_name(l, k).substr(0, linear_weight_name(l, k).size() - 7);
        auto it = alloc_.find(name);
        LB_CHECK(it != alloc_.end(), "slim: allocation file '{}' has no entry for {}", alloc_path_, name);
        LB_CHECK(int64_t(it->second.size()) == ng, "slim: allocation file '{}': {} has {} widths, expected {} ({} "
                 "input features in groups of {})", alloc_path_, name, it->second.size(), ng, cols, g);
        int64_t sum = 0;
        for (int b : it->second) {
          LB_CHECK(b >= std::max(1, opt_.bits - 1) && b <= opt_.bits + 1, "slim: allocation file '{}': {} has a "
                   "{}-bit group; at w={} widths must be in [{}, {}]", alloc_path_, name, b, opt_.bits,
                   std::max(1, opt_.bits - 1), opt_.bits + 1);
          sum += b;
        }
        LB_CHECK(sum == int64_t(opt_.bits) * ng, "slim: allocation file '{}': {}'s widths average {:.4g} bits, not "
                 "w={} (as many N-1 as N+1 groups)", alloc_path_, name, double(sum) / double(ng), opt_.bits);
        ++expected;
      }
    if (!alloc_path_.empty() && alloc_.size() != expected)
      for (const auto& [name, bits] : alloc_) {
        bool known = false;
        for (int64_t l = 0; l < config.num_hidden_layers && !known; ++l)
          for (LinearKind k : kAllLinears) known = known || linear_weight_name(l, k) == name + ".weight";
        LB_CHECK(known, "slim: allocation file '{}' names '{}', which is not a linear of this model", alloc_path_, name);
      }
  }

  void quantize_block(BlockContext& ctx, QuantizedBlock& out) override {
    StatsRequest req;
    req.hessian = true;
    const auto stats = ctx.collect(kAllLinears, req);
    std::array<std::vector<double>, 7> h;
    std::array<int64_t, 7> count{};
    for (LinearKind k : kAllLinears) h[size_t(k)] = stats.at(k)->hessian();
    // The inverse factors on the context's GPU where it has one.
    const InverseFactorFn factor = inverse_factor_for(ctx);

    if (alloc_.empty()) {
      // SBA: salience on the edited Hessian, then the KL search over every calibration window.
      std::optional<PhaseScope> phase(std::in_place, "slim salience");
      std::array<std::unique_ptr<SlimSearch>, 7> search;
      for (LinearKind k : kAllLinears) {
        const Tensor& w = ctx.weights()[k];
        const int64_t cols = w.dim(1);
        slim_salience_hessian_edit(h[size_t(k)], cols);
        double used = 0;
        const std::vector<float> u = factor(h[size_t(k)], cols, 0.0, &used);
        if (used != 0.0) ctx.note(fmt::format("slim: {} salience Hessian needed damping {}", linear_name(k), used));
        search[size_t(k)] = std::make_unique<SlimSearch>(
            w.data_as<float>(), w.dim(0), cols, opt_.group_size, opt_.bits,
            slim_group_salience(w.data_as<float>(), w.dim(0), cols, u.data(), opt_.group_size,
                                linear_storage_dtype(ctx.model(), ctx.layer(), k)));
      }
      std::vector<BlockContext::KlSearchJob> jobs;
      for (LinearKind k : kAllLinears)
        if (search[size_t(k)]->candidates() > 0) jobs.push_back({k, &search[size_t(k)]->kl_search()});
      phase.emplace("slim KL search");
      const BlockContext::KlErrors errors = jobs.empty() ? BlockContext::KlErrors{} : ctx.kl_errors(jobs);
      phase.reset();
      for (size_t j = 0; j < jobs.size(); ++j) count[size_t(jobs[j].linear)] = slim_pick_count(errors[j]);
    }

    for (LinearKind k : kAllLinears) {
      const auto t0 = std::chrono::steady_clock::now();
      const Tensor& w = ctx.weights()[k];
      std::vector<int> bits;
      if (!alloc_.empty()) {
        const std::string name = linear_weight_name(ctx.layer(), k);
        bits = alloc_.at(name.substr(0, name.size() - 7));
      }
      std::optional<PhaseScope> solve(std::in_place, "slim solve (host)");
      SlimResult r = slim_quantize(w.data_as<float>(), w.dim(0), w.dim(1), std::move(h[size_t(k)]), opt_, bits,
                                   count[size_t(k)], linear_storage_dtype(ctx.model(), ctx.layer(), k), factor);
      solve.reset();
      std::string note = fmt::format("loss {:.4g}, groups {}", r.loss, fmt::join(r.group_bits, ""));
      if (alloc_.empty()) note += fmt::format(", search count {}", count[size_t(k)]);
      if (r.damp != opt_.damp) note += fmt::format(", damping raised to {}", r.damp);
      if (r.dead_columns) note += fmt::format(", {} dead inputs", r.dead_columns);
      finish_linear(ctx, k, std::move(r.q), out, t0, stats.at(k).get(), note);
    }
  }

 private:
  SlimOptions opt_;
  std::string alloc_path_;
  std::map<std::string, std::vector<int>> alloc_;
};

}  // namespace

std::unique_ptr<QuantMethod> make_slim(QuantSpec spec) { return std::make_unique<Slim>(std::move(spec)); }

}  // namespace lowbit
