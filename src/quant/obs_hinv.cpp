#include "quant/obs_hinv.h"

#include "core/error.h"
#include "calib/block_driver.h"
#include "quant/gptq.h"

namespace lowbit {

ObsHinv obs_hinv(std::vector<double> h, int64_t cols, double damp) {
  LB_CHECK(int64_t(h.size()) == cols * cols, "Hessian has {} entries for {} columns", h.size(), cols);
  ObsHinv r;
  r.dead.assign(size_t(cols), 0);
  for (int64_t c = 0; c < cols; ++c) {
    if (h[size_t(c * cols + c)] != 0.0) continue;
    h[size_t(c * cols + c)] = 1.0;
    r.dead[size_t(c)] = 1;
    ++r.dead_columns;
  }
  r.u = gptq_inverse_factor(h, cols, damp, &damp);
  r.damp = damp;
  return r;
}

ObsHinv obs_hinv_on(const BlockContext& ctx, const InputStats& stats, int64_t cols, double damp) {
  if (std::optional<ObsHinv> r = obs_hinv_device(ctx, stats, cols, damp)) return std::move(*r);
  return obs_hinv(stats.hessian(), cols, damp);
}

}  // namespace lowbit
