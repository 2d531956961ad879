// The low-bit GEMV kernels of gemv_lowbit.cuh and their dispatch. A lane's loads, decoding and
// sums are gemv_lowbit_lane.h's (which the CPU test runs too); the layout's definition is
// pack/gemv_layout.h's, called with compile-time widths.
#include "backend/cuda/gemv_lowbit.cuh"

#include "backend/cuda/gemv_lowbit_lane.h"
#include "pack/gemv_layout.h"

#include <algorithm>
#include <cstdlib>
#include <string>

namespace lowbit::cuda {

namespace {

namespace gv = ::lowbit::pack::gemv;

constexpr int kWarps = 4;  // warps per block
constexpr int kThreads = kWarps * 32;

struct GemvParams {
  gemv_lane::Params lane;
  bf16* C;    // [M, ldc] or null
  float* Cf;  // [M, ldc] (accumulated into) or null
  int64_t ldc;
  float table[16];
};

// ROWS rows of W per warp, up to MR rows of x (p.lane.M <= MR): each lane's sums
// (gemv_lowbit_lane.h), then the warp's butterfly; lane m writes row m's output.
template <int BITS, bool CB, int MR, int ROWS>
__global__ void __launch_bounds__(kThreads) gemv_kernel(const GemvParams p) {
  __shared__ float table[16];
  if constexpr (CB) {
    if (threadIdx.x < 16) table[threadIdx.x] = p.table[threadIdx.x];
    __syncthreads();
  }
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  const int n0 = (int(blockIdx.x) * kWarps + warp) * ROWS;
  if (n0 >= p.lane.N) return;
  float acc[ROWS][MR];
  gemv_lane::lane_sums<BITS, CB, MR, ROWS>(p.lane, n0, lane, table, acc);
#pragma unroll
  for (int r = 0; r < ROWS; ++r) {
    const int n = n0 + r;
#pragma unroll
    for (int m = 0; m < MR; ++m) {
      float v = acc[r][m];
#pragma unroll
      for (int off = 16; off > 0; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
      if (lane == m && m < p.lane.M && n < p.lane.N) {
        if (p.Cf != nullptr) p.Cf[int64_t(m) * p.ldc + n] += v;
        else p.C[int64_t(m) * p.ldc + n] = __float2bfloat16_rn(v);
      }
    }
  }
}

// out [N, units * 128] bf16 in column order: one thread per (row, unit), decoding as gemv_kernel
// does.
template <int BITS, bool CB>
__global__ void __launch_bounds__(kThreads) gemv_dequant_kernel(const GemvParams p, bf16* out) {
  __shared__ float table[16];
  if constexpr (CB) {
    if (threadIdx.x < 16) table[threadIdx.x] = p.table[threadIdx.x];
    __syncthreads();
  }
  const gemv_lane::Params& q = p.lane;
  const int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= int64_t(q.N) * q.units) return;
  const int n = int(i / q.units), u = int(i % q.units);
  uint32_t w[4 * BITS];
  gemv_lane::load_unit<BITS>(q, n, u, w);
  bf16* row = out + int64_t(n) * q.units * 128;
#pragma unroll
  for (int run = 0; run < 16; ++run) {
    const int c0 = int(gv::run_column(u, run));
    const uint32_t sw = gemv_lane::load_group_scale(q, n, c0);
    uint32_t h[4];
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const __nv_bfloat162 pair =
          __floats2bfloat162_rn(gemv_lane::decode<CB>(gv::unit_code(w, BITS, 8 * run + 2 * e), sw, table),
                                gemv_lane::decode<CB>(gv::unit_code(w, BITS, 8 * run + 2 * e + 1), sw, table));
      h[e] = *reinterpret_cast<const uint32_t*>(&pair);
    }
    *reinterpret_cast<uint4*>(row + c0) = make_uint4(h[0], h[1], h[2], h[3]);
  }
}

// out[m, c] = A[m, c] for c < K, 0 for K <= c < padded_k: rows the kernel can read 16 bytes at
// a time up to the last unit.
__global__ void gemv_pad_kernel(const bf16* A, int64_t lda, int K, int padded_k, int64_t total, bf16* out) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= total) return;
  const int64_t m = i / padded_k;
  const int c = int(i % padded_k);
  out[i] = c < K ? A[m * lda + c] : __float2bfloat16_rn(0.0f);
}

cublasHandle_t own_blas_handle() {
  static cublasHandle_t h = [] {
    cublasHandle_t x = nullptr;
    LB_CUBLAS_CHECK(cublasCreate(&x));
    return x;
  }();
  return h;
}

