#include "quant/obs_hinv.h"

#include "backend/ops.h"
#include "core/error.h"

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
  double mean_diag = 0;
  for (int64_t c = 0; c < cols; ++c) mean_diag += h[size_t(c * cols + c)];
  mean_diag /= double(cols);
  std::vector<double> a;
  for (int attempt = 0;; ++attempt) {
    a = h;
    for (int64_t c = 0; c < cols; ++c) a[size_t(c * cols + c)] += damp * mean_diag;
    bool ok = ops::cholesky(a.data(), cols, false);
    if (ok) {
      ops::cholesky_inverse(a.data(), cols);
      ok = ops::cholesky(a.data(), cols, true);
    }
    if (ok) break;
    LB_CHECK(attempt < 4, "the Hessian is not positive definite even with damping {} (x mean diagonal)", damp);
    damp = damp > 0.0 ? damp * 10.0 : 0.01;
  }
  r.damp = damp;
  r.u.assign(a.begin(), a.end());
  return r;
}

}  // namespace lowbit
