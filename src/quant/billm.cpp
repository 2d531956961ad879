#include "quant/billm.h"

#include "core/error.h"
#include "quant/formats/billm_format.h"
#include "quant/formats/bit_plane.h"
#include "quant/method.h"
#include "quant/reference_numerics.h"

#include <cblas.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

// Built with -ffp-contract=off (src/CMakeLists.txt): the reference rounds every product and sum
// on its own; the searches compare errors computed exactly as it computes them.

namespace lowbit {

namespace {

float sign_of(float x) { return x > 0.0f ? 1.0f : (x < 0.0f ? -1.0f : 0.0f); }

// BRA(x, mask, order) over a [rows, n] slice (row stride ld) as binary.high_order_residual
// computes it. recon [rows * n]; params [rows * 2 * order] (mu, alpha per order) and signs
// [order][rows * n] (-1, 0, +1 at masked entries) when not null.
void bra(const float* x, int64_t ld, const uint8_t* mask, int64_t rows, int64_t n, int order, float* recon,
         float* params, int8_t* signs) {
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const auto nn = static_cast<size_t>(n);
    std::vector<float> nm(nn), so(nn, 0.0f), res(nn), tmp(nn);
    const uint8_t* m = mask + r * n;
    int64_t cnt = 0;
    for (int64_t j = 0; j < n; ++j) {
      nm[size_t(j)] = x[r * ld + j] * (m[j] ? 1.0f : 0.0f);
      cnt += m[j] != 0;
    }
    for (int od = 0; od < order; ++od) {
      for (int64_t j = 0; j < n; ++j) {
        res[size_t(j)] = nm[size_t(j)] - so[size_t(j)];
        tmp[size_t(j)] = m[j] ? res[size_t(j)] : 0.0f;  // nansum skips the NaN-filled entries
      }
      float mean = torch_sum_f32(tmp.data(), n) / float(cnt);
      if (std::isnan(mean)) mean = 0.0f;
      for (int64_t j = 0; j < n; ++j) tmp[size_t(j)] = m[j] ? std::fabs(res[size_t(j)] - mean) : 0.0f;
      float scale = torch_sum_f32(tmp.data(), n) / float(cnt);
      if (std::isnan(scale)) scale = 0.0f;
      for (int64_t j = 0; j < n; ++j) {
        // Unmasked entries: sign(NaN) = 0, so b = mean, times the mask's 0.
        const float s = m[j] ? sign_of(res[size_t(j)] - mean) : 0.0f;
        const float b = s * scale + mean;
        so[size_t(j)] = so[size_t(j)] + b * (m[j] ? 1.0f : 0.0f);
        if (signs != nullptr && m[j]) signs[size_t(od) * size_t(rows * n) + size_t(r * n + j)] = int8_t(s);
      }
      if (params != nullptr) {
        params[size_t(r * 2 * order + 2 * od)] = mean;
        params[size_t(r * 2 * order + 2 * od + 1)] = scale;
      }
    }
    std::copy(so.begin(), so.end(), recon + r * n);
  }
}

// mean((s - r)^2) over n values, as torch.mean computes it.
float mse(const float* s, const float* r, int64_t n) {
  std::vector<float> e(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    const float d = s[i] - r[i];
    e[size_t(i)] = d * d;
  }
  return torch_sum_f32(e.data(), n) / float(n);
}

struct BlockMasks {
  std::vector<uint8_t> m1, m2, m3;  // [rows * n]
  BillmBlock info;
};

// structural_guassian_distribution on the saliency s [rows, n].
BlockMasks search_masks(const std::vector<float>& s, int64_t rows, int64_t n, int64_t up_lim) {
  const int64_t numel = rows * n;
  std::vector<float> a(static_cast<size_t>(numel)), colsum(static_cast<size_t>(n));
  for (int64_t i = 0; i < numel; ++i) a[size_t(i)] = std::fabs(s[size_t(i)]);
  torch_column_sums_f32(a.data(), rows, n, colsum.data());
  std::vector<int64_t> top(static_cast<size_t>(n));
  std::iota(top.begin(), top.end(), 0);
  std::stable_sort(top.begin(), top.end(), [&](int64_t x, int64_t y) { return colsum[size_t(x)] > colsum[size_t(y)]; });

  std::vector<float> g3(static_cast<size_t>(numel)), g4(static_cast<size_t>(numel)), rec(static_cast<size_t>(numel));
  std::vector<uint8_t> m3(static_cast<size_t>(numel)), not3(static_cast<size_t>(numel));
  auto set_salient = [&](int64_t k) {
    std::vector<uint8_t> col(static_cast<size_t>(n), 0);
    for (int64_t i = 0; i < k; ++i) col[size_t(top[size_t(i)])] = 1;
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = 0; j < n; ++j) {
        m3[size_t(r * n + j)] = col[size_t(j)];
        not3[size_t(r * n + j)] = !col[size_t(j)];
      }
  };
  BlockMasks out;
  float best = std::numeric_limits<float>::infinity();
  for (int64_t k = 1; k < up_lim; ++k) {
    set_salient(k);
    bra(s.data(), n, m3.data(), rows, n, 2, g3.data(), nullptr, nullptr);
    bra(s.data(), n, not3.data(), rows, n, 2, g4.data(), nullptr, nullptr);
    for (int64_t i = 0; i < numel; ++i) rec[size_t(i)] = g4[size_t(i)] + g3[size_t(i)];
    const float e = mse(s.data(), rec.data(), numel);
    if (e < best) {
      best = e;
      out.info.salient = k;
    }
  }
  set_salient(out.info.salient);
  bra(s.data(), n, m3.data(), rows, n, 2, g3.data(), nullptr, nullptr);

