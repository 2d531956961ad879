#include "backend/ops.h"

#include <cmath>

namespace lowbit {

std::vector<float> rope_inv_freq(const LlamaConfig& c) {
  const int64_t dim = c.head_dim, half = dim / 2;
  std::vector<float> inv(static_cast<size_t>(half));
  // transformers: 1 / base ** (arange(0, dim, 2).float() / dim), in fp32.
  for (int64_t i = 0; i < half; ++i)
    inv[size_t(i)] = 1.0f / std::pow(float(c.rope_theta), float(2 * i) / float(dim));
  const RopeScaling& s = c.rope_scaling;
  if (s.type == RopeScaling::Type::Linear) {
    for (float& f : inv) f /= float(s.factor);
  } else if (s.type == RopeScaling::Type::Llama3) {
    // transformers' _compute_llama3_parameters: long wavelengths are divided by `factor`, short
    // ones kept, and the band between is interpolated smoothly.
    const double old_ctx = double(s.original_max_position_embeddings);
    const double low_wavelen = old_ctx / s.low_freq_factor;
    const double high_wavelen = old_ctx / s.high_freq_factor;
    for (float& f : inv) {
      const float wavelen = float(2.0 * M_PI) / f;
      float scaled = wavelen > float(low_wavelen) ? f / float(s.factor) : f;
      const bool medium = !(wavelen < float(high_wavelen)) && !(wavelen > float(low_wavelen));
      if (medium) {
        const float smooth = (float(old_ctx) / wavelen - float(s.low_freq_factor)) /
                             float(s.high_freq_factor - s.low_freq_factor);
        scaled = (1.0f - smooth) * scaled / float(s.factor) + smooth * scaled;
      }
      f = scaled;
    }
  }
  return inv;
}

RopeTable make_rope_table(const LlamaConfig& c, int64_t n_pos) {
  RopeTable rt;
  rt.n_pos = n_pos;
  rt.half = c.head_dim / 2;
  rt.inv_freq = rope_inv_freq(c);
  rt.cos.resize(size_t(n_pos * rt.half));
  rt.sin.resize(size_t(n_pos * rt.half));
  for (int64_t p = 0; p < n_pos; ++p)
    for (int64_t i = 0; i < rt.half; ++i) {
      // The angle is a fp32 product, as in transformers (inv_freq @ position_ids in fp32).
      const float angle = float(p) * rt.inv_freq[size_t(i)];
      rt.cos[size_t(p * rt.half + i)] = float(std::cos(double(angle)));
      rt.sin[size_t(p * rt.half + i)] = float(std::sin(double(angle)));
    }
  return rt;
}

}  // namespace lowbit
