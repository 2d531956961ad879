#include "train/iec.h"

#include "backend/ops.h"
#include "backend/ops_backward.h"
#include "core/error.h"

#include <vector>

namespace lowbit::train {

void check_iec_shape(int64_t r, int64_t in, int64_t out) {
  LB_CHECK(r > 0 && in % r == 0 && out % r == 0,
           "IEC: rank {} must divide the linear's input ({}) and output ({}) sizes", r, in, out);
}

void iec_down(const IecLora& l, const float* x, const float* xd, int64_t n, float* h) {
  check_iec_shape(l.r, l.in, l.out);
  ops::linear(xd, l.a, h, n, l.in, l.r);
  if (l.a_scale == 0.0f) return;
  const int64_t gi = l.in / l.r;
#pragma omp parallel for schedule(static) if (n > 16)
  for (int64_t t = 0; t < n; ++t)
    for (int64_t k = 0; k < l.r; ++k) {
      // The group mean in fp32, as the reference's x.reshape(..., r, -1).mean(-1).
      float sum = 0.0f;
      for (int64_t i = k * gi; i < (k + 1) * gi; ++i) sum += x[t * l.in + i];
      h[t * l.r + k] += l.a_scale * (sum / float(gi));
    }
}

void iec_up(const IecLora& l, const float* h, int64_t n, float* y) {
  check_iec_shape(l.r, l.in, l.out);
  const int64_t go = l.out / l.r;
  std::vector<float> tmp(size_t(n * l.out));
  ops::linear(h, l.b, tmp.data(), n, l.r, l.out);
#pragma omp parallel for schedule(static) if (n > 16)
  for (int64_t t = 0; t < n; ++t)
    for (int64_t o = 0; o < l.out; ++o)
      y[t * l.out + o] += (tmp[size_t(t * l.out + o)] + l.b_scale * h[t * l.r + o / go]) * l.scaling;
}

void iec_lora_forward(const IecLora& l, const float* x, int64_t n, float* y) {
  check_iec_shape(l.r, l.in, l.out);
  std::vector<float> h(size_t(n * l.r));
  iec_down(l, x, x, n, h.data());
  iec_up(l, h.data(), n, y);
}

void iec_lora_backward(const IecLora& l, const float* x, const float* xd, const float* h_in, const float* dy,
                       int64_t n, const IecGrads& g) {
  check_iec_shape(l.r, l.in, l.out);
  const int64_t r = l.r, in = l.in, out = l.out, gi = in / r, go = out / r;
  std::vector<float> h_own;
  const float* h = h_in;
  if (h == nullptr) {
    h_own.resize(size_t(n * r));
    iec_down(l, x, xd, n, h_own.data());
    h = h_own.data();
  }
  // dys = s dy; dB += dys^T h and dh = dys B (the plain LoRA up-projection's backward).
  std::vector<float> dys(size_t(n * out)), dh(size_t(n * r));
  for (int64_t i = 0; i < n * out; ++i) dys[size_t(i)] = l.scaling * dy[i];
  ops::linear_backward(h, l.b, dys.data(), dh.data(), g.db, n, r, out);
  // The b_s term: chunk k of the output reads h_k.
  double db_s = 0;
  for (int64_t t = 0; t < n; ++t)
    for (int64_t k = 0; k < r; ++k) {
      double chunk = 0;
      for (int64_t j = k * go; j < (k + 1) * go; ++j) chunk += dys[size_t(t * out + j)];
      db_s += chunk * h[t * r + k];
      dh[size_t(t * r + k)] += float(double(l.b_scale) * chunk);
    }
  // The a_s term: d a_s = dh . m, dx_i += a_s dh_k / gi over group k.
  double da_s = 0;
  for (int64_t t = 0; t < n; ++t)
    for (int64_t k = 0; k < r; ++k) {
      double sum = 0;
      for (int64_t i = k * gi; i < (k + 1) * gi; ++i) sum += x[t * in + i];
      da_s += double(dh[size_t(t * r + k)]) * (sum / double(gi));
    }
  // dA += dh^T xd; dxd += dh A (before the mean path adds into dx, which may be the same buffer).
  ops::linear_backward(xd, l.a, dh.data(), g.dxd, g.da, n, in, r, true);
  if (g.dx != nullptr && l.a_scale != 0.0f)
    for (int64_t t = 0; t < n; ++t)
      for (int64_t i = 0; i < in; ++i) g.dx[t * in + i] += l.a_scale * dh[size_t(t * r + i / gi)] / float(gi);
  if (g.da_scale) *g.da_scale += float(da_s);
  if (g.db_scale) *g.db_scale += float(db_s);
}

void iec_lora_backward(const IecLora& l, const float* x, const float* dy, int64_t n, const IecGrads& g) {
  IecGrads gg = g;
  gg.dxd = g.dx;
  iec_lora_backward(l, x, x, nullptr, dy, n, gg);
}

void iec_merge(const IecLora& l, float* w) {
  check_iec_shape(l.r, l.in, l.out);
  const int64_t gi = l.in / l.r, go = l.out / l.r;
  // A' = A + a_s M and B' = B + b_s R, then W += scaling B' A'.
  std::vector<float> a(l.a, l.a + l.r * l.in), b(l.b, l.b + l.out * l.r);
  for (int64_t k = 0; k < l.r; ++k)
    for (int64_t i = k * gi; i < (k + 1) * gi; ++i) a[size_t(k * l.in + i)] += l.a_scale / float(gi);
  for (int64_t o = 0; o < l.out; ++o) b[size_t(o * l.r + o / go)] += l.b_scale;
#pragma omp parallel for schedule(static)
  for (int64_t o = 0; o < l.out; ++o)
    for (int64_t k = 0; k < l.r; ++k) {
      const float s = l.scaling * b[size_t(o * l.r + k)];
      const float* arow = a.data() + k * l.in;
      float* wrow = w + o * l.in;
      for (int64_t i = 0; i < l.in; ++i) wrow[i] += s * arow[i];
    }
}

}  // namespace lowbit::train
