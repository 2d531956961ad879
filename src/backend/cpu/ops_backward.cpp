// Backward passes of the CPU ops: OpenBLAS for the products, plain loops (vectorized by GCC)
// elsewhere, OpenMP across rows and heads. Softmax and sigmoid use std::exp here: training
// compares gradients to autograd at 1e-4, and the backward is not the hot loop the forward's
// attention is.
#include "backend/ops_backward.h"

#include "core/error.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

namespace lowbit::ops {

void embedding_backward(const int32_t* tokens, const float* dy, float* dtable, int64_t n, int64_t dim) {
  // Sequential over rows: two rows may name the same token.
  for (int64_t i = 0; i < n; ++i) {
    float* row = dtable + int64_t(tokens[i]) * dim;
    const float* g = dy + i * dim;
#pragma omp simd
    for (int64_t j = 0; j < dim; ++j) row[j] += g[j];
  }
}

void rmsnorm_backward(const float* x, const float* w, const float* dy, float* dx, float* dw, int64_t rows,
                      int64_t dim, float eps) {
  // y_i = x_i * r * w_i with r = (mean(x^2) + eps)^(-1/2):
  //   dx_i = r * w_i dy_i - x_i * r^3 / dim * sum_j(w_j dy_j x_j),   dw_i += dy_i x_i r.
  std::vector<double> rinv(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * dim;
    double ss = 0;
    for (int64_t i = 0; i < dim; ++i) ss += double(xr[i]) * xr[i];
    rinv[size_t(r)] = 1.0 / std::sqrt(ss / double(dim) + eps);
  }
  // dw first: dx may alias dy.
  if (dw != nullptr)
    for (int64_t r = 0; r < rows; ++r) {
      const float* xr = x + r * dim;
      const float* g = dy + r * dim;
      const float inv = float(rinv[size_t(r)]);
#pragma omp simd
      for (int64_t i = 0; i < dim; ++i) dw[i] += g[i] * (xr[i] * inv);
    }
#pragma omp parallel for schedule(static) if (rows * dim > 65536)
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * dim;
    const float* g = dy + r * dim;
    float* o = dx + r * dim;
    double dot = 0;
    for (int64_t i = 0; i < dim; ++i) dot += double(w[i]) * g[i] * xr[i];
    const double inv = rinv[size_t(r)];
    const double c = dot * inv * inv * inv / double(dim);
    for (int64_t i = 0; i < dim; ++i) o[i] = float(inv * w[i] * g[i] - xr[i] * c);
  }
}

void linear_backward(const float* x, const float* w, const float* dy, float* dx, float* dw, int64_t rows,
                     int64_t in, int64_t out, bool accumulate_dx) {
  if (dx != nullptr)
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, blasint(rows), blasint(in), blasint(out), 1.0f, dy,
                blasint(out), w, blasint(in), accumulate_dx ? 1.0f : 0.0f, dx, blasint(in));
  if (dw != nullptr)
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, blasint(out), blasint(in), blasint(rows), 1.0f, dy,
                blasint(out), x, blasint(in), 1.0f, dw, blasint(in));
}

// rope_backward is in cpu/ops.cpp, beside the forward it transposes.

