#include "quant/quip.h"

#include "backend/ops.h"
#include "core/error.h"
#include "core/phase_profile.h"
#include "core/py_random.h"
#include "quant/formats/quip_format.h"
#include "quant/method.h"

#include <cblas.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <optional>

namespace lowbit {

namespace {

// The reference keeps these tensors in fp16: every result is rounded to fp16.
inline float h16(float v) { return f16_to_f32(f32_to_f16(v)); }

std::vector<int64_t> prime_factors(int64_t n) {
  std::vector<int64_t> f;
  for (int64_t p = 2; p * p <= n; ++p)
    while (n % p == 0) {
      f.push_back(p);
      n /= p;
    }
  if (n > 1) f.push_back(n);
  return f;
}

// y [n, q] -> out [n, q]: one butterfly factor along the rows.
void apply_factor(const Butterfly& b, int f, const float* y, int64_t q, float* out) {
  const int64_t pf = b.p[size_t(f)], mp = f == 0 ? 1 : b.p[0], ms = f == 0 ? b.p[1] : 1;
  const float* blocks = b.blocks[size_t(f)].data();
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t a = 0; a < mp; ++a)
    for (int64_t m = 0; m < ms; ++m) {
      const float* M = blocks + (a * ms + m) * pf * pf;
      for (int64_t j = 0; j < pf; ++j) {
        float* o = out + (a * pf * ms + j * ms + m) * q;
        std::fill(o, o + q, 0.0f);
        for (int64_t k = 0; k < pf; ++k) {
          const float mjk = M[j * pf + k];
          const float* yi = y + (a * pf * ms + k * ms + m) * q;
          for (int64_t c = 0; c < q; ++c) o[c] += mjk * yi[c];
        }
      }
    }
}

// a [m, k] @ b^T ([n, k]) or a @ b ([k, n]) -> c [m, n], fp32 row-major.
void sgemm(const float* a, const float* b, float* c, int64_t m, int64_t n, int64_t k, bool a_t, bool b_t) {
  cblas_sgemm(CblasRowMajor, a_t ? CblasTrans : CblasNoTrans, b_t ? CblasTrans : CblasNoTrans, blasint(m), blasint(n),
              blasint(k), 1.0f, a, blasint(a_t ? m : k), b, blasint(b_t ? k : n), 0.0f, c, blasint(n));
}

class HostProducts final : public QuipProducts {
 public:
  void gemm(const float* a, const float* b, float* c, int64_t m, int64_t n, int64_t k, bool a_t, bool b_t) override {
    sgemm(a, b, c, m, n, k, a_t, b_t);
  }
  bool cholesky_lower(double* a, int64_t n) override { return ops::cholesky(a, n, false); }
  void ldlq_begin(const float* lf, int64_t rows, int64_t d) override {
    lf_ = lf;
    rows_ = rows;
    d_ = d;
  }
  void ldlq_accumulate(const float* e, int64_t b0, int64_t b1, float* acc) override {
    const int64_t nb = b1 - b0;
    if (b1 >= d_) {
      std::fill(acc, acc + rows_ * nb, 0.0f);
      return;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, blasint(rows_), blasint(nb), blasint(d_ - b1), 1.0f, e + b1,
                blasint(d_), lf_ + b1 * d_ + b0, blasint(d_), 0.0f, acc, blasint(nb));
  }
  // T = dW H a chunk of rows at a time (SGEMM), then the sum of dW * T in fp64: the rows x cols^2
  // products on BLAS, not in dependent fp64 chains.
  double quadratic_form(const float* dw, const float* h, int64_t rows, int64_t cols) override {
    constexpr int64_t kChunkRows = 256;
    std::vector<float> t(size_t(std::min(rows, kChunkRows) * cols));
    double sum = 0;
    for (int64_t r0 = 0; r0 < rows; r0 += kChunkRows) {
      const int64_t n = std::min(kChunkRows, rows - r0);
      const float* a = dw + r0 * cols;
      sgemm(a, h, t.data(), n, cols, cols, false, false);
      double part = 0;
#pragma omp parallel for reduction(+ : part) schedule(static)
      for (int64_t i = 0; i < n * cols; ++i) part += double(a[i]) * double(t[size_t(i)]);
      sum += part;
    }
    return sum;
  }

 private:
  const float* lf_ = nullptr;
  int64_t rows_ = 0, d_ = 0;
};

}  // namespace