  // The split: quantiles of |S| with the salient entries 0.
  std::vector<float> absn(static_cast<size_t>(numel));
  for (int64_t i = 0; i < numel; ++i) absn[size_t(i)] = std::fabs(s[size_t(i)] * (not3[size_t(i)] ? 1.0f : 0.0f));
  std::vector<float> sorted = absn;
  std::sort(sorted.begin(), sorted.end());
  const std::vector<float> levels = torch_linspace_f32(0.10f, 0.90f, 81);
  std::vector<uint8_t> m1(static_cast<size_t>(numel)), m2(static_cast<size_t>(numel));
  std::vector<float> g1(static_cast<size_t>(numel)), g2(static_cast<size_t>(numel));
  auto split_masks = [&](float p) {
    for (int64_t i = 0; i < numel; ++i) {
      m2[size_t(i)] = absn[size_t(i)] >= p && not3[size_t(i)];
      m1[size_t(i)] = absn[size_t(i)] < p && not3[size_t(i)];
    }
  };
  best = std::numeric_limits<float>::infinity();
  for (size_t li = 0; li < levels.size(); ++li) {
    const float p = numpy_quantile_f32(sorted, levels[li]);
    split_masks(p);
    bra(s.data(), n, m1.data(), rows, n, 1, g1.data(), nullptr, nullptr);
    bra(s.data(), n, m2.data(), rows, n, 1, g2.data(), nullptr, nullptr);
    for (int64_t i = 0; i < numel; ++i) rec[size_t(i)] = (g1[size_t(i)] + g2[size_t(i)]) + g3[size_t(i)];
    const float e = mse(s.data(), rec.data(), numel);
    if (e < best) {
      best = e;
      out.info.split_index = int64_t(li);
      out.info.split = p;
    }
  }
  split_masks(out.info.split);
  out.m1 = m1;
  out.m2 = m2;
  out.m3 = m3;
  return out;
}

}  // namespace

