// The staged W4A16 kernel (W4A16Kernel::Staged): the structure of Marlin-style kernels for
// 17 to a few hundred rows. Shared-memory layout and thread maps: w4a16_staged_layout.h;
// fragment layouts and dequantization: w4a16_device.cuh.
//
// Why this shape. At M = 64..256 the product stops being bound by the weight bytes (4096 x 4096
// at 4 bits is 8 MiB, 2.5 us of HBM) and becomes bound by tensor-core issue (M = 256 is 8.6
// GFLOP, about 15-20 us of mma.sync on an H100). What counts is then the work per mma:
//  - each dequantized B fragment must serve many rows: a warp owns 64 columns (the layout's
//    chunk: one 16-byte code load per lane and k-step gives its 16 B registers) and WMT m-tiles,
//    so one dequantization (16 registers: lop3 + sub + mul each, ~50 instructions with the
//    shifts) feeds 8 WMT mma; at WMT = 4 that is 32 mma (512 tensor-core cycles of one SM
//    sub-partition at mma.sync rates) against ~70 other instructions per k-step;
//  - A is read from global memory once per block (not once per warp as in W4A16Kernel::Mma,
//    whose A fragments come from L1/L2 per warp and per m-tile), staged by cp.async and read by
//    ldmatrix.x4 (one instruction per m-tile and k-step gives the whole A fragment);
//  - B codes come through the same cp.async ring, so the load latency of both is hidden behind
//    kStages - 1 = 3 stages of mma (each stage is 4 k-steps: 64 slots).
//
// Configurations (WMT m-tiles per warp, WM warps along M; 4 warps along N; 256 columns):
//   rows  WMT WM threads  acc regs  shared memory (4 stages x (A + B 8 KiB + scales 4 KiB))
//    16    1   1   128       32       4 x (2 + 8 + 4) KiB =  56 KiB
//    32    2   1   128       64       4 x (4 + 8 + 4) KiB =  64 KiB
//    64    4   1   128      128       4 x (8 + 8 + 4) KiB =  80 KiB
//   128    4   2   256      128       4 x (16 + 8 + 4) KiB = 112 KiB
// sm_90 has 64K registers and 228 KiB of shared memory per SM. The 64- and 128-row blocks use
// about 250 registers a thread (128 accumulators, 16 A, 16 scale pairs, codes and addresses,
// with the k-steps of a stage unrolled): two 64-row blocks or one 128-row block per SM, 8 warps
// either way; the 16- and 32-row blocks (151 and 167 registers) fit three. The launcher asks the
// runtime (cudaOccupancyMaxActiveBlocksPerMultiprocessor) and picks the row block and the K
// splits with the cost model of w4a16_staged_plan.h. Up to 64 rows one warp holds all of a
// block's m-tiles, so each B fragment is dequantized once per block; at 128 rows the two warp
// rows dequantize it once each (the price of at most 128 accumulators a thread). Each warp reads
// its m-tiles' A fragments from shared memory: rows x 128 bytes per k-step and block, 16 KiB at
// 128 rows, 128 cycles of shared-memory bandwidth against ~512 cycles of the block's 256 mma at
// the SM's dense peak (more at mma.sync's rate).
//
// Rows beyond M read zeros (cp.async's zero fill) and are not stored; k-steps beyond the split's
// end are neither loaded nor multiplied. A block beyond N (a partial last column block) keeps
// its warps in the barriers but skips their mma and stores.
//
// Split K as in W4A16Kernel::Mma: each split writes its fp32 partial sums, the last block of a
// tile to arrive adds all of them in split order (the same bits whichever block comes last).
#include "backend/cuda/w4a16_device.cuh"
#include "backend/cuda/w4a16_staged_layout.h"

#include <algorithm>
#include <string>