std::unique_ptr<QuipProducts> quip_host_products() { return std::make_unique<HostProducts>(); }

std::pair<int64_t, int64_t> quip_butterfly_factors(int64_t n) {
  const std::vector<int64_t> f = prime_factors(n);
  int64_t p0 = 1, p1 = 1;
  for (size_t i = 0; i < f.size(); ++i) (i % 2 == 0 ? p0 : p1) *= f[i];
  return {p0, p1};
}

void quip_check_dimension(int64_t n, const std::string& what) {
  const auto [p0, p1] = quip_butterfly_factors(n);
  LB_CHECK(n >= 4 && p1 > 1 && std::max(p0, p1) <= 1024,
           "quip: {} has dimension {}, whose butterfly factors are {} x {}; supported are dimensions with two factors "
           "of at most 1024 each (e.g. 4096 = 64 x 64, 14336 = 64 x 224, 1024 = 32 x 32)", what, n, p0, p1);
}

Butterfly quip_random_butterfly(int64_t n, uint64_t seed) {
  Butterfly b;
  b.n = n;
  const auto [p0, p1] = quip_butterfly_factors(n);
  b.p = {p0, p1};
  b.seed = seed;
  PyRandom rng(seed);
  std::vector<double> spare;
  auto gauss = [&]() {
    if (!spare.empty()) {
      const double z = spare.back();
      spare.pop_back();
      return z;
    }
    const double u1 = rng.random(), u2 = rng.random();
    const double r = std::sqrt(-2.0 * std::log(1.0 - u1)), t = 2.0 * M_PI * u2;
    spare.push_back(r * std::sin(t));
    return r * std::cos(t);
  };
  for (int f = 0; f < 2; ++f) {
    const int64_t p = b.p[size_t(f)], count = n / p;
    std::vector<float>& out = b.blocks[size_t(f)];
    out.resize(size_t(count * p * p));
    // The normals in the generator's order (block by block, each column-major: column j at
    // a[j * p]), then the blocks orthogonalized on all cores.
    std::vector<double> normals(size_t(count * p * p));
    for (double& v : normals) v = gauss();
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t blk = 0; blk < count; ++blk) {
      double* a = normals.data() + blk * p * p;
      // Gram-Schmidt, twice per column: Q with R's diagonal positive (Haar on O(p)).
      for (int64_t j = 0; j < p; ++j) {
        double* qj = a + j * p;
        for (int pass = 0; pass < 2; ++pass)
          for (int64_t i = 0; i < j; ++i) {
            const double* qi = a + i * p;
            double d = 0;
            for (int64_t r = 0; r < p; ++r) d += qi[r] * qj[r];
            for (int64_t r = 0; r < p; ++r) qj[r] -= d * qi[r];
          }
        double nrm = 0;
        for (int64_t r = 0; r < p; ++r) nrm += qj[r] * qj[r];
        nrm = std::sqrt(nrm);
        for (int64_t r = 0; r < p; ++r) qj[r] /= nrm;
      }
      float* m = out.data() + blk * p * p;
      for (int64_t r = 0; r < p; ++r)
        for (int64_t c = 0; c < p; ++c) m[r * p + c] = float(a[size_t(c * p + r)]);
    }
  }
  for (auto* perm : {&b.perm_in, &b.perm_out}) {
    perm->resize(size_t(n));
    std::iota(perm->begin(), perm->end(), 0);
    for (int64_t i = n - 1; i > 0; --i) std::swap((*perm)[size_t(i)], (*perm)[rng.randbelow(uint64_t(i + 1))]);
  }
  return b;
}

void quip_check_butterfly(const Butterfly& b, int64_t n, const std::string& what) {
  const auto [p0, p1] = quip_butterfly_factors(n);
  LB_CHECK(b.n == n && b.p[0] == p0 && b.p[1] == p1, "{}: butterfly of dimension {} ({} x {}) for dimension {} ({} x {})",
           what, b.n, b.p[0], b.p[1], n, p0, p1);
  for (int f = 0; f < 2; ++f)
    LB_CHECK(int64_t(b.blocks[size_t(f)].size()) == n * b.p[size_t(f)], "{}: butterfly factor {} has {} values, expected {}",
             what, f, b.blocks[size_t(f)].size(), n * b.p[size_t(f)]);
  for (const auto* perm : {&b.perm_in, &b.perm_out}) {
    LB_CHECK(int64_t(perm->size()) == n, "{}: permutation of {} entries for dimension {}", what, perm->size(), n);
    std::vector<char> seen(size_t(n), 0);
    for (int32_t i : *perm) {
      LB_CHECK(i >= 0 && i < n && !seen[size_t(i)], "{}: the butterfly's permutation is not a permutation of 0..{}", what,
               n - 1);
      seen[size_t(i)] = 1;
    }
  }
}

