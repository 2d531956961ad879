#include "train/optimizer.h"

#include "core/error.h"

#include <cmath>

namespace lowbit::train {

AdamWState AdamWState::zeros_like(const LoraAdapters& params) {
  AdamWState s;
  s.m = params.zeros_like();
  s.v = params.zeros_like();
  return s;
}

namespace {

// Visits (param, grad, m, v) vectors in step, in the adapters' fixed order.
template <typename F> void zip4(LoraAdapters& p, const LoraAdapters& g, LoraAdapters& m, LoraAdapters& v, F&& f) {
  LB_ASSERT(p.layers.size() == g.layers.size() && p.layers.size() == m.layers.size() &&
            p.layers.size() == v.layers.size());
  for (size_t l = 0; l < p.layers.size(); ++l)
    for (size_t k = 0; k < 7; ++k) {
      LoraLinear& pa = p.layers[l][k];
      if (!pa.active()) continue;
      f(pa.a, g.layers[l][k].a, m.layers[l][k].a, v.layers[l][k].a);
      f(pa.b, g.layers[l][k].b, m.layers[l][k].b, v.layers[l][k].b);
      // IEC's scalars are parameters of the same AdamW group (IR-QLoRA trains them with A and B).
      f(pa.a_scale, g.layers[l][k].a_scale, m.layers[l][k].a_scale, v.layers[l][k].a_scale);
      f(pa.b_scale, g.layers[l][k].b_scale, m.layers[l][k].b_scale, v.layers[l][k].b_scale);
    }
}

}  // namespace

AdamWCoefficients adamw_coefficients(int64_t step, const AdamWOptions& opt, double lr) {
  LB_ASSERT(step >= 1);
  const double bc1 = 1.0 - std::pow(opt.beta1, double(step));
  AdamWCoefficients k;
  k.step_size = float(lr / bc1);
  k.decay = float(1.0 - lr * opt.weight_decay);
  k.one_minus_b1 = 1.0f - float(opt.beta1);
  k.b2 = float(opt.beta2);
  k.one_minus_b2 = 1.0f - float(opt.beta2);
  k.eps = float(opt.eps);
  k.bc2_sqrt = float(std::sqrt(1.0 - std::pow(opt.beta2, double(step))));
  return k;
}

void adamw_update(std::vector<float>& p, const std::vector<float>& g, std::vector<float>& m, std::vector<float>& v,
                  int64_t step, const AdamWOptions& opt, double lr) {
  LB_ASSERT(p.size() == g.size() && p.size() == m.size() && p.size() == v.size() && step >= 1);
  const AdamWCoefficients k = adamw_coefficients(step, opt, lr);
  const float step_size = k.step_size, decay = k.decay, omb1 = k.one_minus_b1, b2 = k.b2, omb2 = k.one_minus_b2,
              eps = k.eps, bc2s = k.bc2_sqrt;
#pragma omp parallel for simd schedule(static) if (p.size() > 65536)
  for (size_t i = 0; i < p.size(); ++i) {
    p[i] *= decay;
    // torch: exp_avg.lerp_(grad, 1 - beta1); exp_avg_sq.mul_(beta2).addcmul_(grad, grad, 1 - beta2)
    m[i] += (g[i] - m[i]) * omb1;
    v[i] = v[i] * b2 + omb2 * g[i] * g[i];
    const float denom = std::sqrt(v[i]) / bc2s + eps;
    p[i] -= step_size * (m[i] / denom);
  }
}

void adamw_step(LoraAdapters& params, const LoraAdapters& grads, AdamWState& st, const AdamWOptions& opt, double lr) {
  st.step += 1;
  zip4(params, grads, st.m, st.v,
       [&](std::vector<float>& p, const std::vector<float>& g, std::vector<float>& m, std::vector<float>& v) {
         adamw_update(p, g, m, v, st.step, opt, lr);
       });
}

double clip_grad_norm(LoraAdapters& grads, double max_norm) {
  double ss = 0;
  grads.for_each([&](const std::string&, const std::vector<float>& g) {
    for (float x : g) ss += double(x) * x;
  });
  const double norm = std::sqrt(ss);
  if (max_norm > 0) {
    const float coef = clip_coefficient(norm, max_norm);
    grads.for_each([&](const std::string&, std::vector<float>& g) {
      for (float& x : g) x *= coef;
    });
  }
  return norm;
}

float clip_coefficient(double norm, double max_norm) {
  return max_norm > 0 ? float(std::min(1.0, max_norm / (norm + 1e-6))) : 1.0f;
}

int64_t warmup_steps(double warmup_ratio, int64_t total_steps) {
  LB_CHECK(warmup_ratio >= 0 && warmup_ratio <= 1, "warmup ratio must be in [0, 1], got {}", warmup_ratio);
  return int64_t(std::ceil(warmup_ratio * double(total_steps)));
}

double constant_with_warmup_lr(double lr, int64_t step, int64_t warmup) {
  if (step < warmup) return lr * double(step) / double(std::max<int64_t>(1, warmup));
  return lr;
}

}  // namespace lowbit::train
