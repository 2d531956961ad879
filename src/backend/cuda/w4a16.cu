// The W4A16 kernels of w4a16.cuh except the staged one (w4a16_staged.cu), and the dispatch.
// Fragment layouts and the in-register dequantization are drawn in w4a16_device.cuh.
#include "backend/cuda/w4a16.cuh"

#include "backend/cuda/w4a16_device.cuh"
#include "backend/cuda/w4a16_staged_layout.h"
#include "backend/cuda/w4a16_staged_plan.h"

#include "pack/w4_tiles_layout.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>

namespace lowbit::cuda {

namespace {

namespace w4 = ::lowbit::pack::w4;
using namespace ::lowbit::cuda::w4a16_detail;

constexpr int kWarps = 4;  // warps per block; warp w owns column chunk 4 * blockIdx.x + w
constexpr int kThreads = kWarps * 32;
// Fewest k-steps (of 16) one split of K is given: shorter splits spend more on the epilogue
// and the partial sums than they gain in parallelism.
constexpr int kMinStepsPerSplit = 8;
// Auto's choice by rows: W4A16Kernel::Mma up to kMaxMmaRows, Staged up to kMaxStagedRows,
// DequantGemm beyond. Measured on an H100 at LLaMA-3-8B's five shapes (bench_w4a16, README):
// at M = 16 Mma is the faster on 3 of 5 and on their sum; at M = 64 Staged beats DequantGemm on
// 4 of 5 (Mma takes 2.3 to 8 times cuBLAS's time there: its A fragments come from global memory
// per warp and m-tile), at M = 128 on 3 of 5 and on their sum (1169 against 1450 us), at M = 256
// on none (2532 against 1513 us: the staged kernel's mma.sync issue rate, not its memory
// traffic, bounds it there).
constexpr int64_t kMaxMmaRows = 16;
constexpr int64_t kMaxStagedRows = 128;

// One block: kWarps column chunks x MT 16-row m-tiles x one split of K. U: k-steps per
// iteration, whose code words are loaded one iteration ahead (register double buffering keeps
// 2 U 16-byte loads per lane in flight; U shrinks as the m-tiles' accumulators take registers).
// One m-tile keeps 4 blocks (16 warps) per SM within 128 registers. (A cp.async pipeline through
// shared memory, 3 iterations ahead, measured no faster on an H100: 12.5 against 11.7 us at
// 4096 x 4096, M = 1; 133 against 142 us for the LM head.)
template <int MT, int U>
__global__ void __launch_bounds__(kThreads, MT == 1 ? 4 : 1) w4a16_mma_kernel(const MmaParams p) {
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  const int g = lane / 4, t = lane % 4;
  const int chunk = int(blockIdx.x) * kWarps + warp;
  const int split = int(blockIdx.y);
  const int m0 = int(blockIdx.z) * MT * 16;
  const int kbeg = split * p.steps_per_split;
  const int kend = min(kbeg + p.steps_per_split, p.ksteps);
  const bool active = chunk < p.chunks;

  float acc[MT][8][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[mt][j][e] = 0.0f;

  if (active && kbeg < kend) {
    const uint4* wp = p.codes + size_t(chunk) * size_t(p.kstride) * 32 + lane;
    const uint32_t* sp = p.scales + size_t(chunk) * size_t(p.groups) * 64 + g * 8;
    // This lane's A rows (g and g + 8 of each m-tile); rows past M read as 0.
    const uint32_t* arow[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int row = m0 + mt * 16 + g + 8 * h;
        arow[mt][h] = row < p.M ? reinterpret_cast<const uint32_t*>(p.A + int64_t(row) * p.lda + 2 * t) : nullptr;
      }

    uint4 cur[U], nxt[U];
#pragma unroll
    for (int u = 0; u < U; ++u)
      cur[u] = kbeg + u < kend ? __ldcs(wp + size_t(kbeg + u) * 32) : make_uint4(0u, 0u, 0u, 0u);
    // The scale words of the next iteration's group are loaded with its codes, so that a group
    // boundary exposes no load latency (the launcher aligns splits to groups where a group is a
    // whole number of iterations; elsewhere a step that enters another group loads its words).
    const uint4* sv = reinterpret_cast<const uint4*>(sp);
    int cur_group = -1, nxt_group = kbeg / p.group_steps;
    uint4 sc_nxt[2] = {__ldg(sv + size_t(nxt_group) * 16), __ldg(sv + size_t(nxt_group) * 16 + 1)};
    uint32_t s2[8], c2[8];  // per column tile: (scale, scale) and (128 + zero, 128 + zero)
    auto set_scales = [&](int grp) {
      const bool ready = grp == nxt_group;
      const uint4 lo = ready ? sc_nxt[0] : __ldg(sv + size_t(grp) * 16);
      const uint4 hi = ready ? sc_nxt[1] : __ldg(sv + size_t(grp) * 16 + 1);
      const uint32_t words[8] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        s2[j] = __byte_perm(words[j], 0u, 0x1010);
        c2[j] = __byte_perm(words[j], 0u, 0x3232);
      }
      cur_group = grp;
    };

    for (int ks = kbeg; ks < kend; ks += U) {
#pragma unroll
      for (int u = 0; u < U; ++u)
        nxt[u] = ks + U + u < kend ? __ldcs(wp + size_t(ks + U + u) * 32) : make_uint4(0u, 0u, 0u, 0u);
      // Enter this iteration's group (from the words prefetched last iteration), then prefetch
      // the next iteration's.
      const int g_now = ks / p.group_steps;
      if (g_now != cur_group) set_scales(g_now);
      const int gn = (ks + U) / p.group_steps;
      if (ks + U < kend && gn != cur_group && gn != nxt_group) {
        nxt_group = gn;
        sc_nxt[0] = __ldg(sv + size_t(gn) * 16);
        sc_nxt[1] = __ldg(sv + size_t(gn) * 16 + 1);
      }
      // A fragments of this iteration's steps (two 32-bit words per row: columns 2t.. and 2t+8..).
      uint32_t a[U][MT][4];
#pragma unroll
      for (int u = 0; u < U; ++u)
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          const int off = (ks + u) * 8;  // 16 bf16 per step = 8 words
          const bool in = ks + u < kend;
          a[u][mt][0] = in && arow[mt][0] ? __ldg(arow[mt][0] + off) : 0u;
          a[u][mt][1] = in && arow[mt][1] ? __ldg(arow[mt][1] + off) : 0u;
          a[u][mt][2] = in && arow[mt][0] ? __ldg(arow[mt][0] + off + 4) : 0u;
          a[u][mt][3] = in && arow[mt][1] ? __ldg(arow[mt][1] + off + 4) : 0u;
        }
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int kstep = ks + u;
        if (kstep < kend) {
          const int grp = kstep / p.group_steps;
          if (grp != cur_group) set_scales(grp);  // a group boundary inside the iteration
          const uint32_t words[4] = {cur[u].x, cur[u].y, cur[u].z, cur[u].w};
#pragma unroll
          for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int half = 0; half < 2; ++half) {
              const int tile = 2 * j + half;
              uint32_t b[2];
#pragma unroll
              for (int r = 0; r < 2; ++r) {
                const int pn = 2 * half + r;  // nibble pair: tile 2j + pn / 2, rows + 8 (pn % 2)
                const uint32_t v = lop3_and_or(words[j] >> (4 * pn), 0x000f000fu, 0x43004300u);
                b[r] = as_u32(__hmul2(__hsub2(as_bf2(v), as_bf2(c2[tile])), as_bf2(s2[tile])));
              }
#pragma unroll
              for (int mt = 0; mt < MT; ++mt) mma_bf16(acc[mt][tile], a[u][mt], b[0], b[1]);
            }
        }
      }
#pragma unroll
      for (int u = 0; u < U; ++u) cur[u] = nxt[u];
    }
  }

  if (p.splits == 1) {
    if (!active) return;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int j = 0; j < 8; ++j)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int row = m0 + mt * 16 + g + 8 * h;
          if (row < p.M)
            store_pair(p, row, chunk * 64 + j * 8 + 2 * t, acc[mt][j][2 * h], acc[mt][j][2 * h + 1]);
        }
    return;
  }

  // Split K: publish this block's partial sums, and let the last block of the column tile to
  // arrive add all of them in split order (the same sums whichever block comes last).
  const int64_t np = int64_t(p.chunks) * 64;
  if (active) {
    float* part = p.partial + size_t(split) * size_t(p.M) * size_t(np);
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int j = 0; j < 8; ++j)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int row = m0 + mt * 16 + g + 8 * h;
          if (row < p.M)
            __stcg(reinterpret_cast<float2*>(part + int64_t(row) * np + chunk * 64 + j * 8 + 2 * t),
                   make_float2(acc[mt][j][2 * h], acc[mt][j][2 * h + 1]));
        }
  }
  __threadfence();
  __syncthreads();
  __shared__ bool last;
  unsigned* counter = p.counters + size_t(blockIdx.z) * gridDim.x + blockIdx.x;
  if (threadIdx.x == 0) last = atomicAdd(counter, 1u) == unsigned(p.splits - 1);
  __syncthreads();
  if (!last) return;
  __threadfence();
  // All threads share the tile's (row, column pair) sums, each reading its splits 8 at a time:
  // the reads are L2 round trips, and a chain of them per fragment would dominate small products.
  const int rows = min(MT * 16, p.M - m0);
  const int col0 = int(blockIdx.x) * kWarps * 64;
  const int pairs = min(kWarps * 64, int(np) - col0) / 2;  // columns of active warps only
  const size_t stride = size_t(p.M) * size_t(np);
  for (int e = int(threadIdx.x); e < rows * pairs; e += kThreads) {
    const int row = m0 + e / pairs, col = col0 + 2 * (e % pairs);
    const float* src = p.partial + size_t(row) * size_t(np) + col;
    float2 sum = make_float2(0.0f, 0.0f);
    int sp = 0;
    for (; sp + 8 <= p.splits; sp += 8) {
      float2 v[8];
#pragma unroll
      for (int u = 0; u < 8; ++u) v[u] = __ldcg(reinterpret_cast<const float2*>(src + size_t(sp + u) * stride));
#pragma unroll
      for (int u = 0; u < 8; ++u) {
        sum.x += v[u].x;
        sum.y += v[u].y;
      }
    }
    for (; sp < p.splits; ++sp) {
      const float2 v = __ldcg(reinterpret_cast<const float2*>(src + size_t(sp) * stride));
      sum.x += v.x;
      sum.y += v.y;
    }
    store_pair(p, row, col, sum.x, sum.y);
  }
  if (threadIdx.x == 0) *counter = 0u;  // ready for the next call on this workspace
}

