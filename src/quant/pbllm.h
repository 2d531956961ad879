// pbllm: PB-LLM's post-training variant GPTQ-PB (hahnyuan/PB-LLM, gptq_pb/), as its code runs:
// LowHighGPT.fasterquant with LowQuantizer "xnor" and an asymmetric per-row HighQuantizer.
//
// Per linear, W [rows, cols] in fp32:
//   1. the salient weights' grid, per row over the whole row of the original W (before dead
//      columns are zeroed; the group size does not apply): xmin = min(0, min w), xmax =
//      max(0, max w), -1/+1 when both are 0, scale = (xmax - xmin) / (2^high_bit - 1),
//      zero = round(-xmin / scale) (affine_grid.h);
//   2. dead inputs zeroed, U = upper Cholesky factor of the damped H^{-1} (obs_hinv.h);
//   3. per column group of g columns, on W as it stands after step 2 (never updated later):
//      score = W^2 / U[j, j]^2 (metric hessian) or |W| (magnitude) over the [rows, g] slice, all
//      rows together; thr = the value at index int(numel * low_frac) of the ascending scores;
//      binarized = score <= thr (so slightly more than low_frac: ties, plus the threshold itself);
//   4. per group and row, the binarizer's mean and scale from the slice with its salient entries
//      set to 0, not left out: mu = mean over all g columns of W * mask, alpha = mean over all g
//      columns of |W * mask - mu| (torch's fp32 sums, reference_numerics.h). Fixed before the
//      GPTQ updates, never recomputed;
//   5. GPTQ over blocks of `block` columns with in-block and lazy between-block updates: each
//      column's binarized weights become sign(w - mu) * alpha + mu (sign(0) = 0 leaves mu), its
//      salient ones scale * (clamp(round(w / scale) + zero, 0, maxq) - zero), with w the updated
//      weight; err = (w - q) / U[i, i] goes to the later columns;
//   6. the result is written back in the model's dtype.
// The reference's loss sum (w - q)^2 / U[i, i]^2 / 2 is reported.
//
// Hessians: one collect() of all seven linears of the block with its unquantized weights (the
// reference's hooks), then the seven are quantized; the block's quantized outputs feed the next.
//
// #W (the study's tables): low_frac * 1 + (1 - low_frac) * high_bit, 1.7 at 0.9 / 8. The study's
// "2-bit" row's setting is unpublished; 1 + 7r = 2 gives low_frac = 6/7 at 8 bits.
//
//   spec: pbllm:low_frac=0.9,high_bit=8,metric=hessian,g=128,damp=0.01,block=128
#pragma once

#include "quant/affine_grid.h"
#include "quant/obs_hinv.h"
#include "quant/quantized_linear.h"

#include <optional>
#include <vector>

namespace lowbit {

struct PbllmOptions {
  double low_frac = 0.9;
  int high_bit = 8;
  bool hessian_metric = true;
  int64_t group_size = 128;
  double damp = 0.01;
  int64_t block = 128;
};

struct PbllmResult {
  QuantizedLinear q;         // format "pbllm" (formats/pbllm_format.h)
  std::vector<float> w;      // [rows, cols] the fp32 weight the reference writes back
  std::vector<uint8_t> mask;  // [rows, cols] 1 = binarized
  double loss = 0;
  double damp = 0;
  int64_t dead_columns = 0;
  int64_t binarized = 0;
};

// w: [rows, cols] fp32 (the original weight); hinv: from obs_hinv on this weight's Hessian.
PbllmResult pbllm_quantize(const float* w, int64_t rows, int64_t cols, const ObsHinv& hinv, const PbllmOptions& opt,
                           DType dtype);

class BlockContext;
struct InputStats;
// pbllm_quantize of w = ctx.weights()[k] ([rows, cols]) with the Hessian of `stats` on the device of
// `ctx` where that device has one: on a GPU (pbllm_cuda.cpp), the inverse factor from the context's
// device Hessian and the column loop (step 5) by a kernel and cuBLAS, with steps 1, 3-4
// (pbllm_plan) on the host; nullopt on the CPU and in builds without CUDA, where the caller runs
// pbllm_quantize. Same decisions; the lazy batch products sum in another order.
std::optional<PbllmResult> pbllm_quantize_on(const BlockContext& ctx, const float* w, int64_t rows, int64_t cols,
                                             const InputStats& stats, const PbllmOptions& opt, DType dtype);

// The parts pbllm_quantize and the GPU path share.
// Steps 1, 3-4: the salient grid per row, the masks and the binarizers' mu and alpha, from the
// original weight (dead columns read as 0) and the inverse factor's diagonal u_diag [cols].
struct PbllmPlan {
  std::vector<AffineParams> high;  // [rows]
  std::vector<uint8_t> mask;       // [rows, cols] 1 = binarized
  std::vector<float> mu, alpha;    // [rows, cols / group_size]
};
PbllmPlan pbllm_plan(const float* w, int64_t rows, int64_t cols, const float* u_diag, const std::vector<uint8_t>& dead,
                     const PbllmOptions& opt);
// Step 5's outcome, [rows, cols] each.
struct PbllmColumns {
  std::vector<uint8_t> sign, code, at_mean;
  std::vector<float> w;  // the quantized values
  double loss = 0;       // sum of (w - q)^2 / U[i, i]^2
};
// The result and its stored form.
PbllmResult pbllm_result(PbllmPlan plan, PbllmColumns out, int64_t rows, int64_t cols, const PbllmOptions& opt,
                         DType dtype, double damp, int64_t dead_columns);
// Throws unless the options and the column count fit together.
void pbllm_check(int64_t cols, const PbllmOptions& opt);

}  // namespace lowbit
