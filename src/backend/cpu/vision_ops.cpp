#include "backend/vision_ops.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace lowbit {
namespace ops {

void layernorm(const float* x, const float* w, const float* b, float* y, int64_t rows, int64_t dim, float eps) {
#pragma omp parallel for schedule(static) if (rows * dim > 65536)
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * dim;
    double sum = 0, sq = 0;
    for (int64_t i = 0; i < dim; ++i) sum += xr[i];
    const double mean = sum / double(dim);
    for (int64_t i = 0; i < dim; ++i) sq += (xr[i] - mean) * (xr[i] - mean);
    const float inv = float(1.0 / std::sqrt(sq / double(dim) + double(eps)));
    const float m = float(mean);
    float* yr = y + r * dim;
    for (int64_t i = 0; i < dim; ++i) yr[i] = (xr[i] - m) * inv * w[i] + b[i];
  }
}

void add_bias(float* y, const float* b, int64_t rows, int64_t dim) {
#pragma omp parallel for schedule(static) if (rows * dim > 65536)
  for (int64_t r = 0; r < rows; ++r)
#pragma omp simd
    for (int64_t i = 0; i < dim; ++i) y[r * dim + i] += b[i];
}

void quick_gelu(float* x, int64_t n) {
#pragma omp parallel for simd schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) x[i] = x[i] / (1.0f + std::exp(-1.702f * x[i]));
}

void gelu(float* x, int64_t n) {
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) x[i] = 0.5f * x[i] * (1.0f + std::erf(x[i] * float(M_SQRT1_2)));
}

void attention_bidirectional(const float* q, const float* k, const float* v, float* out, int64_t S, int64_t T,
                             int64_t nh, int64_t hd) {
  const int64_t ld = nh * hd;
  const float scale = 1.0f / std::sqrt(float(hd));
  // One (sequence, head) pair per task: a T x T score GEMM, row softmax, a GEMM with V.
  // OpenBLAS (its OpenMP build) runs single-threaded inside the parallel region.
#pragma omp parallel
  {
    std::vector<float> scores(size_t(T * T));
#pragma omp for schedule(dynamic, 1) collapse(2)
    for (int64_t s = 0; s < S; ++s)
      for (int64_t h = 0; h < nh; ++h) {
        const int64_t base = s * T * ld + h * hd;
        float* sc = scores.data();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, blasint(T), blasint(T), blasint(hd), scale, q + base,
                    blasint(ld), k + base, blasint(ld), 0.0f, sc, blasint(T));
        for (int64_t r = 0; r < T; ++r) {
          float* sr = sc + r * T;
          float mx = -INFINITY;
          for (int64_t j = 0; j < T; ++j) mx = std::max(mx, sr[j]);
          float sum = 0;
          for (int64_t j = 0; j < T; ++j) {
            sr[j] = std::exp(sr[j] - mx);
            sum += sr[j];
          }
          const float inv = 1.0f / sum;
          for (int64_t j = 0; j < T; ++j) sr[j] *= inv;
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, blasint(T), blasint(hd), blasint(T), 1.0f, sc,
                    blasint(T), v + base, blasint(ld), 0.0f, out + base, blasint(ld));
      }
  }
}

}  // namespace ops

namespace ref {

void layernorm(const float* x, const float* w, const float* b, float* y, int64_t rows, int64_t dim, float eps) {
  for (int64_t r = 0; r < rows; ++r) {
    double mean = 0, var = 0;
    for (int64_t i = 0; i < dim; ++i) mean += x[r * dim + i];
    mean /= double(dim);
    for (int64_t i = 0; i < dim; ++i) var += (x[r * dim + i] - mean) * (x[r * dim + i] - mean);
    var /= double(dim);
    for (int64_t i = 0; i < dim; ++i)
      y[r * dim + i] = float((x[r * dim + i] - mean) / std::sqrt(var + eps) * w[i] + b[i]);
  }
}

void attention_bidirectional(const float* q, const float* k, const float* v, float* out, int64_t S, int64_t T,
                             int64_t nh, int64_t hd) {
  const int64_t ld = nh * hd;
  std::vector<double> p(static_cast<size_t>(T));
  for (int64_t s = 0; s < S; ++s)
    for (int64_t h = 0; h < nh; ++h)
      for (int64_t i = 0; i < T; ++i) {
        const float* qi = q + (s * T + i) * ld + h * hd;
        double mx = -INFINITY, sum = 0;
        for (int64_t j = 0; j < T; ++j) {
          const float* kj = k + (s * T + j) * ld + h * hd;
          double d = 0;
          for (int64_t c = 0; c < hd; ++c) d += double(qi[c]) * kj[c];
          p[size_t(j)] = d / std::sqrt(double(hd));
          mx = std::max(mx, p[size_t(j)]);
        }
        for (int64_t j = 0; j < T; ++j) sum += (p[size_t(j)] = std::exp(p[size_t(j)] - mx));
        for (int64_t c = 0; c < hd; ++c) {
          double o = 0;
          for (int64_t j = 0; j < T; ++j) o += p[size_t(j)] / sum * v[(s * T + j) * ld + h * hd + c];
          out[(s * T + i) * ld + h * hd + c] = float(o);
        }
      }
}

}  // namespace ref
}  // namespace lowbit
