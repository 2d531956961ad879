// gptq: GPTQ (Frantar et al. 2023) as its reference code (IST-DASLab/gptq, gptq.py) defines it.
//
//   - H = 2/N sum X^T X over the calibration windows (BlockContext::collect);
//   - dead inputs (H[j, j] == 0): H[j, j] = 1 and W[:, j] = 0;
//   - act_order: columns processed by descending H[j, j] (a stable sort, ties by index);
//   - damping: H += damp * mean(diag H) * I; when the Cholesky factorization still fails, the
//     damping is multiplied by 10 (or set to 0.01 when it was 0) and the solve retried, up to 4
//     times; the damping used is reported;
//   - Hinv = upper Cholesky factor of H^{-1} (computed in fp64, then used in fp32);
//   - columns in blocks of `block` (128): each column is quantized onto the affine grid
//     (affine_grid.h) of its group, its error e = (w - q) / Hinv[i, i] is propagated to the
//     block's remaining columns, and after the block to all later columns at once (the lazy
//     batch update, one GEMM);
//   - groups: per-channel (g = -1: one grid per row from the whole row, found before dead
//     columns are zeroed, as the reference does), dynamic (a new grid whenever a column index is
//     a multiple of g in processing order, from the not-yet-quantized weights as the reference
//     reads them: the block's in-block updates are not yet applied to them), or static_groups
//     (every group's grid found up front from the original weights, in original column order);
//   - loss = sum (w - q)^2 / Hinv[i, i]^2 / 2 (the reference's reported error).
//
// With act_order and dynamic groups the groups follow processing order, recorded as g_idx.
//
//   spec: gptq:w=4,g=128,sym=0,act_order=0,static_groups=0,damp=0.01,block=128,true_seq=1
#pragma once

#include "formats/llama_tensors.h"
#include "quant/quantized_linear.h"

#include <functional>
#include <optional>
#include <vector>

namespace lowbit {

struct GptqOptions {
  int bits = 4;
  int64_t group_size = 128;  // -1: per output channel
  bool sym = false;
  bool act_order = false;
  bool static_groups = false;
  double damp = 0.01;
  int64_t block = 128;
};

struct GptqResult {
  QuantizedLinear q;
  double loss = 0;
  double damp = 0;            // the relative damping finally used
  int64_t dead_columns = 0;
  double weight_rel_err = -1;  // ||W - Q|| / ||W|| (set by the GPU path, which never holds W on the host)
};

class BlockContext;
struct InputStats;
// GPTQ's solve of W = ctx.weights()[k] ([rows, cols], fp32 host) with the Hessian of `stats` on
// the device of `ctx` where that device has one: on a GPU, gptq_quantize_cuda (gptq_cuda.h: the
// Hessian inverse by cuSOLVER, the columns by a kernel, the lazy batch updates by cuBLAS), reading W
// and H where the context keeps them (its bf16 copy of the block, the device sums of its collect());
// nullopt on the CPU, and in builds without CUDA, where the caller runs gptq_quantize. Same
// options, same decisions.
std::optional<GptqResult> gptq_quantize_on(const BlockContext& ctx, LinearKind k, int64_t rows, int64_t cols,
                                           const InputStats& stats, const GptqOptions& opt, DType dtype);

// GPTQ's column order (the CPU and GPU implementations share it): with act_order, descending
// diag (ties by index), else the identity. diag: H's diagonal, a dead column's counted as 1.
std::vector<int64_t> gptq_column_order(const std::vector<double>& diag, bool act_order);
// GPTQ's output linear: format fields, codes/scales/zeros sized and zeroed, and g_idx when
// act_order (without static groups) reorders the groups. order: gptq_column_order's.
QuantizedLinear gptq_output(int64_t rows, int64_t cols, const GptqOptions& opt, DType dtype,
                            const std::vector<int64_t>& order);

// Hinv = upper Cholesky factor of (H + damp * mean(diag H) * I)^{-1}, [cols, cols] row-major,
// computed in fp64 and returned in fp32, with the escalation described above when the
// factorization fails; *damp_used receives the relative damping finally used.
std::vector<float> gptq_inverse_factor(const std::vector<double>& h, int64_t cols, double damp, double* damp_used);
// The same factor made on the GPU (cuSOLVER, fp64) from the host's h when ctx lives on a GPU;
// nullopt otherwise and in builds without CUDA.
std::optional<std::vector<float>> gptq_inverse_factor_on(const BlockContext& ctx, const std::vector<double>& h,
                                                         int64_t cols, double damp, double* damp_used);
// gptq_inverse_factor's signature, for solves that take their factor from where the block lives.
using InverseFactorFn = std::function<std::vector<float>(const std::vector<double>& h, int64_t cols, double damp,
                                                         double* damp_used)>;
// gptq_inverse_factor_on where it runs, else gptq_inverse_factor.
InverseFactorFn inverse_factor_for(const BlockContext& ctx);

// w: [rows, cols] fp32; h: [cols, cols] fp64 (taken by value: it is modified).
GptqResult gptq_quantize(const float* w, int64_t rows, int64_t cols, std::vector<double> h, const GptqOptions& opt,
                         DType dtype);

}  // namespace lowbit
