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

}  // namespace lowbit::train