// Compiled configurations: the four container widths (and 4-bit int, which the W4A16 tiles
// normally run) x up to 1, 4, 16 rows of x (the decode batches that matter; a kernel for 16
// rows runs 2..3 rows at the cost of idle accumulators, 5..15 as 16).
template <int BITS, bool CB>
void launch_gemv(const GemvParams& p, cudaStream_t s) {
  constexpr int rows = BITS == 8 ? 1 : 2;  // 8-bit units take 32 registers a row
  const unsigned blocks = unsigned((p.lane.N + kWarps * rows - 1) / (kWarps * rows));
  if (p.lane.M <= 1) gemv_kernel<BITS, CB, 1, rows><<<blocks, kThreads, 0, s>>>(p);
  else if (p.lane.M <= 4) gemv_kernel<BITS, CB, 4, rows><<<blocks, kThreads, 0, s>>>(p);
  else gemv_kernel<BITS, CB, 16, rows><<<blocks, kThreads, 0, s>>>(p);
  LB_CUDA_LAUNCH_CHECK();
}

template <int BITS, bool CB>
void launch_dequant(const GemvParams& p, bf16* out, cudaStream_t s) {
  const int64_t threads = int64_t(p.lane.N) * p.lane.units;
  gemv_dequant_kernel<BITS, CB><<<unsigned((threads + kThreads - 1) / kThreads), kThreads, 0, s>>>(p, out);
  LB_CUDA_LAUNCH_CHECK();
}

void dispatch_gemv(const GemvWeight& w, const GemvParams& p, cudaStream_t s) {
  if (w.codebook) return launch_gemv<4, true>(p, s);
  switch (w.bits) {
    case 2: return launch_gemv<2, false>(p, s);
    case 3: return launch_gemv<3, false>(p, s);
    case 4: return launch_gemv<4, false>(p, s);
    default: return launch_gemv<8, false>(p, s);
  }
}

void dispatch_dequant(const GemvWeight& w, const GemvParams& p, bf16* out, cudaStream_t s) {
  if (w.codebook) return launch_dequant<4, true>(p, out, s);
  switch (w.bits) {
    case 2: return launch_dequant<2, false>(p, out, s);
    case 3: return launch_dequant<3, false>(p, out, s);
    case 4: return launch_dequant<4, false>(p, out, s);
    default: return launch_dequant<8, false>(p, out, s);
  }
}

GemvParams params_of(const GemvWeight& w) {
  GemvParams p{};
  p.lane.codes = w.codes.get();
  p.lane.scales = w.scales.get();
  p.lane.N = int(w.n);
  p.lane.units = int(w.units());
  p.lane.groups = int(w.groups());
  p.lane.group_size = int(w.group_size);
  p.lane.group_shift = gemv_lane::group_shift_of(int(w.group_size));
  for (int i = 0; i < 16; ++i) p.table[i] = w.table[size_t(i)];
  return p;
}

// LOWBIT_GEMV_KERNEL (read once): auto, gemv or dequant for Auto to run at every M.
GemvKernel kernel_from_env() {
  static const GemvKernel k = [] {
    const char* v = std::getenv("LOWBIT_GEMV_KERNEL");
    if (v == nullptr || *v == '\0' || std::string(v) == "auto") return GemvKernel::Auto;
    if (std::string(v) == "gemv") return GemvKernel::Gemv;
    if (std::string(v) == "dequant") return GemvKernel::DequantGemm;
    throw_error(std::string("LOWBIT_GEMV_KERNEL: unknown low-bit GEMV kernel '") + v + "' (auto, gemv, dequant)");
  }();
  return k;
}

