// W4A16 GEMM: y[M, N] = x[M, K] W^T with W in 4-bit group-quantized tiles (pack/w4_tiles.h,
// layout drawn in pack/w4_tiles_layout.h), bf16 activations and output, fp32 accumulation.
//
// The tensor-core kernel (W4A16Kernel::Mma) streams every weight byte once from global memory
// per 64 rows of x: each warp owns 64 output columns and walks its share of K in 16-deep steps,
// one coalesced 16-byte load per lane and step (prefetched a few steps ahead in registers),
// dequantizes the codes in registers into mma B fragments, and runs mma.sync.m16n8k16 (bf16 in,
// fp32 accumulate). K is split over thread blocks when N alone gives too few of them (batch 1-16
// decode); the partial sums meet in an fp32 workspace and the last block of each column tile
// adds them in a fixed order (results do not depend on block timing) and writes bf16.
//
// From 17 to 128 rows (batched decode, prefill, perplexity windows) Auto runs the staged kernel
// (W4A16Kernel::Staged, w4a16_staged.cu): the structure of Marlin-style kernels, with A tiles and
// code words brought into shared memory by a 4-stage cp.async ring, A fragments read by ldmatrix,
// and each dequantized B fragment multiplied into up to 4 16-row m-tiles of a warp: the weight is
// read once per block of 16 to 128 rows (two warp rows of up to 64) and dequantized once per
// warp row. Rows per block and K splits come from a cost model (w4a16_staged_plan.h).
//
// Beyond 128 rows Auto dequantizes the weight into a bf16 scratch (W4A16Kernel::DequantGemm) and
// runs cuBLAS: the product is then compute-bound, and the scratch costs one bf16 copy of the
// largest linear, not of the model.
//
// The plain kernel (W4A16Kernel::Simple) computes one output per thread on CUDA cores from the
// layout's definition (w4_tiles_layout.h's code_pos / scale_pos) and the slot map: the cross-check.
//
// All paths dequantize w = bf16(bf16(scale) * (code - zero)) and multiply it by the bf16
// activation exactly (a product of two bf16 values is exact in fp32); they differ only in the
// order of the fp32 sums.
#pragma once

#include "backend/cuda/cuda_util.h"

#include <cuda_bf16.h>

#include <cstdint>
#include <string>
#include <vector>

namespace lowbit::cuda {

using bf16 = __nv_bfloat16;  // as in ops.cuh

// A W4Tiles matrix on the device (the fields of pack::W4Tiles, same meaning).
struct W4A16Weight {
  int64_t n = 0, k = 0, group_slots = 0, groups = 0;
  DeviceBuffer<uint32_t> codes;        // [chunks, ksteps, 32, 4]
  DeviceBuffer<uint32_t> scales;       // [chunks, groups, 8, 8]
  DeviceBuffer<int32_t> source_col;    // [padded_k] or empty (identity slot order)
  int64_t padded_n() const { return (n + 63) / 64 * 64; }
  int64_t padded_k() const { return groups * group_slots; }
  int64_t chunks() const { return padded_n() / 64; }
  int64_t ksteps() const { return padded_k() / 16; }
};

// Uploads a packed matrix given by its fields (pack/w4_tiles_cuda.h does it from a W4Tiles).
// Checks that the vectors have the sizes the shape implies; throws lowbit::Error naming `what`.
W4A16Weight upload_w4a16(int64_t n, int64_t k, int64_t group_slots, int64_t groups, const std::vector<uint32_t>& codes,
                         const std::vector<uint32_t>& scales, const std::vector<int32_t>& source_col,
                         const char* what, cudaStream_t s);

// Scratch of w4a16_linear: the gathered activations, the split-K partial sums and the per-tile
// arrival counters (zero between calls; each call leaves them zero). Grows on demand (which
// synchronizes the device); one workspace serves one stream at a time.
struct W4A16Workspace {
  DeviceBuffer<bf16> gathered;   // [M, padded_k]
  DeviceBuffer<float> partial;   // [splits, M, padded_n]
  DeviceBuffer<unsigned> counters;
  DeviceBuffer<bf16> dequantized;  // [N, K or padded_k], DequantGemm only
  // The cuBLAS handle of DequantGemm (null: one created for the process on the current device).
  cublasHandle_t blas = nullptr;
};

// Mma: the register-streaming tensor-core kernel. Staged: the shared-memory pipelined
// tensor-core kernel. DequantGemm: the weight dequantized to bf16 by a kernel, then cuBLAS's
// bf16 GEMM (for large M, where the product is compute-bound). Simple: the plain CUDA-core
// kernel. Auto: Mma up to 16 rows, Staged up to 128, DequantGemm beyond. The environment
// variable LOWBIT_W4A16_KERNEL changes Auto (read once per process; an unknown value is a
// lowbit::Error at the first product): auto, mma, staged (or new), dequant, simple run that
// kernel at every M; old restores Auto's choice before the staged kernel (Mma up to 32 rows,
// DequantGemm beyond).
enum class W4A16Kernel { Auto, Mma, DequantGemm, Simple, Staged };

// The kernel of a name above (auto, mma, staged or new, dequant, simple); throws lowbit::Error
// naming `what` (an option or variable) and the name otherwise.
W4A16Kernel parse_w4a16_kernel(const std::string& name, const char* what);
const char* w4a16_kernel_name(W4A16Kernel k);
// What Auto runs for M rows (LOWBIT_W4A16_KERNEL included).
W4A16Kernel w4a16_auto_kernel(int64_t M);

// C [M, N] (row stride ldc, 0: N) = A [M, K] (row stride lda, 0: K) . W^T. `splits` forces the
// number of K splits of the tensor-core kernels (0: chosen from the shape and the GPU's SM count;
// tests pin it to cover the single-split and the multi-split epilogues). `block_rows` forces the
// staged kernel's rows per block (16, 32, 64 or 128; 0: chosen; any works for any M). Throws
// lowbit::Error on bad strides, a bad block_rows or a weight that was never uploaded.
void w4a16_linear(const W4A16Weight& w, const bf16* A, bf16* C, int64_t M, W4A16Workspace& ws, cudaStream_t s,
                  int64_t lda = 0, int64_t ldc = 0, W4A16Kernel kernel = W4A16Kernel::Auto, int splits = 0,
                  int block_rows = 0);
// C [M, N] (fp32, row stride ldc, 0: N) += A . W^T: the residual add of o_proj and down_proj in
// the epilogue (the sum of the product is rounded to fp32 once, then added).
void w4a16_linear_accumulate(const W4A16Weight& w, const bf16* A, float* C, int64_t M, W4A16Workspace& ws,
                             cudaStream_t s, int64_t lda = 0, int64_t ldc = 0,
                             W4A16Kernel kernel = W4A16Kernel::Auto, int splits = 0, int block_rows = 0);

}  // namespace lowbit::cuda