BillmResult billm_quantize(const float* w, int64_t rows, int64_t cols, const ObsHinv& hinv, const BillmOptions& opt,
                           DType dtype) {
  LB_CHECK(int64_t(hinv.u.size()) == cols * cols && int64_t(hinv.dead.size()) == cols,
           "billm: inverse Hessian factor of {} entries for {} columns", hinv.u.size(), cols);
  LB_CHECK(opt.block > 0 && cols % opt.block == 0, "billm: block {} does not divide {} columns", opt.block, cols);
  LB_CHECK(opt.up_lim >= 2 && opt.up_lim <= opt.block, "billm: up_lim {} must lie in 2..block ({})", opt.up_lim,
           opt.block);
  const std::vector<float>& u = hinv.u;
  const int64_t B = opt.block, nblk = cols / B;
  BillmResult res;
  res.damp = hinv.damp;
  res.dead_columns = hinv.dead_columns;

  // Row-major working copy with dead columns zeroed.
  std::vector<float> wk(size_t(rows * cols));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) wk[size_t(r * cols + c)] = hinv.dead[size_t(c)] ? 0.0f : w[r * cols + c];

  res.w.assign(size_t(rows * cols), 0.0f);
  res.group.assign(size_t(rows * cols), 0);
  res.params.assign(size_t(rows * nblk * 8), 0.0f);
  std::vector<uint8_t> sign1(size_t(rows * cols), 0), colsal(static_cast<size_t>(cols), 0);
  std::vector<int8_t> sgn2(size_t(rows * cols), 0);
  std::vector<int32_t> at_list{0};
  std::vector<int8_t> at_state(size_t(rows * cols * 2), 0);
  double loss = 0;
  for (int64_t b = 0; b < nblk; ++b) {
    const int64_t st = b * B, numel = rows * B;
    // a. Saliency of the current block.
    std::vector<float> s(static_cast<size_t>(numel));
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = 0; j < B; ++j) {
        const float v = wk[size_t(r * cols + st + j)];
        s[size_t(r * B + j)] = opt.hessian_metric ? obs_saliency(v, u[size_t((st + j) * cols + st + j)]) : v;
      }
    // b-c. Masks.
    BlockMasks bm = search_masks(s, rows, B, opt.up_lim);
    res.blocks.push_back(bm.info);
    // d. The block quantized once, on the weights.
    std::vector<float> p1(static_cast<size_t>(numel)), p2(static_cast<size_t>(numel)), p3(static_cast<size_t>(numel));
    std::vector<float> prm1(size_t(rows * 2)), prm2(size_t(rows * 2)), prm3(size_t(rows * 4));
    std::vector<int8_t> s1(static_cast<size_t>(numel), 0), s2(static_cast<size_t>(numel), 0), s3(size_t(numel * 2), 0);
    const float* wb = wk.data() + st;
    bra(wb, cols, bm.m1.data(), rows, B, 1, p1.data(), prm1.data(), s1.data());
    bra(wb, cols, bm.m2.data(), rows, B, 1, p2.data(), prm2.data(), s2.data());
    bra(wb, cols, bm.m3.data(), rows, B, 2, p3.data(), prm3.data(), s3.data());
    // e. Errors without updates inside the block.
    std::vector<float> err(static_cast<size_t>(numel));
    for (int64_t r = 0; r < rows; ++r) {
      float* pr = res.params.data() + (r * nblk + b) * 8;
      pr[0] = prm1[size_t(2 * r)];
      pr[1] = prm1[size_t(2 * r + 1)];
      pr[2] = prm2[size_t(2 * r)];
      pr[3] = prm2[size_t(2 * r + 1)];
      for (int i = 0; i < 4; ++i) pr[4 + i] = prm3[size_t(4 * r + i)];
      for (int64_t j = 0; j < B; ++j) {
        const size_t i = size_t(r * B + j), f = size_t(r * cols + st + j);
        float q = 0.0f;
        q += p1[i] * (bm.m1[i] ? 1.0f : 0.0f);
        q += p2[i] * (bm.m2[i] ? 1.0f : 0.0f);
        q += p3[i] * (bm.m3[i] ? 1.0f : 0.0f);
        const float d = u[size_t((st + j) * cols + st + j)];
        const float diff = wb[r * cols + j] - q;
        loss += double((diff * diff) / (d * d));
        err[i] = diff / d;
        res.w[f] = q;
        const int8_t first = bm.m1[i] ? s1[i] : bm.m2[i] ? s2[i] : s3[i];
        sign1[f] = first > 0;
        at_state[2 * f] = first == 0;
        if (bm.m3[i]) {
          sgn2[f] = s3[size_t(numel) + i];
          at_state[2 * f + 1] = sgn2[f] == 0;
        }
        res.group[f] = bm.m1[i] ? 1 : bm.m2[i] ? 2 : 3;
      }
    }
    for (int64_t j = 0; j < B; ++j) colsal[size_t(st + j)] = bm.m3[size_t(j)];
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = 0; j < B; ++j) wk[size_t(r * cols + st + j)] = res.w[size_t(r * cols + st + j)];
    if (st + B < cols)
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, blasint(rows), blasint(cols - st - B), blasint(B), -1.0f,
                  err.data(), blasint(B), u.data() + st * cols + st + B, blasint(cols), 1.0f, wk.data() + st + B,
                  blasint(cols));
  }
  res.loss = loss / 2.0;

  // The stored form (formats/billm_format.h).
  QuantizedLinear& q = res.q;
  q.rows = rows;
  q.cols = cols;
  q.format = &kBillmFormat;
  q.bits = 1;
  q.group_size = B;
  q.dequant_dtype = dtype;
  q.codes = sign1;
  std::vector<int64_t> sal_cols;
  for (int64_t c = 0; c < cols; ++c)
    if (colsal[size_t(c)]) sal_cols.push_back(c);
  const int64_t nsal = int64_t(sal_cols.size());
  std::vector<uint8_t> grp2(size_t(rows * cols)), s2bits(size_t(rows * nsal));
  for (size_t f = 0; f < grp2.size(); ++f) grp2[f] = res.group[f] == 2;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < nsal; ++i) s2bits[size_t(r * nsal + i)] = sgn2[size_t(r * cols + sal_cols[size_t(i)])] > 0;
  for (size_t e = 0; e < at_state.size(); ++e)
    if (at_state[e]) at_list.push_back(int32_t(e));
  at_list[0] = int32_t(at_list.size() - 1);
  q.extras["salient"] = pack_plane(colsal, 1, cols);
  q.extras["group"] = pack_plane(grp2, rows, cols);
  q.extras["sign2"] = pack_plane(s2bits, rows, nsal);
  Tensor at = Tensor::empty(DType::I32, {int64_t(at_list.size())});
  std::copy(at_list.begin(), at_list.end(), at.mutable_data_as<int32_t>());
  q.extras["at_mean"] = at;
  Tensor prm = Tensor::empty(DType::F32, {rows, nblk, 8});
  std::copy(res.params.begin(), res.params.end(), prm.mutable_data_as<float>());
  q.extras["params"] = prm;
  return res;
}

