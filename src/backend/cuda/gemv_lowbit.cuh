// Low-bit GEMV: y[M, N] = x[M, K] W^T with W in the GEMV layout of pack/gemv_layout.h (2-, 3-,
// 4- or 8-bit int codes with bf16 (scale, zero) per group, or 4-bit codebook codes (NF4) with
// an fp32 absmax per group), bf16 activations and output, fp32 accumulation.
//
// Gemv (batch-small decode, M <= 16 per launch): a weight-streaming kernel on CUDA cores. Each
// warp owns a few output rows (2; 1 for 8-bit codes, whose units take twice the registers); its
// lanes walk the rows' 128-code units (lane l takes units l, l + 32, ...), each with `bits`
// coalesced 16-byte loads of codes (streamed past L1), decode 8 codes (a run of 8 columns, one
// scale word) at a time into fp32 weights, and multiply them by 8 bf16 activations (one 16-byte
// load per row of x, from L1/L2: every warp of the grid reads the same x; the layout interleaves
// runs so that a warp's loads of x touch 4 cache lines, not 32) into per-(row of W, row of x)
// fp32 sums, which a warp shuffle adds up at the end. Compiled for up to 1, 4 and 16 rows of
// x; more rows run in launches of 16 (each streaming the weight again), which Auto leaves to
// DequantGemm.
//
// DequantGemm (M > 16): the weight dequantized into a bf16 scratch [N, padded K] by a kernel that
// decodes exactly as Gemv does, then cuBLAS's bf16 GEMM with fp32 accumulation (the product is
// then compute-bound; the scratch costs one bf16 copy of the largest linear, not of the model).
//
// Both decode w = bf16(bf16(scale) * (code - zero)) or bf16(codebook[code] * absmax) (one fp32
// rounding) and multiply it by the bf16 activation exactly (a product of two bf16 values is exact
// in fp32): they differ from the CPU product of the dequantized weight only in the order of the
// fp32 sums.
#pragma once

#include "backend/cuda/cuda_util.h"
#include "backend/cuda/w4a16.cuh"

#include <cuda_bf16.h>

#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace lowbit::cuda {

// A pack::GemvPacked matrix on the device (the same fields, same meaning).
struct GemvWeight {
  int64_t n = 0, k = 0, group_size = 0;
  int bits = 0;        // 2, 3, 4 or 8
  bool codebook = false;  // codebook kind (else int)
  std::array<float, 16> table{};  // codebook kind: the values
  DeviceBuffer<uint32_t> codes;   // [n, bits, units, 4]
  DeviceBuffer<uint32_t> scales;  // [n, groups]
  int64_t units() const { return (k + 1023) / 1024 * 8; }  // whole tiles of 8 units
  int64_t padded_k() const { return units() * 128; }
  int64_t groups() const { return (padded_k() + group_size - 1) / group_size; }
  size_t bytes() const { return (codes.size() + scales.size()) * 4; }
};

// Uploads a packed matrix given by its fields (pack/gemv_cuda.h does it from a GemvPacked).
// Checks the shape and the vectors' sizes; throws lowbit::Error naming `what`.
GemvWeight upload_gemv(int64_t n, int64_t k, int bits, bool codebook, int64_t group_size,
                       const std::vector<uint32_t>& codes, const std::vector<uint32_t>& scales,
                       const std::array<float, 16>& table, const char* what, cudaStream_t s);

// Gemv: the weight-streaming kernel (at any M, in launches of 16 rows). DequantGemm: bf16 scratch
// + cuBLAS. Auto: Gemv up to kGemvAutoMaxRows rows, DequantGemm beyond (bench_gemv_lowbit on an
// H100 at LLaMA-3-8B's shapes: the GEMV beat dequantize + cuBLAS at M = 1 and 4 for every format
// and shape, and lost at M = 16 for all of them, by 2-5x); the environment variable
// LOWBIT_GEMV_KERNEL (auto, gemv or dequant; read once per process, an unknown value is a
// lowbit::Error at the first product) makes Auto run one kernel at every M.
enum class GemvKernel { Auto, Gemv, DequantGemm };
inline constexpr int64_t kGemvMaxRows = 16;     // rows per launch of the GEMV
inline constexpr int64_t kGemvAutoMaxRows = 4;  // rows up to which Auto runs the GEMV
// What Auto runs for M rows (LOWBIT_GEMV_KERNEL included).
GemvKernel gemv_auto_kernel(int64_t M);

// C [M, N] (row stride ldc, 0: N) = A [M, K] (row stride lda, 0: K) . W^T. The workspace is the
// W4A16 one (its gathered activations, dequantized scratch and cuBLAS handle). Throws
// lowbit::Error on bad strides or a weight that was never uploaded.
void gemv_linear(const GemvWeight& w, const bf16* A, bf16* C, int64_t M, W4A16Workspace& ws, cudaStream_t s,
                 int64_t lda = 0, int64_t ldc = 0, GemvKernel kernel = GemvKernel::Auto);
// C [M, N] (fp32, row stride ldc, 0: N) += A . W^T (the residual add of o_proj and down_proj).
void gemv_linear_accumulate(const GemvWeight& w, const bf16* A, float* C, int64_t M, W4A16Workspace& ws,
                            cudaStream_t s, int64_t lda = 0, int64_t ldc = 0,
                            GemvKernel kernel = GemvKernel::Auto);

}  // namespace lowbit::cuda
