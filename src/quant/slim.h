// slim: SliM-LLM (Huang et al. 2024), the GPTQ-based variant, as its reference code
// (Aaronhuang-778/SliM-LLM, slim-llm/: run.py, slim_gptq.py, utils/bitsearch.py,
// utils/mixed_quantizer.py, utils/salient_mask.py, utils/reconstruct.py) runs it.
//
// Per block, all seven linears' Hessians come from one collect() of the unquantized block
// (H = 2/N sum X^T X); the block's quantized outputs feed the next block.
//
// Per linear (N = w bits, groups of g = 128 input columns, ngroups = ceil(cols / g)):
// A width that is not a multiple of g (SmolLM2's 576 = 4 x 128 + 64) ends in a narrower group,
// and the reference treats it as any other: its salience sums its own columns (so a 64-column
// group tends to rank low), it counts as one group in the search's candidate range (576: five
// groups, one candidate, count 1), the search's RTN or binarization and the quantizer fit
// (min-max, saliency z-scores, means) run over its columns only, and GPTQ walks it as the last
// column block. lowbit does the same (scripts/slim_partial_reference.py checks 576 and 192).
//  1. Bit allocation (SBA), unless an allocation file gives the per-group widths:
//     a. the Hessian is edited in place, as get_salience does: dead diagonal entries set to 1,
//        then an ABSOLUTE 0.01 added to the whole diagonal (this edit stays for step 2);
//        U = upper Cholesky factor of H^{-1} (no further damping); group salience
//        S_j = sum over rows and group j's columns of W^2 / U_cc^2, with W^2 rounded to the
//        model's dtype (the reference squares the 16-bit weight);
//     b. a second forward of the unquantized block; for every calibration window and every
//        linear, with X its input [T, cols] and Y = X W^T, and for i = 1 .. ngroups/2 - 1: the
//        i least salient groups at N-1 bits, the i most salient at N+1, the others at N, each
//        group round-to-nearest per row on its min-max grid (1-bit groups binarized, below);
//        error_i = sum over tokens of KL(softmax(X Wq^T) || softmax(Y)), both clamped at 1e-6
//        (F.kl_div with "batchmean" over a batch of one);
//        lowbit runs the search in fp32 (the reference, with the model loaded in bf16, quantizes
//        and multiplies in bf16), so a near tie between two counts can be decided differently.
//        The block context evaluates it where the block's inputs are (BlockContext::kl_errors:
//        on a GPU, the bf16 forward's inputs with fp32 products there; calib/kl_search.h).
//        With fewer than 4 groups there is no candidate (the reference's fasterquant fails on
//        min() of the empty error list, e.g. at 192 columns: one group of 128 and one of 64);
//        every group then gets N bits.
//     c. count = argmin_i (mean over windows of error_i) + 1; the salience is recomputed with
//        the fp32 weight and the GPTQ factor of step 2 (so the damping is percdamp * mean diag
//        on top of the 0.01), and the `count` least salient groups get N-1 bits, the `count`
//        most salient N+1, the rest N (a stable sort; the reference's quicksort breaks ties
//        arbitrarily).
//  2. GPTQ (slim_gptq.py fasterquant): dead inputs (diag 0: none after the SBA edit) get diag 1
//     and a zero weight column; H += damp * mean(diag H) * I; Hinv = upper Cholesky factor of
//     H^{-1}; columns in blocks of g (the group); at each block start the group's quantizer is
//     fitted on the block's current (updated) weights, then the columns are quantized one by
//     one with the GPTQ error feedback, and the block's error is propagated to later columns.
//  3. The quantizer fit (mixed_quantizer.py Quantizer.fit, "SQC"), for b >= 2: per row the
//     min-max range (xmin = min(0, min w), xmax = max(0, max w); both 0 -> -1, +1) is shrunk or
//     widened by p over 101 candidates (1, then 1.002 .. 1.1, then 0.998 .. 0.9, as torch's
//     fp32 linspace spells them); scale = (p xmax - p xmin) / maxq, zero = round(-p xmin / scale);
//     the row keeps the first p with the least sum |Q(w) - w|^2.4, where salient weights (a
//     z-score above 2 of W^2 / Hinv_cc^2 over the block, unbiased std) count lambda times.
//     The `sym` quirk: the reference's quantizer starts symmetric and turns asymmetric at the
//     first group of N or N+1 bits, never back, so with SBA the (N-1)-bit groups before it keep
//     zero = (maxq + 1) / 2 (the scale still from the asymmetric range). With an allocation
//     file every group is asymmetric.
//     b == 1: binarization, mu = mean(w), alpha = mean(|w|) per row over the group (fitted at
//     the block start), w -> sign(w - mu) * alpha + mu.
//
// Stored in the "slim" format (formats/slim_format.h): codes, per-group scales/zeros (alpha, mu
// for binary groups) and the per-group bit widths. #W = N exactly (equal counts at N-1, N+1).
//
// Allocation file (option alloc): JSON object, one entry per linear, the per-group bit widths
// in column order: {"model.layers.0.self_attn.q_proj": [2, 3, 1, ...], ...}. It must name every
// linear of the model exactly once, with ceil(in_features / g) widths in [max(1, N-1), N+1]
// averaging exactly N.
// It replaces SBA as the reference's precomputed group-precision files do.
//
//   spec: slim:w=2,g=128,damp=0.01,lambda=1,alloc=
#pragma once