// One output per thread, from the layout's definition: the cross-check of the tensor-core path.
__global__ void w4a16_simple_kernel(const uint32_t* codes, const uint32_t* scales, const int32_t* source_col,
                                    const bf16* A, int64_t lda, bf16* C, float* Cf, int64_t ldc, int N, int K,
                                    int padded_k, int group_slots, int groups, int ksteps) {
  const int n = int(blockIdx.x * blockDim.x + threadIdx.x);
  const int m = int(blockIdx.y);
  if (n >= N) return;
  float acc = 0.0f;
  for (int s = 0; s < padded_k; ++s) {
    const int c = source_col != nullptr ? source_col[s] : (s < K ? s : -1);
    if (c < 0) continue;
    const w4::CodePos pos = w4::code_pos(n, s, ksteps);
    const uint32_t q = (codes[pos.word] >> pos.shift) & 15u;
    const uint32_t sz = scales[w4::scale_pos(n, s / group_slots, groups)];
    const float scale = __uint_as_float(sz << 16);
    const float zero = __uint_as_float(sz & 0xffff0000u) - float(w4::kZeroBias);
    // scale * (q - zero) is exact in fp32 (an 8-bit mantissa times a small integer); one rounding.
    const float w = __bfloat162float(__float2bfloat16_rn(scale * (float(q) - zero)));
    acc = fmaf(__bfloat162float(A[int64_t(m) * lda + c]), w, acc);
  }
  if (Cf != nullptr) Cf[int64_t(m) * ldc + n] += acc;
  else C[int64_t(m) * ldc + n] = __float2bfloat16_rn(acc);
}