void quip_butterfly_apply(const Butterfly& b, const float* x, int64_t q, float* out) {
  const int64_t n = b.n;
  std::vector<float> y(size_t(n * q)), z(size_t(n * q));
  for (int64_t i = 0; i < n; ++i)
    std::copy(x + b.perm_in[size_t(i)] * q, x + (b.perm_in[size_t(i)] + 1) * q, y.begin() + i * q);
  apply_factor(b, 0, y.data(), q, z.data());
  apply_factor(b, 1, z.data(), q, y.data());
  for (int64_t i = 0; i < n; ++i)
    std::copy(y.begin() + b.perm_out[size_t(i)] * q, y.begin() + (b.perm_out[size_t(i)] + 1) * q, out + i * q);
}

// Applied to the identity, every sum of the two factors has a single nonzero term (the first
// factor spreads column c over the rows j * p1 + m of one m, the second gathers each group
// a * p1 + (0 .. p1 - 1), which holds one of them), the other terms adding exact zeros. So each
// entry is one product, D[i, c] = B1[a][j', m] * B0[m][a, k] with perm_out[i] = a * p1 + j' and
// perm_in[k * p1 + m] = c: the bits of quip_butterfly_apply(b, I), in n^2 products instead of
// n^2 (p0 + p1) multiply-adds (6e10 for a 14336-wide butterfly).
std::vector<float> quip_butterfly_dense(const Butterfly& b) {
  const int64_t n = b.n, p0 = b.p[0], p1 = b.p[1];
  // t[a][r] = B0[m][a, k] for input row r = k * p1 + m: row i's entries are then one sequential
  // pass over t[a] and row j' of B1[a], scattered to columns perm_in[r] within the row.
  std::vector<float> t(size_t(p0 * n));
  const float* b0 = b.blocks[0].data();
#pragma omp parallel for schedule(static)
  for (int64_t a = 0; a < p0; ++a)
    for (int64_t k = 0; k < p0; ++k)
      for (int64_t m = 0; m < p1; ++m) t[size_t(a * n + k * p1 + m)] = b0[(m * p0 + a) * p0 + k];
  const float* b1 = b.blocks[1].data();
  const int32_t* perm_in = b.perm_in.data();
  std::vector<float> d(size_t(n * n));
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const int64_t row = b.perm_out[size_t(i)], a = row / p1, jp = row % p1;
    const float* m1 = b1 + (a * p1 + jp) * p1;  // row j' of B1[a]
    const float* ta = t.data() + a * n;
    float* di = d.data() + i * n;
    for (int64_t k = 0; k < p0; ++k)
      for (int64_t m = 0; m < p1; ++m) {
        const int64_t r = k * p1 + m;
        di[perm_in[r]] = m1[m] * ta[r];
      }
  }
  return d;
}