#include "calib/kl_search.h"
#include "core/dtype.h"
#include "quant/gptq.h"
#include "quant/quantized_linear.h"

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace lowbit {

struct SlimOptions {
  int bits = 2;              // N
  int64_t group_size = 128;
  double damp = 0.01;        // percdamp
  double lambda = 1.0;       // lambda_salience
};

// get_salience's in-place edit of H [cols, cols]: dead diagonal entries -> 1, then diag += 0.01.
void slim_salience_hessian_edit(std::vector<double>& h, int64_t cols);

// S_j = sum_{r, c in group j} sq(W[r, c]) / hinv[c, c]^2 for hinv [cols, cols] row-major (only
// its diagonal is read); sq = W^2 rounded to square_dtype (F32: unrounded).
std::vector<double> slim_group_salience(const float* w, int64_t rows, int64_t cols, const float* hinv,
                                        int64_t group_size, DType square_dtype);

// Per-group widths: the `count` least salient groups N-1, the `count` most salient N+1 (these
// win where the two overlap, as in the reference), the rest N.
std::vector<int> slim_allocate(const std::vector<double>& salience, int64_t count, int bits);

// The search's quantizer (bitsearch.py block_quantize): group [c0, c1) of every row of w
// [rows, cols] to `bits` (>= 2: min-max round to nearest; 1: binarized), dequantized into out
// (same layout).
void slim_search_quantize(const float* w, int64_t rows, int64_t cols, int64_t c0, int64_t c1, int bits, float* out);

// activation_aware_search for one linear: construct once per linear, then errors() per window
// on the host, or kl_search() handed to BlockContext::kl_errors for every window wherever the
// block lives. The search (calib/kl_search.h) starts from every group at N bits; candidate i
// moves the i-th least salient group to N-1 bits and the i-th most salient to N+1, in that order.
class SlimSearch {
 public:
  // w [rows, cols] must outlive the search.
  SlimSearch(const float* w, int64_t rows, int64_t cols, int64_t group_size, int bits, std::vector<double> salience);
  SlimSearch(const SlimSearch&) = delete;
  SlimSearch& operator=(const SlimSearch&) = delete;
  // Candidate counts i = 1 .. ngroups/2 - 1 (none for fewer than 4 groups).
  int64_t candidates() const { return int64_t(search_.candidates.size()); }
  // error_i for i = 1 .. candidates() on one window's inputs x [tokens, cols].
  std::vector<double> errors(const float* x, int64_t tokens) const;
  // The search as calib/kl_search.h describes it; it points into this object and w.
  const KlSearch& kl_search() const { return search_; }

 private:
  std::vector<float> mid_, dlo_, dhi_;     // Q_N, Q_{N-1} - Q_N, Q_{N+1} - Q_N: [rows, cols]
  KlSearch search_;
};

// count = argmin over i of the mean over windows of error_i, plus 1 (the first minimum).
int64_t slim_pick_count(const std::vector<std::vector<double>>& errors_per_window);

// The 101 shrink factors of Quantizer.fit, in search order, as fp32.
const std::vector<float>& slim_shrink_candidates();

struct SlimGroupFit {
  std::vector<float> scale, zero;  // [rows]; binary groups: alpha, mu
  std::vector<int> choice;         // [rows] index into slim_shrink_candidates() (0 for binary)
};
// Quantizer.fit on one block: w1 column-major (w1[j * rows + r], n columns), hinv_diag [n].
SlimGroupFit slim_fit_group(const float* w1, int64_t rows, int64_t n, const float* hinv_diag, int bits, bool sym,
                            double lambda);

struct SlimResult {
  QuantizedLinear q;            // "slim" format
  std::vector<int> group_bits;  // [ngroups]
  std::vector<int> choice;      // [rows * ngroups] the SQC shrink index per row and group
  double loss = 0;
  double damp = 0;
  int64_t dead_columns = 0;
};

// GPTQ with per-group widths. h: the Hessian as the reference holds it at fasterquant (edited by
// slim_salience_hessian_edit on the SBA path). Either group_bits is given (an allocation file:
// every group asymmetric) or it is empty and `count` (from the search) allocates on the fp32
// salience with this Hinv (and the sym quirk applies). factor: where Hinv is made (null:
// gptq_inverse_factor on the host).
SlimResult slim_quantize(const float* w, int64_t rows, int64_t cols, std::vector<double> h, const SlimOptions& opt,
                         std::vector<int> group_bits, int64_t count, DType dtype,
                         const InverseFactorFn& factor = nullptr);

// A parsed allocation file: linear name (without ".weight") -> per-group widths.
std::map<std::string, std::vector<int>> slim_read_allocation(const std::string& path);

}  // namespace lowbit