// out[m, slot] = A[m, column of the slot] (0 for padding): the activations in slot order.
__global__ void w4a16_gather_kernel(const bf16* A, int64_t lda, const int32_t* source_col, int K, int padded_k,
                                    int64_t total, bf16* out) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= total) return;
  const int64_t m = i / padded_k;
  const int s = int(i % padded_k);
  const int c = source_col != nullptr ? source_col[s] : (s < K ? s : -1);
  out[i] = c >= 0 ? A[m * lda + c] : __float2bfloat16_rn(0.0f);
}

// out[n, slot] (bf16, rows of kcols = 16 ksteps slots, n < N): the weight the other kernels
// compute, for the dequantize-then-cuBLAS path of large M. One warp per (chunk, k-step) reads
// the step's 512 bytes and dequantizes them exactly as the tensor-core kernel does; each lane
// writes its B fragments' bf16 pairs (the 8 lanes of a column meet in 32 contiguous bytes).
__global__ void w4a16_dequant_kernel(const uint4* codes, const uint32_t* scales, bf16* out, int N, int chunks,
                                     int kstride, int ksteps, int group_steps, int groups) {
  const int lane = int(threadIdx.x) % 32, g = lane / 4;
  const int64_t wid = int64_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  if (wid >= int64_t(chunks) * ksteps) return;
  const int chunk = int(wid / ksteps), kstep = int(wid % ksteps);
  const uint4 q = __ldcs(codes + (size_t(chunk) * size_t(kstride) + size_t(kstep)) * 32 + lane);
  const uint4* sv =
      reinterpret_cast<const uint4*>(scales + (size_t(chunk) * size_t(groups) + size_t(kstep / group_steps)) * 64 + g * 8);
  const uint4 lo = __ldg(sv), hi = __ldg(sv + 1);
  const uint32_t sw[8] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
  const uint32_t words[4] = {q.x, q.y, q.z, q.w};
  const int64_t kcols = int64_t(ksteps) * 16;
#pragma unroll
  for (int j = 0; j < 4; ++j)
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int tile = 2 * j + half;
      const uint32_t s2 = __byte_perm(sw[tile], 0u, 0x1010), c2 = __byte_perm(sw[tile], 0u, 0x3232);
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int pn = 2 * half + r;  // rows 2t, 2t+1 (r 0) or 2t+8, 2t+9 (r 1) of the step
        const uint32_t v = lop3_and_or(words[j] >> (4 * pn), 0x000f000fu, 0x43004300u);
        const uint32_t b = as_u32(__hmul2(__hsub2(as_bf2(v), as_bf2(c2)), as_bf2(s2)));
        // The pair's low half is the even slot (odd 0), its high half the next.
        const w4::NibbleCoord at = w4::nibble_coord(chunk, kstep, lane, j, pn, 0);
        if (at.n < N) *reinterpret_cast<uint32_t*>(out + at.n * kcols + at.k) = b;
      }
    }
}