namespace lowbit::cuda::w4a16_detail {

namespace {

namespace st = ::lowbit::cuda::staged;

__device__ __forceinline__ unsigned smem_addr(const void* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared, bypassing L1 (.cg). With `valid` false nothing is read and the 16
// bytes are zero-filled (src-size 0).
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid = true) {
  const int n = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src), "r"(n) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

// Blocks per SM the registers are capped for (ptxas of CUDA 13.0 for sm_90a, no spills): one
// 256-thread block at 128 rows (255 registers; 249 used), two 128-thread blocks at 64 rows (255;
// 252 used), three at 16 and 32 rows (170; 151 and 167 used).
template <int WMT, int WM>
__global__ void __launch_bounds__(st::threads(WM), WM == 2 ? 1 : WMT == 4 ? 2 : 3)
    w4a16_staged_kernel(const MmaParams p) {
  constexpr int kThreads = st::threads(WM);
  constexpr int kRows = st::block_rows(WMT, WM);
  constexpr int kAStage = st::a_stage_bytes(kRows);
  constexpr int kACopies = kRows * st::kAUnitsPerRow / kThreads;  // = WMT
  constexpr int kBCopies = st::kBUnits / kThreads;                // = 4 / WM
  static_assert(kACopies * kThreads == kRows * st::kAUnitsPerRow, "A units split evenly over the threads");
  static_assert(kBCopies * kThreads == st::kBUnits, "B units split evenly over the threads");
  static_assert(kThreads % st::kScaleUnitsPerSlot == 0, "whole scale slots per pass");

  extern __shared__ __align__(128) unsigned char smem[];
  unsigned char* const a_ring = smem;
  unsigned char* const b_ring = smem + st::b_ring_offset(kRows);
  unsigned char* const s_ring = smem + st::scale_ring_offset(kRows);

  const int tid = int(threadIdx.x), warp = tid / 32, lane = tid % 32;
  const int g = lane / 4, t = lane % 4;
  const int wn = warp % st::kWarpsN, wr = warp / st::kWarpsN;  // warp column (chunk), warp row
  const int chunk0 = int(blockIdx.x) * st::kBlockChunks;
  const int chunk = chunk0 + wn;
  const bool active = chunk < p.chunks;
  const int split = int(blockIdx.y);
  const int m0 = int(blockIdx.z) * kRows;
  const int kbeg = split * p.steps_per_split;
  const int kend = min(kbeg + p.steps_per_split, p.ksteps);
  const int stages = kbeg < kend ? (kend - kbeg + st::kStageSteps - 1) / st::kStageSteps : 0;
  // m-tiles of this warp holding a row below M (warp-uniform): the others skip their ldmatrix
  // and mma (their rows are neither stored nor published).
  const int live_mt = min(WMT, max(0, (p.M - m0 - wr * WMT * 16 + 15) / 16));

  // One stage's copies: A rows (zeros past M and past the split's end), the code words and the
  // scale words of the groups the stage touches (neither past N nor past the split's end).
  auto load_stage = [&](int stage) {
    const int buf = stage % st::kStages;
    const int step0 = kbeg + stage * st::kStageSteps;
    unsigned char* const a_dst = a_ring + buf * kAStage;
#pragma unroll
    for (int i = 0; i < kACopies; ++i) {
      const st::RowUnit u = st::a_copy_unit(tid + i * kThreads);
      const int row = m0 + u.row;
      const bool valid = row < p.M && step0 + u.unit / 2 < kend;
      const bf16* src = valid ? p.A + int64_t(row) * p.lda + int64_t(step0) * 16 + u.unit * 8 : p.A;
      cp_async16(a_dst + st::a_offset(u.row, u.unit), src, valid);
    }
    unsigned char* const b_dst = b_ring + buf * st::kBStageBytes;
#pragma unroll
    for (int i = 0; i < kBCopies; ++i) {
      const st::BUnit u = st::b_copy_unit(tid + i * kThreads);
      const int c = chunk0 + u.cb, step = step0 + u.kk;
      if (c < p.chunks && step < kend)
        cp_async16(b_dst + st::b_offset(u.cb, u.kk, u.lane), p.codes + (size_t(c) * p.kstride + step) * 32 + u.lane);
    }
    uint32_t* const s_dst = reinterpret_cast<uint32_t*>(s_ring + buf * st::kScaleStageBytes);
    const st::StageGroups grp = st::stage_groups(step0, kend, p.group_steps);
    const st::ScaleUnit su = st::scale_copy_unit(tid % st::kScaleUnitsPerSlot);
    const int c = chunk0 + su.cb;
    for (int slot = tid / st::kScaleUnitsPerSlot; slot < grp.count; slot += kThreads / st::kScaleUnitsPerSlot)
      if (c < p.chunks)
        cp_async16(s_dst + st::scale_word(slot, su.cb, su.word),
                   p.scales + (size_t(c) * p.groups + size_t(grp.first + slot)) * 64 + su.word);
  };

  float acc[WMT][8][4];
#pragma unroll
  for (int mt = 0; mt < WMT; ++mt)
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[mt][j][e] = 0.0f;

  // The ring: stages 0 .. kStages - 2 in flight before the loop; iteration s waits for stage s
  // (at most kStages - 2 younger groups may still be pending: one group is committed per stage
  // and per iteration, empty ones included, so the count is exact), then refills the buffer
  // that iteration s - 1 read (every warp is past it: the __syncthreads) with stage
  // s + kStages - 1, then multiplies stage s.
#pragma unroll
  for (int s = 0; s < st::kStages - 1; ++s) {
    if (s < stages) load_stage(s);
    cp_async_commit();
  }
  int cur_group = -1;
  uint32_t s2[8], c2[8];  // per column tile: (scale, scale) and (128 + zero, 128 + zero)
  for (int s = 0; s < stages; ++s) {
    cp_async_wait<st::kStages - 2>();
    __syncthreads();
    if (s + st::kStages - 1 < stages) load_stage(s + st::kStages - 1);
    cp_async_commit();
    if (!active || live_mt == 0) continue;
    const int buf = s % st::kStages;
    const int step0 = kbeg + s * st::kStageSteps;
    const int first_group = step0 / p.group_steps;
    const unsigned char* const a_src = a_ring + buf * kAStage;
    const unsigned char* const b_src = b_ring + buf * st::kBStageBytes;
    const uint32_t* const s_src = reinterpret_cast<const uint32_t*>(s_ring + buf * st::kScaleStageBytes);
#pragma unroll
    for (int kk = 0; kk < st::kStageSteps; ++kk) {
      const int step = step0 + kk;
      if (step >= kend) break;
      const int grp = step / p.group_steps;
      if (grp != cur_group) {
        const uint4* sv = reinterpret_cast<const uint4*>(s_src + st::scale_word(grp - first_group, wn, g * 8));
        const uint4 lo = sv[0], hi = sv[1];
        const uint32_t words[8] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          s2[j] = scale_pair(words[j]);
          c2[j] = zero_pair(words[j]);
        }
        cur_group = grp;
      }
      uint32_t a[WMT][4];
#pragma unroll
      for (int mt = 0; mt < WMT; ++mt) {
        const st::RowUnit u = st::a_ldmatrix_unit((wr * WMT + mt) * 16, kk, lane);
        if (mt < live_mt) ldmatrix_x4(a[mt], a_src + st::a_offset(u.row, u.unit));
      }
      const uint4 q = *reinterpret_cast<const uint4*>(b_src + st::b_offset(wn, kk, lane));
      const uint32_t words[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
      for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int tile = 2 * j + half;
          const uint32_t b0 = dequant_pair(words[j], 2 * half, c2[tile], s2[tile]);
          const uint32_t b1 = dequant_pair(words[j], 2 * half + 1, c2[tile], s2[tile]);
#pragma unroll
          for (int mt = 0; mt < WMT; ++mt)
            if (mt < live_mt) mma_bf16(acc[mt][tile], a[mt], b0, b1);
        }
    }
  }
  cp_async_wait<0>();  // only empty groups can remain; nothing may be in flight at exit

