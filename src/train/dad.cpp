#include "train/dad.h"

#include "core/error.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace lowbit::train {

DadWeight parse_dad_weight(const std::string& s) {
  if (s == "none") return DadWeight::None;
  if (s == "teacher") return DadWeight::Teacher;
  if (s == "cross") return DadWeight::Cross;
  fail("DAD weight '{}' is not one of none, teacher, cross", s);
}

const char* dad_weight_name(DadWeight w) {
  switch (w) {
    case DadWeight::None: return "none";
    case DadWeight::Teacher: return "teacher";
    default: return "cross";
  }
}

namespace {

// log-softmax of one row, in double.
void log_softmax(const float* z, int64_t V, std::vector<double>& out) {
  double mx = z[0];
  for (int64_t v = 1; v < V; ++v) mx = std::max(mx, double(z[v]));
  double sum = 0;
  for (int64_t v = 0; v < V; ++v) sum += std::exp(double(z[v]) - mx);
  const double lse = mx + std::log(sum);
  for (int64_t v = 0; v < V; ++v) out[size_t(v)] = double(z[v]) - lse;
}

}  // namespace

DadSums dad_loss_backward(const float* teacher, float* student, int64_t rows, int64_t V, const DadOptions& opt,
                          double scale) {
  DadSums total;
#pragma omp parallel
  {
    std::vector<double> lp(static_cast<size_t>(V)), lq(static_cast<size_t>(V));
    DadSums part;
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      log_softmax(teacher + r * V, V, lp);
      float* zs = student + r * V;
      log_softmax(zs, V, lq);
      double kl = 0, hp = 0, hpq = 0;
      for (int64_t v = 0; v < V; ++v) {
        const double p = std::exp(lp[size_t(v)]);
        if (p > 0) {
          kl += p * (lp[size_t(v)] - lq[size_t(v)]);
          hp -= p * lp[size_t(v)];
        }
        hpq -= p * lq[size_t(v)];
      }
      double w = 1;
      if (opt.weight == DadWeight::Teacher) w = std::pow(hp, opt.gamma);
      if (opt.weight == DadWeight::Cross) w = std::pow(hpq, opt.gamma);
      const double g = scale * w;
      for (int64_t v = 0; v < V; ++v) zs[v] = float(g * (std::exp(lq[size_t(v)]) - std::exp(lp[size_t(v)])));
      part.loss += g * kl;
      part.kl += kl;
      part.weight += w;
    }
#pragma omp critical
    {
      total.loss += part.loss;
      total.kl += part.kl;
      total.weight += part.weight;
    }
  }
  return total;
}

}  // namespace lowbit::train