cublasHandle_t own_blas_handle() {
  static cublasHandle_t h = [] {
    cublasHandle_t x = nullptr;
    LB_CUBLAS_CHECK(cublasCreate(&x));
    return x;
  }();
  return h;
}

int sm_count() {
  int dev = 0, n = 0;
  LB_CUDA_CHECK(cudaGetDevice(&dev));
  LB_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev));
  return std::max(n, 1);
}

template <int MT, int U>
void launch_mma(const MmaParams& p, dim3 grid, cudaStream_t s) {
  w4a16_mma_kernel<MT, U><<<grid, kThreads, 0, s>>>(p);
  LB_CUDA_LAUNCH_CHECK();
}

}  // namespace

W4A16Weight upload_w4a16(int64_t n, int64_t k, int64_t group_slots, int64_t groups, const std::vector<uint32_t>& codes,
                         const std::vector<uint32_t>& scales, const std::vector<int32_t>& source_col,
                         const char* what, cudaStream_t s) {
  W4A16Weight w;
  w.n = n;
  w.k = k;
  w.group_slots = group_slots;
  w.groups = groups;
  const bool shape_ok = n > 0 && k > 0 && groups > 0 && group_slots > 0 && group_slots % 16 == 0 &&
                        w.padded_k() >= k && w.padded_n() <= int64_t(INT32_MAX) && w.ksteps() <= int64_t(INT32_MAX);
  if (!shape_ok || int64_t(codes.size()) != w.chunks() * w.ksteps() * 128 ||
      int64_t(scales.size()) != w.chunks() * groups * 64 ||
      !(source_col.empty() || int64_t(source_col.size()) == w.padded_k()))
    throw_error(std::string(what) + ": W4A16 weight [" + std::to_string(n) + ", " + std::to_string(k) + "] with " +
                std::to_string(groups) + " groups of " + std::to_string(group_slots) + " slots has " +
                std::to_string(codes.size()) + " code words, " + std::to_string(scales.size()) + " scale words and " +
                std::to_string(source_col.size()) + " slot entries; expected " +
                std::to_string(w.chunks() * w.ksteps() * 128) + ", " + std::to_string(w.chunks() * groups * 64) +
                " and 0 or " + std::to_string(w.padded_k()));
  w.codes.resize(codes.size());
  upload(w.codes.get(), codes.data(), codes.size(), s);
  w.scales.resize(scales.size());
  upload(w.scales.get(), scales.data(), scales.size(), s);
  if (!source_col.empty()) {
    w.source_col.resize(source_col.size());
    upload(w.source_col.get(), source_col.data(), source_col.size(), s);
  }
  return w;
}

