// The inverse-Hessian factor that GPTQ and the binarization methods built on it (PB-LLM, BiLLM)
// share, and the OBS saliency they rank weights by.
//
//   dead inputs: H[j, j] == 0  ->  H[j, j] = 1, and the caller zeroes weight column j;
//   damping:     H += damp * mean(diag H) * I;
//   U = upper Cholesky factor of H^{-1}  (H^{-1} = U^T U), computed in fp64, returned in fp32.
//
// The references factor once and fail when H is not positive definite; here the damping is
// multiplied by 10 (or set to 0.01 when it was 0) and the factorization retried, up to 4 times,
// and the damping finally used is returned so that the caller can report the deviation.
//
// The saliency of weight w in column j is s = w^2 / U[j, j]^2, each step rounded to fp32 as the
// references compute it: (w * w) / (u * u).
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

namespace lowbit {

struct ObsHinv {
  std::vector<float> u;       // [cols, cols] row-major, upper triangular
  std::vector<uint8_t> dead;  // [cols] 1 where H[j, j] was 0
  int64_t dead_columns = 0;
  double damp = 0;  // relative damping used
};

// h: [cols, cols] fp64 (taken by value: it is modified).
ObsHinv obs_hinv(std::vector<double> h, int64_t cols, double damp);

class BlockContext;
struct InputStats;
// obs_hinv of the Hessian of `stats` on the device of `ctx`: on a GPU context whose collect()
// returned `stats`, from its device copy of the Hessian (the same steps, cuSOLVER in fp64:
// obs_hinv_device, defined with GPTQ's GPU solve), so that neither the Hessian nor the
// factorization touches the host; elsewhere obs_hinv of stats.hessian().
ObsHinv obs_hinv_on(const BlockContext& ctx, const InputStats& stats, int64_t cols, double damp);
std::optional<ObsHinv> obs_hinv_device(const BlockContext& ctx, const InputStats& stats, int64_t cols, double damp);

inline float obs_saliency(float w, float u_jj) { return (w * w) / (u_jj * u_jj); }

}  // namespace lowbit