std::vector<uint8_t> quip_round_ldl(const float* wt, int64_t rows, int64_t cols, const std::vector<float>& h,
                                    int bits, int npasses, QuipProducts* products) {
  std::unique_ptr<QuipProducts> host;
  if (!products) products = (host = quip_host_products()).get();
  const int64_t d = cols;
  const float maxq = float((1 << bits) - 1);
  // L = chol(H) with unit diagonal, minus I: strictly lower, Lf[j * d + i] = L[j, i] / L[i, i].
  std::vector<float> lf(size_t(d * d), 0.0f);
  {
    const PhaseScope phase("quip solve/cholesky");
    std::vector<double> l(h.size());
    const int64_t nh = int64_t(h.size());
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < nh; ++i) l[size_t(i)] = h[size_t(i)];
    LB_CHECK(products->cholesky_lower(l.data(), d), "quip: the preprocessed Hessian is not positive definite");
#pragma omp parallel for schedule(static)
    for (int64_t j = 0; j < d; ++j)
      for (int64_t i = 0; i < j; ++i)
        lf[size_t(j * d + i)] = float(l[size_t(j * d + i)]) * (1.0f / float(l[size_t(i * d + i)]));
  }

  // Reverse order in blocks: the contribution of the columns after a block is one GEMM.
  const PhaseScope phase("quip solve/LDLQ");
  std::vector<float> what(wt, wt + rows * d), e(size_t(rows * d), 0.0f);
  const int64_t B = 128;
  std::vector<float> acc(size_t(rows * B));
  products->ldlq_begin(lf.data(), rows, d);
  for (int64_t b1 = d; b1 > 0; b1 -= B) {
    const int64_t b0 = std::max<int64_t>(0, b1 - B), nb = b1 - b0;
    products->ldlq_accumulate(e.data(), b0, b1, acc.data());
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      float* er = e.data() + r * d;
      for (int64_t i = b1 - 1; i >= b0; --i) {
        float s = acc[size_t(r * nb + (i - b0))];
        for (int64_t j = i + 1; j < b1; ++j) s += er[j] * lf[size_t(j * d + i)];
        const float x = wt[r * d + i] + s;
        const float k = std::clamp(std::floor(x + 0.5f), 0.0f, maxq);
        what[size_t(r * d + i)] = k;
        er[i] = wt[r * d + i] - k;
      }
    }
  }

  if (npasses > 0) {
    // Greedy coordinate descent on H / max diag(H), as round_ldl's passes: s = w_hat - w is
    // updated with every move and not by the clamp at the end of a pass.
    float hmax = 0;
    for (int64_t i = 0; i < d; ++i) hmax = std::max(hmax, h[size_t(i * d + i)]);
    std::vector<float> hn(h.size());
    for (size_t i = 0; i < h.size(); ++i) hn[i] = h[i] / hmax;
    std::vector<float> s(size_t(rows * d)), wr(what);
    for (int64_t i = 0; i < rows * d; ++i) s[size_t(i)] = what[size_t(i)] - wt[i];
    for (int pass = 0; pass < npasses; ++pass) {
#pragma omp parallel for schedule(static)
      for (int64_t r = 0; r < rows; ++r) {
        float* sr = s.data() + r * d;
        float* w = wr.data() + r * d;
        for (int64_t i = d - 1; i >= 0; --i) {
          float hs = 0;
          for (int64_t j = 0; j < d; ++j) hs += sr[j] * hn[size_t(j * d + i)];
          const float eps = w[i] - std::nearbyint(w[i] - hs / hn[size_t(i * d + i)]);
          w[i] -= eps;
          sr[i] -= eps;
        }
        for (int64_t i = 0; i < d; ++i) w[i] = std::clamp(w[i], 0.0f, maxq);
      }
      const bool fixed = wr == what;
      what = wr;
      if (fixed) break;
    }
  }
  std::vector<uint8_t> codes(size_t(rows * d));
  const int64_t ncodes = rows * d;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < ncodes; ++i) codes[size_t(i)] = uint8_t(what[size_t(i)]);
  return codes;
}

QuipResult quip_quantize(const float* w, int64_t rows, int64_t cols, const std::vector<double>& h,
                         const QuipOptions& opt, const Butterfly* u, const Butterfly* v, DType dtype,
                         QuipProducts* products) {
  std::unique_ptr<QuipProducts> host;
  if (!products) products = (host = quip_host_products()).get();
  LB_CHECK(int64_t(h.size()) == cols * cols, "quip: Hessian has {} entries for {} columns", h.size(), cols);
  QuipResult res;
  // Element by element (and per column) on all cores; the sums whose order matters stay serial.
  std::vector<float> wf(size_t(rows * cols)), hf(size_t(cols * cols));
  const int64_t nw = rows * cols, nh = cols * cols;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < nw; ++i) wf[size_t(i)] = h16(w[i]);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < nh; ++i) hf[size_t(i)] = float(h[size_t(i)]);

  if (opt.rescale) {
    float mx = 0;
#pragma omp parallel for schedule(static) reduction(max : mx)
    for (int64_t i = 0; i < nh; ++i) mx = std::max(mx, std::fabs(hf[size_t(i)]));
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < nh; ++i) hf[size_t(i)] = hf[size_t(i)] / mx;
    res.s.resize(size_t(cols));
    // diag(W^T W) a strip of columns per task, each column's sum in row order, the strip's rows
    // read contiguously.
    constexpr int64_t kStrip = 64;