namespace {

// LOWBIT_W4A16_KERNEL (read once): a kernel for Auto to run at every M, or "old" for Auto's
// choice before the staged kernel (Mma up to kMaxMmaRowsOld rows, DequantGemm beyond).
constexpr int64_t kMaxMmaRowsOld = 32;
struct EnvChoice {
  W4A16Kernel kernel = W4A16Kernel::Auto;
  bool old = false;
};

EnvChoice choice_from_env() {
  static const EnvChoice c = [] {
    EnvChoice e;
    const char* v = std::getenv("LOWBIT_W4A16_KERNEL");
    if (v == nullptr || *v == '\0') return e;
    if (std::string(v) == "old") e.old = true;
    else e.kernel = parse_w4a16_kernel(v, "LOWBIT_W4A16_KERNEL");
    return e;
  }();
  return c;
}

W4A16Kernel resolve_kernel(W4A16Kernel k, int64_t M) {
  if (k != W4A16Kernel::Auto) return k;
  const EnvChoice e = choice_from_env();
  if (e.old) return M <= kMaxMmaRowsOld ? W4A16Kernel::Mma : W4A16Kernel::DequantGemm;
  if (e.kernel != W4A16Kernel::Auto) return e.kernel;
  return M <= kMaxMmaRows ? W4A16Kernel::Mma : M <= kMaxStagedRows ? W4A16Kernel::Staged : W4A16Kernel::DequantGemm;
}

// The parameters both tensor-core kernels take; with splits > 1, the workspace's partial sums
// and the `tiles` column tiles' arrival counters (zeroed when first allocated; the last block of
// each tile leaves its counter at 0 again).
MmaParams mma_params(const W4A16Weight& w, const bf16* a, int64_t a_ld, int64_t ksteps, bf16* C, float* Cf,
                     int64_t ldc, int64_t M, int splits, int per, int64_t tiles, W4A16Workspace& ws, cudaStream_t s) {
  MmaParams p{};
  p.codes = reinterpret_cast<const uint4*>(w.codes.get());
  p.scales = w.scales.get();
  p.A = a;
  p.lda = a_ld;
  p.C = C;
  p.Cf = Cf;
  p.ldc = ldc;
  p.M = int(M);
  p.N = int(w.n);
  p.chunks = int(w.chunks());
  p.kstride = int(w.ksteps());
  p.ksteps = int(ksteps);
  p.group_steps = int(w.group_slots / 16);
  p.groups = int(w.groups);
  p.splits = splits;
  p.steps_per_split = per;
  if (splits > 1) {
    ws.partial.resize(size_t(splits) * size_t(M) * size_t(w.padded_n()));
    const size_t need = size_t(tiles);
    if (ws.counters.size() < need) {
      ws.counters.resize(need);
      LB_CUDA_CHECK(cudaMemsetAsync(ws.counters.get(), 0, ws.counters.bytes(), s));
    }
    p.partial = ws.partial.get();
    p.counters = ws.counters.get();
  }
  return p;
}

// The staged kernel on activations a [M, a_ld] in slot order (16-byte aligned rows) with
// `ksteps` k-steps of them.
void run_staged(const W4A16Weight& w, const bf16* a, int64_t a_ld, int64_t ksteps, bf16* C, float* Cf, int64_t ldc,
                int64_t M, W4A16Workspace& ws, cudaStream_t s, int splits, int block_rows) {
  // Rows per block and K splits from the cost model of w4a16_staged_plan.h (either may be forced).
  static const int sms = sm_count();
  static int per_sm[4] = {0, 0, 0, 0};
  const auto blocks_per_sm = [](int rows) {
    int& n = per_sm[rows == 16 ? 0 : rows == 32 ? 1 : rows == 64 ? 2 : 3];
    if (n == 0) n = staged_blocks_per_sm(rows);
    return n;
  };
  const staged::Plan plan = staged::plan(M, w.chunks(), ksteps, sms, blocks_per_sm, splits, block_rows);
  const int rows = plan.rows;
  splits = plan.splits;
  const int per = plan.per;
  const int64_t mblocks = (M + rows - 1) / rows;
  const int64_t colblocks = (w.chunks() + staged::kBlockChunks - 1) / staged::kBlockChunks;

  const MmaParams p = mma_params(w, a, a_ld, ksteps, C, Cf, ldc, M, splits, per, mblocks * colblocks, ws, s);
  launch_staged(p, rows, s);
}

void run(const W4A16Weight& w, const bf16* A, bf16* C, float* Cf, int64_t M, W4A16Workspace& ws, cudaStream_t s,
         int64_t lda, int64_t ldc, W4A16Kernel kernel, int splits, int block_rows) {
  if (lda == 0) lda = w.k;
  if (ldc == 0) ldc = w.n;
  if (w.codes.get() == nullptr || w.scales.get() == nullptr)
    throw_error("w4a16_linear: the weight was not uploaded (upload_w4a16)");
  kernel = resolve_kernel(kernel, M);
  const int64_t max_m = kernel == W4A16Kernel::Simple   ? 65535
                        : kernel == W4A16Kernel::Mma    ? 65535 * 64
                        : kernel == W4A16Kernel::Staged ? 65535 * 128
                                                        : int64_t(INT32_MAX) / std::max<int64_t>(lda, ldc);
  if (lda < w.k || ldc < w.n || M < 0 || M > max_m)
    throw_error("w4a16_linear: weight [" + std::to_string(w.n) + ", " + std::to_string(w.k) + "] with M " +
                std::to_string(M) + ", lda " + std::to_string(lda) + ", ldc " + std::to_string(ldc) +
                " (lda >= K, ldc >= N and 0 <= M <= " + std::to_string(max_m) + " needed)");
  if (!(block_rows == 0 || block_rows == 16 || block_rows == 32 || block_rows == 64 || block_rows == 128))
    throw_error("w4a16_linear: block_rows " + std::to_string(block_rows) + " (0, 16, 32, 64 or 128 needed)");
  if (M == 0) return;
  const int32_t* map = w.source_col.size() ? w.source_col.get() : nullptr;

  if (kernel == W4A16Kernel::Simple) {
    const dim3 grid{unsigned((w.n + 127) / 128), unsigned(M)};
    w4a16_simple_kernel<<<grid, 128, 0, s>>>(w.codes.get(), w.scales.get(), map, A, lda, C, Cf, ldc, int(w.n),
                                             int(w.k), int(w.padded_k()), int(w.group_slots), int(w.groups),
                                             int(w.ksteps()));
    LB_CUDA_LAUNCH_CHECK();
    return;
  }

  // x is read in place when its columns are the slots (and its rows allow 4-byte fragment
  // loads, or the staged kernel's 16-byte copies); else it is gathered into slot order first.
  const int64_t a_align = kernel == W4A16Kernel::Staged ? 16 : 4;  // bytes
  const bool direct = map == nullptr && w.k % 16 == 0 && (lda * 2) % a_align == 0 &&
                      reinterpret_cast<uintptr_t>(A) % uintptr_t(a_align) == 0;
  const bf16* a = A;
  int64_t a_ld = lda, ksteps = w.k / 16;
  if (!direct) {
    const int64_t total = M * w.padded_k();
    ws.gathered.resize(size_t(total));
    w4a16_gather_kernel<<<unsigned((total + 255) / 256), 256, 0, s>>>(A, lda, map, int(w.k), int(w.padded_k()), total,
                                                                      ws.gathered.get());
    LB_CUDA_LAUNCH_CHECK();
    a = ws.gathered.get();
    a_ld = w.padded_k();
    ksteps = w.ksteps();
  }

  if (kernel == W4A16Kernel::DequantGemm) {
    // The whole weight dequantized once into bf16 (in slot order), then cuBLAS: for large M the
    // product is compute-bound and the dequantization's cost is shared by M rows.
    const int64_t kcols = ksteps * 16, warps = w.chunks() * ksteps;
    ws.dequantized.resize(size_t(w.n * kcols));
    w4a16_dequant_kernel<<<unsigned((warps + 3) / 4), 128, 0, s>>>(
        reinterpret_cast<const uint4*>(w.codes.get()), w.scales.get(), ws.dequantized.get(), int(w.n),
        int(w.chunks()), int(w.ksteps()), int(ksteps), int(w.group_slots / 16), int(w.groups));
    LB_CUDA_LAUNCH_CHECK();
    cublasHandle_t h = ws.blas != nullptr ? ws.blas : own_blas_handle();
    LB_CUBLAS_CHECK(cublasSetStream(h, s));
    const float alpha = 1.0f, beta = Cf != nullptr ? 1.0f : 0.0f;
    // Row-major C[M, N] = A[M, K] W[N, K]^T is column-major C^T = W^T A^T (as cuda::linear).
    LB_CUBLAS_CHECK(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, int(w.n), int(M), int(kcols), &alpha,
                                 ws.dequantized.get(), CUDA_R_16BF, int(kcols), a, CUDA_R_16BF, int(a_ld), &beta,
                                 Cf != nullptr ? static_cast<void*>(Cf) : static_cast<void*>(C),
                                 Cf != nullptr ? CUDA_R_32F : CUDA_R_16BF, int(ldc), CUBLAS_COMPUTE_32F,
                                 CUBLAS_GEMM_DEFAULT));
    return;
  }

