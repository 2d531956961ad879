// The min-max affine integer grid of GPTQ's Quantizer (quant.py of IST-DASLab/gptq), which RTN
// and GPTQ share, so that the two differ only in GPTQ's error compensation:
//
//   xmin = min(0, min x), xmax = max(0, max x)        over the values of one row's group
//   sym:  xmax = max(|xmin|, xmax), xmin = -xmax when xmin < 0
//   xmin = -1, xmax = +1 when both are 0
//   scale = (xmax - xmin) / maxq,   maxq = 2^bits - 1
//   zero  = (maxq + 1) / 2 (sym)  or  round(-xmin / scale) (asym)
//   code  = clamp(round(x / scale) + zero, 0, maxq),   w = scale * (code - zero)
//
// All in fp32, with round-half-to-even (torch.round), so that the codes match the reference bit
// for bit. The grid includes 0 because xmin <= 0 <= xmax.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace lowbit {

struct AffineParams {
  float scale = 1.0f;
  float zero = 0.0f;
};

// Parameters for n values at x[0], x[stride], ... (one row's group).
inline AffineParams affine_minmax(const float* x, int64_t n, int64_t stride, int maxq, bool sym) {
  float xmin = 0.0f, xmax = 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i * stride];
    xmin = std::min(xmin, v);
    xmax = std::max(xmax, v);
  }
  if (sym) {
    xmax = std::max(std::fabs(xmin), xmax);
    if (xmin < 0) xmin = -xmax;
  }
  if (xmin == 0.0f && xmax == 0.0f) {
    xmin = -1.0f;
    xmax = 1.0f;
  }
  AffineParams p;
  p.scale = (xmax - xmin) / float(maxq);
  p.zero = sym ? float(maxq + 1) / 2.0f : std::nearbyint(-xmin / p.scale);
  return p;
}

inline uint8_t affine_code(float x, const AffineParams& p, int maxq) {
  const float q = std::nearbyint(x / p.scale) + p.zero;
  return uint8_t(std::clamp(q, 0.0f, float(maxq)));
}

inline float affine_value(uint8_t code, const AffineParams& p) { return p.scale * (float(code) - p.zero); }

}  // namespace lowbit