#pragma omp parallel for schedule(static)
    for (int64_t c0 = 0; c0 < cols; c0 += kStrip) {
      const int64_t c1 = std::min(cols, c0 + kStrip);
      double e[kStrip] = {};
      for (int64_t r = 0; r < rows; ++r) {
        const float* wr = wf.data() + r * cols;
        for (int64_t c = c0; c < c1; ++c) e[c - c0] += double(wr[c]) * double(wr[c]);
      }
      for (int64_t c = c0; c < c1; ++c) {
        const float dh = std::max(hf[size_t(c * cols + c)], 1e-8f), dw = std::max(float(e[c - c0]), 1e-8f);
        res.s[size_t(c)] = std::max(std::sqrt(std::sqrt(dh / dw)), 1e-8f);
      }
    }
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) wf[size_t(r * cols + c)] = h16(wf[size_t(r * cols + c)] * res.s[size_t(c)]);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < cols; ++i)
      for (int64_t j = 0; j < cols; ++j) {
        float& x = hf[size_t(i * cols + j)];
        x = x / res.s[size_t(j)];
        x = x / res.s[size_t(i)];
      }
  }

  if (opt.proj) {
    LB_CHECK(u != nullptr && v != nullptr, "quip: projection without butterflies");
    quip_check_butterfly(*u, rows, "quip U");
    quip_check_butterfly(*v, cols, "quip V");
    double tr = 0;
    for (int64_t i = 0; i < cols; ++i) tr += hf[size_t(i * cols + i)];
    // n / (tr + 1e-8) as torch's __rtruediv__ computes it: reciprocal, then the product.
    const float f = (1.0f / (float(tr) + 1e-8f)) * float(cols);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < nh; ++i) hf[size_t(i)] = hf[size_t(i)] * f;
    for (int64_t i = 0; i < cols; ++i) hf[size_t(i * cols + i)] += 0.01f;
    const PhaseScope phase("quip solve/transforms");
    const std::vector<float> U = quip_butterfly_dense(*u), V = quip_butterfly_dense(*v);
    std::vector<float> t(size_t(std::max(rows * cols, cols * cols)));
    products->gemm(U.data(), wf.data(), t.data(), rows, cols, rows, false, false);  // U W
    products->gemm(t.data(), V.data(), wf.data(), rows, cols, cols, false, true);   // (U W) V^T
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < nw; ++i) wf[size_t(i)] = h16(wf[size_t(i)]);
    products->gemm(V.data(), hf.data(), t.data(), cols, cols, cols, false, false);  // V H
    products->gemm(t.data(), V.data(), hf.data(), cols, cols, cols, false, true);  // (V H) V^T
  }

  // gptqH: dead inputs, then the relative damping.
  double mean = 0;
  for (int64_t c = 0; c < cols; ++c) {
    float& dd = hf[size_t(c * cols + c)];
    if (dd == 0.0f) {
      dd = 1.0f;
      for (int64_t r = 0; r < rows; ++r) wf[size_t(r * cols + c)] = 0.0f;
      ++res.dead_columns;
    }
    mean += dd;
  }
  const float damp = float(opt.damp) * float(mean / double(cols));
  for (int64_t c = 0; c < cols; ++c) hf[size_t(c * cols + c)] += damp;

  // qfn b: the scale and the grid coordinates in fp16 arithmetic.
  const int maxq = (1 << opt.bits) - 1;
  double sq = 0;
  for (float x : wf) sq += h16(x * x);
  const float scale = h16(2.4f * h16(std::sqrt(h16(float(sq / double(wf.size()))))));
  std::vector<float> wt(wf.size());
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < wf.size(); ++i) {
    const float g = h16(h16(h16(h16(wf[i] / scale) + 1.0f) * 0.5f) * float(maxq));
    wt[i] = std::clamp(g, 0.0f, float(maxq));
  }
  std::vector<uint8_t> codes = quip_round_ldl(wt.data(), rows, cols, hf, opt.bits, opt.npasses, products);

  QuantizedLinear& q = res.q;
  q.format = &kQuipFormat;
  q.rows = rows;
  q.cols = cols;
  q.bits = opt.bits;
  q.group_size = cols;
  q.dequant_dtype = dtype;
  q.codes = std::move(codes);
  q.scales = {scale};
  res.scale = scale;
  quip_store_transform(q, opt.rescale ? &res.s : nullptr, opt.proj ? u : nullptr, opt.proj ? v : nullptr);

  // The proxy loss in the rotated basis, with the H LDLQ used.
  std::vector<float> dw(wf.size());
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < wf.size(); ++i) dw[i] = quip_grid_value(q.codes[i], scale, maxq) - wf[i];
  const PhaseScope phase("quip solve/proxy loss");
  const double loss = products->quadratic_form(dw.data(), hf.data(), rows, cols);
  res.proxy_loss = loss;
  res.w_rot = std::move(wf);
  res.h_rot = std::move(hf);
  return res;
}