namespace {

class Billm : public QuantMethod {
 public:
  explicit Billm(QuantSpec s) : QuantMethod(std::move(s)) {
    opt_.block = spec_.take_int("block", 128, 2, 1 << 16, "columns per block (salient search, split search, "
                                "binarization parameters, lazy update)");
    opt_.hessian_metric = spec_.take_choice("metric", "hessian", {"hessian", "magnitude"},
                                            "saliency: w^2 / U_jj^2 (U: upper Cholesky factor of the damped inverse "
                                            "Hessian) or w") == "hessian";
    opt_.damp = spec_.take_double("damp", 0.01, 0.0, 10.0, "damping, a fraction of the mean Hessian diagonal");
    opt_.up_lim = spec_.take_int("up_lim", 50, 2, 1 << 16, "salient columns searched: k = 1 .. up_lim - 1 of the "
                                 "up_lim top-scoring (the reference hard-codes 50)");
    spec_.finish();
    LB_CHECK(opt_.up_lim <= opt_.block, "billm: option up_lim={} exceeds block={} (the search takes the top up_lim "
             "columns of a block)", opt_.up_lim, opt_.block);
  }
  bool needs_calibration() const override { return true; }
  double weight_bits() const override { return 1.1; }
  int64_t group_size() const override { return opt_.block; }
  void check_shapes(const LlamaConfig& c) const override {
    for (LinearKind k : kAllLinears) {
      const int64_t in = linear_in_features(c, k);
      LB_CHECK(in % opt_.block == 0, "billm: option block={} does not divide {}'s {} input features", opt_.block,
               linear_name(k), in);
    }
  }

  void quantize_block(BlockContext& ctx, QuantizedBlock& out) override {
    StatsRequest req;
    req.hessian = true;
    const auto stats = ctx.collect(kAllLinears, req);
    for (LinearKind k : kAllLinears) {
      const auto t0 = std::chrono::steady_clock::now();
      const Tensor& w = ctx.weights()[k];
      const InputStats& st = *stats.at(k);
      const ObsHinv hinv = obs_hinv(st.hessian, w.dim(1), opt_.damp);
      BillmResult r = billm_quantize(w.data_as<float>(), w.dim(0), w.dim(1), hinv, opt_,
                                     linear_storage_dtype(ctx.model(), ctx.layer(), k));
      const std::string what = fmt::format("layer {} {}", ctx.layer(), linear_name(k));
      r.q.validate(what);
      std::vector<float> deq(r.w.size());
      billm_dequantize(r.q, deq.data());
      for (size_t i = 0; i < deq.size(); ++i)
        LB_CHECK(deq[i] == r.w[i],
                 "{}: the billm format does not reproduce weight {} ({} vs {})", what, i, deq[i], r.w[i]);
      std::string sal;
      int64_t total = 0;
      for (const BillmBlock& b : r.blocks) {
        sal += fmt::format("{}{}", sal.empty() ? "" : ",", b.salient);
        total += b.salient;
      }
      std::string note = fmt::format("loss {:.4g}, {:.3f} stored bits/weight, salient columns per block {} "
                                     "(mean {:.2f} of {})", r.loss, billm_bits_per_weight(r.q), sal,
                                     double(total) / double(r.blocks.size()), opt_.block);
      if (r.damp != opt_.damp) note += fmt::format(", damping raised to {} (the reference would fail)", r.damp);
      if (r.dead_columns) note += fmt::format(", {} dead inputs", r.dead_columns);
      finish_linear(ctx, k, std::move(r.q), out, t0, &st.hessian, note);
    }
  }

 private:
  BillmOptions opt_;
};

}  // namespace

std::unique_ptr<QuantMethod> make_billm(QuantSpec spec) { return std::make_unique<Billm>(std::move(spec)); }

}  // namespace lowbit
