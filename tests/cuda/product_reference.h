// The exact product the GPU linear kernels are checked against (tests/cuda/test_w4a16.cpp,
// test_gemv_lowbit.cpp): y = x W^T summed in double, with the sum of |x_k w_k| per output that
// bounds the kernels' fp32 summation error.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

namespace lowbit::test {

struct Reference {
  std::vector<double> y, sumabs;  // [M, N]
};

// w [N, K] row-major; x [M, lda] (its first K columns used).
inline Reference reference(const std::vector<float>& w, int64_t N, int64_t K, const std::vector<float>& x, int64_t M,
                           int64_t lda) {
  Reference r;
  r.y.assign(size_t(M * N), 0.0);
  r.sumabs.assign(size_t(M * N), 0.0);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double s = 0, a = 0;
      const float* xr = x.data() + m * lda;
      const float* wr = w.data() + n * K;
      for (int64_t k = 0; k < K; ++k) {
        const double p = double(xr[k]) * double(wr[k]);
        s += p;
        a += std::fabs(p);
      }
      r.y[size_t(m * N + n)] = s;
      r.sumabs[size_t(m * N + n)] = a;
    }
  return r;
}

}  // namespace lowbit::test