// ---- the method ------------------------------------------------------------------------------

namespace {

class Quip : public QuantMethod {
 public:
  explicit Quip(QuantSpec s) : QuantMethod(std::move(s)) {
    opt_.bits = int(spec_.take_int("w", 2, 2, 4, "weight bits of the symmetric grid (2, 3 or 4)"));
    opt_.npasses = int(spec_.take_int("npasses", 0, 0, 100, "greedy coordinate-descent passes after LDLQ"));
    opt_.seed = uint64_t(spec_.take_int("seed", 0, 0, int64_t(1) << 32, "seed of the random butterflies"));
    opt_.damp = spec_.take_double("damp", 0.01, 0.0, 10.0, "damping, a fraction of the mean Hessian diagonal");
    opt_.rescale = spec_.take_bool("rescale", true, "diagonal rescaling of W and H (pre_rescale)");
    opt_.proj = spec_.take_bool("proj", true, "random orthogonal butterfly projections (pre_proj)");
    spec_.finish();
  }
  bool needs_calibration() const override { return true; }
  double weight_bits() const override { return opt_.bits; }
  int64_t group_size() const override { return -1; }

  void check_shapes(const LlamaConfig& config) const override {
    if (!opt_.proj) return;
    for (LinearKind k : kAllLinears) {
      quip_check_dimension(linear_out_features(config, k), fmt::format("{} (output features)", linear_name(k)));
      quip_check_dimension(linear_in_features(config, k), fmt::format("{} (input features)", linear_name(k)));
    }
  }

  void quantize_block(BlockContext& ctx, QuantizedBlock& out) override {
    StatsRequest req;
    req.hessian = true;
    const auto stats = ctx.collect(kAllLinears, req);
    // The dense products on the context's GPU where it has one, else on the host.
    std::unique_ptr<QuipProducts> products = quip_products_on(ctx);
    if (!products) products = quip_host_products();
    for (LinearKind k : kAllLinears) {
      const auto t0 = std::chrono::steady_clock::now();
      const Tensor& w = ctx.weights()[k];
      const int64_t rows = w.dim(0), cols = w.dim(1);
      // sum x x^T / N from GPTQ's 2 / N sum x x^T.
      std::optional<PhaseScope> solve(std::in_place, "quip solve");
      std::vector<double> h = stats.at(k)->hessian();
      const int64_t nh = int64_t(h.size());
#pragma omp parallel for schedule(static)
      for (int64_t i = 0; i < nh; ++i) h[size_t(i)] *= 0.5;
      const uint64_t su = opt_.seed * 1000003ull + uint64_t(ctx.layer()) * 16ull + 2ull * uint64_t(k);
      Butterfly u, v;
      if (opt_.proj) {
        u = quip_random_butterfly(rows, su);
        v = quip_random_butterfly(cols, su + 1);
      }
      QuipResult r = quip_quantize(w.data_as<float>(), rows, cols, h, opt_, &u, &v,
                                   linear_storage_dtype(ctx.model(), ctx.layer(), k), products.get());
      std::string note = fmt::format("proxy loss {:.4g}, scale {:.4g}", r.proxy_loss, r.scale);
      if (r.dead_columns) note += fmt::format(", {} dead inputs", r.dead_columns);
      solve.reset();
      finish_linear(ctx, k, std::move(r.q), out, t0, stats.at(k).get(), note);
    }
  }

 private:
  QuipOptions opt_;
};

}  // namespace

std::unique_ptr<QuantMethod> make_quip(QuantSpec spec) { return std::make_unique<Quip>(std::move(spec)); }

}  // namespace lowbit