  if (kernel == W4A16Kernel::Staged) {
    run_staged(w, a, a_ld, ksteps, C, Cf, ldc, M, ws, s, splits, block_rows);
    return;
  }

  // m-tiles per block: the fewest 16-row tiles that hold M, up to 4 (M > 64 takes several
  // blocks along M, each streaming the weights again, mostly from L2).
  const int mt = M <= 16 ? 1 : M <= 32 ? 2 : M <= 48 ? 3 : 4;
  const int64_t mblocks = (M + 16 * mt - 1) / (16 * mt);
  const int64_t colblocks = (w.chunks() + kWarps - 1) / kWarps;
  if (splits <= 0) {
    // Enough blocks for about 4 per SM; no split shorter than kMinStepsPerSplit k-steps; and at
    // most 128 / M splits: the last block of a column tile reads splits x M x 256 partial sums,
    // and on an H100 that cost about 0.03 us per (row x split) at 4096 x 4096 (M = 16 with 32
    // splits took 27.6 us against 11.7 at M = 1).
    static const int sms = sm_count();
    // (Rounded down: one wave of resident blocks, no short second wave.)
    const int64_t want = std::max<int64_t>(1, 4 * int64_t(sms) / (colblocks * mblocks));
    const int64_t by_length = std::max<int64_t>(1, ksteps / kMinStepsPerSplit);
    const int64_t by_traffic = std::max<int64_t>(1, 128 / M);
    splits = int(std::clamp<int64_t>(std::min({want, by_length, by_traffic}), 1, 65535));
  }
  splits = int(std::clamp<int64_t>(splits, 1, std::min<int64_t>(ksteps, 65535)));
  // Splits start on an iteration (and, where a group is a whole number of iterations, on a
  // group: see the kernel's scale prefetch).
  const int u_steps = mt <= 2 ? 4 : 2;
  const int64_t gsteps = w.group_slots / 16;
  const int64_t align = gsteps % u_steps == 0 ? gsteps : u_steps;
  int per = int((ksteps + splits - 1) / splits);
  per = int((per + align - 1) / align * align);
  splits = int((ksteps + per - 1) / per);  // no empty split

