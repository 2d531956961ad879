#include "train/iec.h"

#include "core/error.h"

#include <vector>

namespace lowbit::train {

void iec_lora_forward(const IecLora& l, const float* x, int64_t n, float* y) {
  LB_CHECK(l.r > 0 && l.in % l.r == 0 && l.out % l.r == 0,
           "IEC: rank {} must divide the linear's input ({}) and output ({}) sizes", l.r, l.in, l.out);
  const int64_t gi = l.in / l.r, go = l.out / l.r;
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < n; ++t) {
    const float* xt = x + t * l.in;
    std::vector<float> h(static_cast<size_t>(l.r));
    for (int64_t k = 0; k < l.r; ++k) {
      // A x (the LoRA down-projection) and the mean of group k, in fp32 as the reference.
      float dot = 0.0f, sum = 0.0f;
      const float* ak = l.a + k * l.in;
      for (int64_t i = 0; i < l.in; ++i) dot += ak[i] * xt[i];
      for (int64_t i = k * gi; i < (k + 1) * gi; ++i) sum += xt[i];
      h[size_t(k)] = dot + l.a_scale * (sum / float(gi));
    }
    float* yt = y + t * l.out;
    for (int64_t o = 0; o < l.out; ++o) {
      const float* bo = l.b + o * l.r;
      float dot = 0.0f;
      for (int64_t k = 0; k < l.r; ++k) dot += bo[k] * h[size_t(k)];
      yt[o] += (dot + l.b_scale * h[size_t(o / go)]) * l.scaling;
    }
  }
}

void iec_lora_backward(const IecLora& l, const float* x, const float* dy, int64_t n, const IecGrads& g) {
  LB_CHECK(l.r > 0 && l.in % l.r == 0 && l.out % l.r == 0,
           "IEC: rank {} must divide the linear's input ({}) and output ({}) sizes", l.r, l.in, l.out);
  const int64_t r = l.r, in = l.in, out = l.out, gi = in / r, go = out / r;
  std::vector<double> da(g.da ? size_t(r * in) : 0), db(g.db ? size_t(out * r) : 0);
  double da_s = 0, db_s = 0;
  std::vector<double> h(static_cast<size_t>(r)), m(static_cast<size_t>(r)), dh(static_cast<size_t>(r));
  for (int64_t t = 0; t < n; ++t) {
    const float* xt = x + t * in;
    const float* dyt = dy + t * out;
    for (int64_t k = 0; k < r; ++k) {
      double dot = 0, sum = 0;
      for (int64_t i = 0; i < in; ++i) dot += double(l.a[k * in + i]) * xt[i];
      for (int64_t i = k * gi; i < (k + 1) * gi; ++i) sum += xt[i];
      m[size_t(k)] = sum / double(gi);
      h[size_t(k)] = dot + double(l.a_scale) * m[size_t(k)];
    }
    for (int64_t k = 0; k < r; ++k) {
      double s = 0, chunk = 0;
      for (int64_t j = 0; j < out; ++j) s += double(dyt[j]) * l.b[j * r + k];
      for (int64_t j = k * go; j < (k + 1) * go; ++j) chunk += dyt[j];
      dh[size_t(k)] = double(l.scaling) * (s + double(l.b_scale) * chunk);
      db_s += double(l.scaling) * chunk * h[size_t(k)];
      da_s += dh[size_t(k)] * m[size_t(k)];
    }
    if (g.db)
      for (int64_t j = 0; j < out; ++j)
        for (int64_t k = 0; k < r; ++k) db[size_t(j * r + k)] += double(l.scaling) * dyt[j] * h[size_t(k)];
    if (g.da)
      for (int64_t k = 0; k < r; ++k)
        for (int64_t i = 0; i < in; ++i) da[size_t(k * in + i)] += dh[size_t(k)] * xt[i];
    if (g.dx)
      for (int64_t i = 0; i < in; ++i) {
        double s = double(l.a_scale) * dh[size_t(i / gi)] / double(gi);
        for (int64_t k = 0; k < r; ++k) s += dh[size_t(k)] * l.a[k * in + i];
        g.dx[t * in + i] += float(s);
      }
  }
  if (g.da)
    for (size_t i = 0; i < da.size(); ++i) g.da[i] += float(da[i]);
  if (g.db)
    for (size_t i = 0; i < db.size(); ++i) g.db[i] += float(db[i]);
  if (g.da_scale) *g.da_scale += float(da_s);
  if (g.db_scale) *g.db_scale += float(db_s);
}

}  // namespace lowbit::train
