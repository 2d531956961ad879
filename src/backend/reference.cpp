// Scalar references: the definitions, written plainly, in double where it costs nothing.
#include "backend/ops.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace lowbit::ref {

void rmsnorm(const float* x, const float* w, float* y, int64_t rows, int64_t dim, float eps) {
  for (int64_t r = 0; r < rows; ++r) {
    double ss = 0;
    for (int64_t i = 0; i < dim; ++i) ss += double(x[r * dim + i]) * x[r * dim + i];
    const double inv = 1.0 / std::sqrt(ss / double(dim) + eps);
    for (int64_t i = 0; i < dim; ++i) y[r * dim + i] = float(x[r * dim + i] * inv) * w[i];
  }
}

void linear(const float* x, const float* w, float* y, int64_t rows, int64_t in, int64_t out) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t o = 0; o < out; ++o) {
      double acc = 0;
      for (int64_t i = 0; i < in; ++i) acc += double(x[r * in + i]) * w[o * in + i];
      y[r * out + o] = float(acc);
    }
}

void rope(float* x, int64_t T, int64_t heads, int64_t ld, const RopeTable& rt, int64_t pos0) {
  const int64_t half = rt.half;
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < heads; ++h) {
      float* v = x + t * ld + h * 2 * half;
      const float* c = rt.cos.data() + (pos0 + t) * half;
      const float* s = rt.sin.data() + (pos0 + t) * half;
      for (int64_t i = 0; i < half; ++i) {
        // q * cos + rotate_half(q) * sin, rotate_half(x) = cat(-x2, x1)
        const float a = v[i], b = v[i + half];
        v[i] = a * c[i] - b * s[i];
        v[i + half] = b * c[i] + a * s[i];
      }
    }
}

void attention(const float* q, const float* k, const float* v, float* out, int64_t T, int64_t nh, int64_t nkv,
               int64_t hd, int64_t past) {
  const int64_t group = nh / nkv;
  const double scale = 1.0 / std::sqrt(double(hd));
  std::vector<double> p(static_cast<size_t>(past + T));
  for (int64_t h = 0; h < nh; ++h) {
    const int64_t kh = h / group;
    for (int64_t t = 0; t < T; ++t) {
      const int64_t last = past + t;
      double mx = -INFINITY;
      for (int64_t s = 0; s <= last; ++s) {
        double d = 0;
        for (int64_t i = 0; i < hd; ++i) d += double(q[t * nh * hd + h * hd + i]) * k[s * nkv * hd + kh * hd + i];
        p[size_t(s)] = d * scale;
        mx = std::max(mx, p[size_t(s)]);
      }
      double sum = 0;
      for (int64_t s = 0; s <= last; ++s) sum += (p[size_t(s)] = std::exp(p[size_t(s)] - mx));
      for (int64_t i = 0; i < hd; ++i) {
        double acc = 0;
        for (int64_t s = 0; s <= last; ++s) acc += p[size_t(s)] * v[s * nkv * hd + kh * hd + i];
        out[t * nh * hd + h * hd + i] = float(acc / sum);
      }
    }
  }
}

void swiglu(const float* gate, const float* up, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const double g = gate[i];
    out[i] = float(g / (1.0 + std::exp(-g)) * up[i]);
  }
}

void nll_rows(const float* logits, const int32_t* targets, double* out, int64_t rows, int64_t V) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* l = logits + r * V;
    double mx = -INFINITY;
    for (int64_t i = 0; i < V; ++i) mx = std::max(mx, double(l[i]));
    double sum = 0;
    for (int64_t i = 0; i < V; ++i) sum += std::exp(double(l[i]) - mx);
    out[r] = std::log(sum) + mx - l[targets[r]];
  }
}

void gram_accumulate(const float* x, int64_t rows, int64_t cols, double* acc) {
  for (int64_t i = 0; i < cols; ++i)
    for (int64_t j = 0; j < cols; ++j) {
      double sum = 0;
      for (int64_t r = 0; r < rows; ++r) sum += double(x[r * cols + i]) * double(x[r * cols + j]);
      acc[i * cols + j] += sum;
    }
}

}  // namespace lowbit::ref