  if (p.splits == 1) {
    if (!active) return;
#pragma unroll
    for (int mt = 0; mt < WMT; ++mt)
#pragma unroll
      for (int j = 0; j < 8; ++j)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int row = m0 + (wr * WMT + mt) * 16 + g + 8 * h;
          if (row < p.M) store_pair(p, row, chunk * 64 + j * 8 + 2 * t, acc[mt][j][2 * h], acc[mt][j][2 * h + 1]);
        }
    return;
  }

  // Split K: publish this split's sums; the last block of the tile to arrive adds every split's
  // (its own read back too, so that all blocks see the same values) in split order.
  const int64_t np = int64_t(p.chunks) * 64;
  const size_t stride = size_t(p.M) * size_t(np);
  if (active) {
    float* part = p.partial + size_t(split) * stride;
#pragma unroll
    for (int mt = 0; mt < WMT; ++mt)
#pragma unroll
      for (int j = 0; j < 8; ++j)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int row = m0 + (wr * WMT + mt) * 16 + g + 8 * h;
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
  if (active) {
    // Per m-tile, kFold splits' 16 pairs of this thread's fragments per round trip to L2: 32 kFold
    // registers beside the 32 WMT accumulators, within the register caps above (32 to 64 KiB of
    // loads in flight per block: the tail is bound by L2 latency).
    constexpr int kFold = 2;
#pragma unroll
    for (int mt = 0; mt < WMT; ++mt) {
      const int row0 = m0 + (wr * WMT + mt) * 16 + g;
      const float* base = p.partial + int64_t(row0) * np + chunk * 64 + 2 * t;
      for (int sp = 0; sp < p.splits; sp += kFold) {
        float2 v[kFold][8][2];
#pragma unroll
        for (int d = 0; d < kFold; ++d)
#pragma unroll
          for (int j = 0; j < 8; ++j)
#pragma unroll
            for (int h = 0; h < 2; ++h)
              v[d][j][h] = sp + d < p.splits && row0 + 8 * h < p.M
                               ? __ldcg(reinterpret_cast<const float2*>(base + size_t(sp + d) * stride +
                                                                        int64_t(8 * h) * np + j * 8))
                               : make_float2(0.0f, 0.0f);
#pragma unroll
        for (int d = 0; d < kFold; ++d)
#pragma unroll
          for (int j = 0; j < 8; ++j)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
              if (sp + d >= p.splits) continue;
              acc[mt][j][2 * h] = sp + d == 0 ? v[d][j][h].x : acc[mt][j][2 * h] + v[d][j][h].x;
              acc[mt][j][2 * h + 1] = sp + d == 0 ? v[d][j][h].y : acc[mt][j][2 * h + 1] + v[d][j][h].y;
            }
      }
#pragma unroll
      for (int j = 0; j < 8; ++j)
#pragma unroll
        for (int h = 0; h < 2; ++h)
          if (row0 + 8 * h < p.M)
            store_pair(p, row0 + 8 * h, chunk * 64 + j * 8 + 2 * t, acc[mt][j][2 * h], acc[mt][j][2 * h + 1]);
    }
  }
  if (threadIdx.x == 0) *counter = 0u;  // ready for the next call on this workspace
}