  const MmaParams p = mma_params(w, a, a_ld, ksteps, C, Cf, ldc, M, splits, per, mblocks * colblocks, ws, s);
  const dim3 grid{unsigned(colblocks), unsigned(splits), unsigned(mblocks)};
  // Compiled configurations: 1-4 m-tiles; 4 k-steps per iteration for up to 2 m-tiles, 2 beyond
  // (the 3-4 m-tile accumulators take the registers).
  switch (mt) {
    case 1: launch_mma<1, 4>(p, grid, s); break;
    case 2: launch_mma<2, 4>(p, grid, s); break;
    case 3: launch_mma<3, 2>(p, grid, s); break;
    default: launch_mma<4, 2>(p, grid, s); break;
  }
}

}  // namespace

W4A16Kernel parse_w4a16_kernel(const std::string& name, const char* what) {
  if (name == "auto") return W4A16Kernel::Auto;
  if (name == "mma") return W4A16Kernel::Mma;
  if (name == "staged" || name == "new") return W4A16Kernel::Staged;
  if (name == "dequant") return W4A16Kernel::DequantGemm;
  if (name == "simple") return W4A16Kernel::Simple;
  throw_error(std::string(what) + ": unknown W4A16 kernel '" + name + "' (auto, mma, staged or new, dequant, simple" +
              (std::string(what) == "LOWBIT_W4A16_KERNEL" ? ", old)" : ")"));
}