void attention_backward(const float* q, const float* k, const float* v, const float* dout, float* dq, float* dk,
                        float* dv, int64_t T, int64_t nh, int64_t nkv, int64_t hd) {
  LB_ASSERT(nkv > 0 && nh % nkv == 0);
  const int64_t group = nh / nkv;
  const float scale = 1.0f / std::sqrt(float(hd));
  const int64_t ldq = nh * hd, ldk = nkv * hd;
  for (int64_t t = 0; t < T; ++t) {
    std::fill(dk + t * ldk, dk + (t + 1) * ldk, 0.0f);
    std::fill(dv + t * ldk, dv + (t + 1) * ldk, 0.0f);
  }
  // One task per query head: P = softmax(scale q k^T + mask) recomputed, then
  //   dV += P^T dO,  dP = dO V^T,  dS = P * (dP - rowsum(P * dP)),  dQ = scale dS K,
  //   dK += scale dS^T Q.
  // Heads of one group add into the same dK/dV columns, so each task writes its own copy and the
  // copies are summed per group afterwards.
  std::vector<float> dk_h(size_t(nh * T * hd)), dv_h(size_t(nh * T * hd));
#pragma omp parallel
  {
    std::vector<float> p(size_t(T * T)), dp(size_t(T * T));
#pragma omp for schedule(dynamic, 1)
    for (int64_t h = 0; h < nh; ++h) {
      const float* qh = q + h * hd;
      const float* kh = k + (h / group) * hd;
      const float* vh = v + (h / group) * hd;
      const float* doh = dout + h * hd;
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, blasint(T), blasint(T), blasint(hd), scale, qh,
                  blasint(ldq), kh, blasint(ldk), 0.0f, p.data(), blasint(T));
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, blasint(T), blasint(T), blasint(hd), 1.0f, doh,
                  blasint(ldq), vh, blasint(ldk), 0.0f, dp.data(), blasint(T));
      for (int64_t i = 0; i < T; ++i) {
        float* pr = p.data() + i * T;
        float* dr = dp.data() + i * T;
        float mx = -INFINITY;
        for (int64_t j = 0; j <= i; ++j) mx = std::max(mx, pr[j]);
        double sum = 0;
        for (int64_t j = 0; j <= i; ++j) sum += (pr[j] = std::exp(pr[j] - mx));
        const float inv = float(1.0 / sum);
        double dot = 0;
        for (int64_t j = 0; j <= i; ++j) {
          pr[j] *= inv;
          dot += double(pr[j]) * dr[j];
        }
        const float d = float(dot);
        for (int64_t j = 0; j <= i; ++j) dr[j] = pr[j] * (dr[j] - d);
        std::fill(pr + i + 1, pr + T, 0.0f);
        std::fill(dr + i + 1, dr + T, 0.0f);
      }
      float* dkh = dk_h.data() + h * T * hd;
      float* dvh = dv_h.data() + h * T * hd;
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, blasint(T), blasint(hd), blasint(T), 1.0f, p.data(),
                  blasint(T), doh, blasint(ldq), 0.0f, dvh, blasint(hd));
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, blasint(T), blasint(hd), blasint(T), scale, dp.data(),
                  blasint(T), kh, blasint(ldk), 0.0f, dq + h * hd, blasint(ldq));
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, blasint(T), blasint(hd), blasint(T), scale, dp.data(),
                  blasint(T), qh, blasint(ldq), 0.0f, dkh, blasint(hd));
    }
  }
  for (int64_t h = 0; h < nh; ++h) {
    const int64_t g = h / group;
    for (int64_t t = 0; t < T; ++t) {
      const float* sk = dk_h.data() + (h * T + t) * hd;
      const float* sv = dv_h.data() + (h * T + t) * hd;
      float* ok = dk + t * ldk + g * hd;
      float* ov = dv + t * ldk + g * hd;
      for (int64_t i = 0; i < hd; ++i) {
        ok[i] += sk[i];
        ov[i] += sv[i];
      }
    }
  }
}

void swiglu_backward(const float* gate, const float* up, const float* dout, float* dgate, float* dup, int64_t n) {
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) {
    // silu(g) = g s(g); silu'(g) = s(g) (1 + g (1 - s(g))).
    const float g = gate[i], u = up[i], d = dout[i];
    const float s = 1.0f / (1.0f + std::exp(-g));
    const float dg = d * u * s * (1.0f + g * (1.0f - s));
    const float du = d * g * s;
    dgate[i] = dg;
    dup[i] = du;
  }
}

double cross_entropy_backward(const float* logits, const int32_t* targets, float* dlogits, int64_t rows, int64_t V,
                              float scale) {
  double total = 0;
#pragma omp parallel for schedule(static) reduction(+ : total)
  for (int64_t r = 0; r < rows; ++r) {
    const float* l = logits + r * V;
    float* d = dlogits + r * V;
    const int32_t tgt = targets[r];
    if (tgt < 0) {
      std::fill(d, d + V, 0.0f);
      continue;
    }
    LB_ASSERT(tgt < V);
    float mx = -INFINITY;
    for (int64_t i = 0; i < V; ++i) mx = std::max(mx, l[i]);
    double sum = 0;
    for (int64_t i = 0; i < V; ++i) sum += std::exp(double(l[i] - mx));
    const double lse = std::log(sum) + double(mx);
    total += lse - double(l[tgt]);
    for (int64_t i = 0; i < V; ++i) d[i] = float(std::exp(double(l[i]) - lse)) * scale;
    d[tgt] -= scale;
  }
  return total;
}

}  // namespace lowbit::ops
