#include "calib/kl_search.h"

#include "core/error.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>

namespace lowbit {

std::vector<double> kl_search_errors(const KlSearch& s, const float* x, int64_t tokens) {
  std::vector<double> out;
  if (s.candidates.empty()) return out;
  const int64_t T = tokens, O = s.rows, C = s.cols;
  // log q = log(clamp(softmax(Y), 1e-6)), Y = X W^T.
  std::vector<float> y(size_t(T * O)), z(size_t(T * O));
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, blasint(T), blasint(O), blasint(C), 1.0f, x, blasint(C), s.w,
              blasint(C), 0.0f, y.data(), blasint(O));
  std::vector<double> logq(size_t(T * O));
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < T; ++t) {
    const float* yt = y.data() + t * O;
    const float m = *std::max_element(yt, yt + O);
    double sum = 0;
    for (int64_t o = 0; o < O; ++o) sum += std::exp(double(yt[o] - m));
    for (int64_t o = 0; o < O; ++o)
      logq[size_t(t * O + o)] = std::log(std::max(std::exp(double(yt[o] - m)) / sum, 1e-6));
  }
  // Z = X Q_0^T, then each candidate's steps as rank-(c1 - c0) updates: the candidates differ
  // from their predecessors in a few columns, so no candidate needs a full product.
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, blasint(T), blasint(O), blasint(C), 1.0f, x, blasint(C),
              s.start, blasint(C), 0.0f, z.data(), blasint(O));
  for (const std::vector<KlSearch::Step>& cand : s.candidates) {
    for (const KlSearch::Step& st : cand) {
      LB_ASSERT(st.c0 >= 0 && st.c0 < st.c1 && st.c1 <= C && st.delta != nullptr);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, blasint(T), blasint(O), blasint(st.c1 - st.c0), 1.0f,
                  x + st.c0, blasint(C), st.delta + st.c0, blasint(C), 1.0f, z.data(), blasint(O));
    }
    double kl = 0;
#pragma omp parallel for reduction(+ : kl) schedule(static)
    for (int64_t t = 0; t < T; ++t) {
      const float* zt = z.data() + t * O;
      const float m = *std::max_element(zt, zt + O);
      double sum = 0;
      for (int64_t o = 0; o < O; ++o) sum += std::exp(double(zt[o] - m));
      for (int64_t o = 0; o < O; ++o) {
        const double p = std::max(std::exp(double(zt[o] - m)) / sum, 1e-6);
        kl += p * (std::log(p) - logq[size_t(t * O + o)]);
      }
    }
    out.push_back(kl);
  }
  return out;
}

}  // namespace lowbit
