// billm: BiLLM (Aaronhuang-778/BiLLM), as its code runs: BRAGPTQ.fasterquant with the "braq"
// binarizer, orders (1, 1, 2), structural_guassian_distribution(..., up_lim=50).
//
// Residual binarization BRA(x, mask, order), per row over the masked entries only (the others
// are NaN to torch.nanmean and come out 0): residual = x; `order` times: mu = mean(residual),
// alpha = mean(|residual - mu|), b = sign(residual - mu) * alpha + mu (sign(0) = 0 leaves mu),
// recon += b, residual = x - recon. A row without masked entries gets mu = alpha = 0. Means are
// torch's fp32 nansum divided by the count (reference_numerics.h).
//
// Per linear, W [rows, cols] in fp32: dead inputs zeroed, U = upper Cholesky factor of the
// damped H^{-1} (obs_hinv.h); then for each block of `block` columns, in order, on W as the
// earlier blocks' updates left it:
//   a. saliency S = W^2 / U[j, j]^2 (metric hessian; magnitude uses W itself, signed), [rows,
//      block]. The searches below run on S, not on W;
//   b. salient columns: column scores sum_r |S[r, j]|, the up_lim (50) largest (descending, ties
//      by index); for k = 1 .. up_lim - 1 (never 0), error = mean((S - BRA(S, top k, 2) -
//      BRA(S, other columns, 2))^2); the first k with the strictly smallest error wins;
//   c. split of the other weights: A = |S| with the salient columns' entries 0 (they stay in the
//      distribution); 81 thresholds p = numpy's linear quantiles of A at fp32 levels
//      torch.linspace(0.10, 0.90, 81), compared in fp32; mask2 = A >= p, mask1 = A < p (both
//      outside the salient columns); error = mean((S - (BRA(S, mask1, 1) + BRA(S, mask2, 1)) -
//      BRA(S, salient, 2))^2), the first strictly smallest wins;
//   d. the block, as it stands, quantized once: BRA(W, mask1, 1), BRA(W, mask2, 1) and
//      BRA(W, salient, 2) on the weights, each weight taking its mask's part;
//   e. no update inside the block: err_i = (w_i - q_i) / U[i, i] with the block's own w, and
//      after the block W[:, end:] -= Err U[block, end:].
// The result is written back in the model's dtype. The reference's loss sum (w - q)^2 /
// U[i, i]^2 / 2 is reported, with each block's salient column count.
//
// Hessians: one collect() of all seven linears with the unquantized block (the reference's
// hooks); the block's quantized outputs feed the next.
//
// #W: 1.1 as the study prints it (salient columns at 2 bits, the rest at 1, uncounted masks and
// parameters); the stored bits per weight are reported by the format (formats/billm_format.h).
//
//   spec: billm:block=128,metric=hessian,damp=0.01,up_lim=50
#pragma once

#include "quant/obs_hinv.h"
#include "quant/quantized_linear.h"

#include <memory>
#include <vector>

namespace lowbit {

struct BillmOptions {
  bool hessian_metric = true;
  double damp = 0.01;
  int64_t block = 128;
  int64_t up_lim = 50;
};

struct BillmBlock {
  int64_t salient = 0;      // optimal_split_0: salient columns chosen
  int64_t split_index = 0;  // which of the 81 quantiles
  float split = 0;          // its value
};

struct BillmResult {
  QuantizedLinear q;           // format "billm" (formats/billm_format.h)
  std::vector<float> w;        // [rows, cols] the fp32 weight the reference writes back
  std::vector<uint8_t> group;  // [rows, cols] 1 = mask1, 2 = mask2, 3 = salient
  std::vector<float> params;   // [rows, nblk, 8] as in the format
  std::vector<BillmBlock> blocks;
  double loss = 0;
  double damp = 0;
  int64_t dead_columns = 0;
};

// The candidate errors of the two searches (steps b and c), where they run: on the host's cores
// (billm_host_searches) or, where the block's context lives on a GPU, one GPU thread per
// candidate and row (billm_searches_on; blocks of 8 to 128 columns, others on the host). Both
// return the same bits: each error is torch.mean of the [rows, n] squared errors in the host's
// order (backend/cuda/billm_rows.h). Arrays are on the host, row-major [rows, n].
class BillmSearches {
 public:
  virtual ~BillmSearches() = default;
  // Step b: for k = 1 .. nk, mean((s - (BRA(s, rest, 2) + BRA(s, top k, 2)))^2); rank [n] is
  // column j's place in the descending column scores (the top k: rank < k).
  virtual std::vector<float> salient_errors(const float* s, int64_t rows, int64_t n, const int32_t* rank,
                                            int64_t nk) = 0;
  // Step c: for each split p, mean((s - ((BRA(s, below, 1) + BRA(s, above, 1)) + g3))^2), below
  // = keep and absn < p, above = keep and absn >= p.
  virtual std::vector<float> split_errors(const float* s, const float* absn, const uint8_t* keep, const float* g3,
                                          int64_t rows, int64_t n, const std::vector<float>& splits) = 0;
};
std::unique_ptr<BillmSearches> billm_host_searches();
class BlockContext;
// The GPU's searches when ctx lives on a CUDA device (null otherwise, and in builds without CUDA).
std::unique_ptr<BillmSearches> billm_searches_on(const BlockContext& ctx);

// w: [rows, cols] fp32; hinv: from obs_hinv on this weight's Hessian; searches: where steps b
// and c run (null: the host).
BillmResult billm_quantize(const float* w, int64_t rows, int64_t cols, const ObsHinv& hinv, const BillmOptions& opt,
                           DType dtype, BillmSearches* searches = nullptr);

}  // namespace lowbit