void run(const GemvWeight& w, const bf16* A, bf16* C, float* Cf, int64_t M, W4A16Workspace& ws, cudaStream_t s,
         int64_t lda, int64_t ldc, GemvKernel kernel) {
  if (lda == 0) lda = w.k;
  if (ldc == 0) ldc = w.n;
  if (w.codes.get() == nullptr || w.scales.get() == nullptr)
    throw_error("gemv_linear: the weight was not uploaded (upload_gemv)");
  if (lda < w.k || ldc < w.n || M < 0 || M > int64_t(INT32_MAX) / std::max<int64_t>(w.padded_k(), ldc))
    throw_error("gemv_linear: weight [" + std::to_string(w.n) + ", " + std::to_string(w.k) + "] with M " +
                std::to_string(M) + ", lda " + std::to_string(lda) + ", ldc " + std::to_string(ldc) +
                " (lda >= K, ldc >= N and 0 <= M needed)");
  if (M == 0) return;
  if (kernel == GemvKernel::Auto) kernel = gemv_auto_kernel(M);

  if (kernel == GemvKernel::DequantGemm) {
    const int64_t kp = w.padded_k();
    ws.dequantized.resize(size_t(w.n * kp));
    dispatch_dequant(w, params_of(w), ws.dequantized.get(), s);
    cublasHandle_t h = ws.blas != nullptr ? ws.blas : own_blas_handle();
    LB_CUBLAS_CHECK(cublasSetStream(h, s));
    const float alpha = 1.0f, beta = Cf != nullptr ? 1.0f : 0.0f;
    // Row-major C[M, N] = A[M, K] W[N, K]^T is column-major C^T = W^T A^T (as cuda::linear); the
    // scratch's rows are padded_k long, of which the first K are the weight.
    LB_CUBLAS_CHECK(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, int(w.n), int(M), int(w.k), &alpha,
                                 ws.dequantized.get(), CUDA_R_16BF, int(kp), A, CUDA_R_16BF, int(lda), &beta,
                                 Cf != nullptr ? static_cast<void*>(Cf) : static_cast<void*>(C),
                                 Cf != nullptr ? CUDA_R_32F : CUDA_R_16BF, int(ldc), CUBLAS_COMPUTE_32F,
                                 CUBLAS_GEMM_DEFAULT));
    return;
  }

  // The kernel reads x 16 bytes at a time up to the last unit: in place when the rows allow it,
  // else from a zero-padded copy.
  const bool direct = w.k == w.padded_k() && lda % 8 == 0 && reinterpret_cast<uintptr_t>(A) % 16 == 0;
  const bf16* a = A;
  int64_t a_ld = lda;
  if (!direct) {
    const int64_t total = M * w.padded_k();
    ws.gathered.resize(size_t(total));
    gemv_pad_kernel<<<unsigned((total + 255) / 256), 256, 0, s>>>(A, lda, int(w.k), int(w.padded_k()), total,
                                                                 ws.gathered.get());
    LB_CUDA_LAUNCH_CHECK();
    a = ws.gathered.get();
    a_ld = w.padded_k();
  }
  GemvParams p = params_of(w);
  p.lane.lda = a_ld;
  p.ldc = ldc;
  // Launches of up to 16 rows of x (the kernel's widest configuration).
  for (int64_t m0 = 0; m0 < M; m0 += kGemvMaxRows) {
    p.lane.M = int(std::min<int64_t>(kGemvMaxRows, M - m0));
    p.lane.A = reinterpret_cast<const uint16_t*>(a + m0 * a_ld);
    p.C = C != nullptr ? C + m0 * ldc : nullptr;
    p.Cf = Cf != nullptr ? Cf + m0 * ldc : nullptr;
    dispatch_gemv(w, p, s);
  }
}

}  // namespace

GemvWeight upload_gemv(int64_t n, int64_t k, int bits, bool codebook, int64_t group_size,
                       const std::vector<uint32_t>& codes, const std::vector<uint32_t>& scales,
                       const std::array<float, 16>& table, const char* what, cudaStream_t s) {
  GemvWeight w;
  w.n = n;
  w.k = k;
  w.bits = bits;
  w.codebook = codebook;
  w.group_size = group_size;
  w.table = table;
  const bool shape_ok = n > 0 && k > 0 && gv::valid_bits(bits) && (!codebook || bits == 4) && group_size > 0 &&
                        group_size % gv::kGroupQuantum == 0 && n <= int64_t(INT32_MAX) / 16 &&
                        w.padded_k() <= int64_t(INT32_MAX) / 16;
  if (!shape_ok || int64_t(codes.size()) != n * w.units() * 4 * bits || int64_t(scales.size()) != n * w.groups())
    throw_error(std::string(what) + ": GEMV weight [" + std::to_string(n) + ", " + std::to_string(k) + "] of " +
                std::to_string(bits) + "-bit " + (codebook ? "codebook" : "int") + " codes in groups of " +
                std::to_string(group_size) + " has " + std::to_string(codes.size()) + " code words and " +
                std::to_string(scales.size()) + " scale words; expected 2, 3, 4 or 8 bits (codebook: 4), groups " +
                "a multiple of 32, " + std::to_string(n * w.units() * 4 * bits) + " and " +
                std::to_string(n * w.groups()));
  w.codes.resize(codes.size());
  upload(w.codes.get(), codes.data(), codes.size(), s);
  w.scales.resize(scales.size());
  upload(w.scales.get(), scales.data(), scales.size(), s);
  return w;
}

GemvKernel gemv_auto_kernel(int64_t M) {
  const GemvKernel k = kernel_from_env();
  if (k != GemvKernel::Auto) return k;
  return M <= kGemvAutoMaxRows ? GemvKernel::Gemv : GemvKernel::DequantGemm;
}

void gemv_linear(const GemvWeight& w, const bf16* A, bf16* C, int64_t M, W4A16Workspace& ws, cudaStream_t s,
                 int64_t lda, int64_t ldc, GemvKernel kernel) {
  run(w, A, C, nullptr, M, ws, s, lda, ldc, kernel);
}

void gemv_linear_accumulate(const GemvWeight& w, const bf16* A, float* C, int64_t M, W4A16Workspace& ws,
                            cudaStream_t s, int64_t lda, int64_t ldc, GemvKernel kernel) {
  run(w, A, nullptr, C, M, ws, s, lda, ldc, kernel);
}

}  // namespace lowbit::cuda