template <int WMT, int WM>
const void* kernel_of() {
  return reinterpret_cast<const void*>(&w4a16_staged_kernel<WMT, WM>);
}

// The compiled configurations, by rows per block.
struct Config {
  int rows, threads;
  const void* fn;
};

Config config_of(int block_rows) {
  switch (block_rows) {
    case 16: return {16, st::threads(1), kernel_of<1, 1>()};
    case 32: return {32, st::threads(1), kernel_of<2, 1>()};
    case 64: return {64, st::threads(1), kernel_of<4, 1>()};
    case 128: return {128, st::threads(2), kernel_of<4, 2>()};
    default: throw_error("w4a16 staged kernel: no configuration for " + std::to_string(block_rows) + " rows per block");
  }
}

// Opts the kernel into more than 48 KiB of dynamic shared memory (once per configuration and
// process; one device per process is assumed, as elsewhere in the backend).
void prepare(const Config& c) {
  static bool done[4] = {false, false, false, false};
  const int i = c.rows == 16 ? 0 : c.rows == 32 ? 1 : c.rows == 64 ? 2 : 3;
  if (done[i]) return;
  LB_CUDA_CHECK(cudaFuncSetAttribute(c.fn, cudaFuncAttributeMaxDynamicSharedMemorySize, st::smem_bytes(c.rows)));
  done[i] = true;
}

}  // namespace

int staged_blocks_per_sm(int block_rows) {
  const Config c = config_of(block_rows);
  prepare(c);
  int n = 0;
  LB_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, c.fn, c.threads, size_t(st::smem_bytes(c.rows))));
  return std::max(n, 1);
}

void launch_staged(const MmaParams& p, int block_rows, cudaStream_t s) {
  const Config c = config_of(block_rows);
  prepare(c);
  const int64_t colblocks = (int64_t(p.chunks) + st::kBlockChunks - 1) / st::kBlockChunks;
  const int64_t mblocks = (int64_t(p.M) + c.rows - 1) / c.rows;
  if (mblocks > 65535 || colblocks > int64_t(INT32_MAX) || p.splits > 65535)
    throw_error("w4a16 staged kernel: grid of " + std::to_string(colblocks) + " x " + std::to_string(p.splits) +
                " x " + std::to_string(mblocks) + " blocks is too large");
  const dim3 grid{unsigned(colblocks), unsigned(p.splits), unsigned(mblocks)};
  MmaParams q = p;
  void* args[] = {&q};
  LB_CUDA_CHECK(cudaLaunchKernel(c.fn, grid, dim3(unsigned(c.threads)), args, size_t(st::smem_bytes(c.rows)), s));
}

}  // namespace lowbit::cuda::w4a16_detail