const char* w4a16_kernel_name(W4A16Kernel k) {
  switch (k) {
    case W4A16Kernel::Auto: return "auto";
    case W4A16Kernel::Mma: return "mma";
    case W4A16Kernel::Staged: return "staged";
    case W4A16Kernel::DequantGemm: return "dequant";
    case W4A16Kernel::Simple: return "simple";
  }
  return "?";
}

W4A16Kernel w4a16_auto_kernel(int64_t M) { return resolve_kernel(W4A16Kernel::Auto, M); }

void w4a16_linear(const W4A16Weight& w, const bf16* A, bf16* C, int64_t M, W4A16Workspace& ws, cudaStream_t s,
                  int64_t lda, int64_t ldc, W4A16Kernel kernel, int splits, int block_rows) {
  run(w, A, C, nullptr, M, ws, s, lda, ldc, kernel, splits, block_rows);
}

void w4a16_linear_accumulate(const W4A16Weight& w, const bf16* A, float* C, int64_t M, W4A16Workspace& ws,
                             cudaStream_t s, int64_t lda, int64_t ldc, W4A16Kernel kernel, int splits,
                             int block_rows) {
  run(w, A, nullptr, C, M, ws, s, lda, ldc, kernel, splits, block_rows);
}

}  // namespace lowbit::cuda
