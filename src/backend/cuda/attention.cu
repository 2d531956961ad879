// Causal GQA attention, FlashAttention-2 style: the scores are never materialized. One thread
// block per (128 queries, head, sequence); each of its 4 warps owns 32 query rows (two 16-row
// m-tiles) and walks the key tiles (64 keys) the rows can see, keeping a running row max and sum
// (online softmax) and the output accumulator in registers. Both products run on tensor cores
// through mma.sync.m16n8k16 (bf16 in, fp32 accumulate). Two m-tiles per warp share every K and V
// fragment a warp loads from shared memory, which halves the shared-memory reads per product
// against one m-tile (shared-memory bandwidth, not the tensor cores, bounds the one-tile form).
//
// Fragment layouts of mma.m16n8k16 (PTX ISA), lane = 4 * g + t (g = 0..7, t = 0..3):
//   A 16x16 row-major, 4 regs of 2 bf16: {A[g][2t..2t+1]}, {A[g+8][2t..]}, {A[g][2t+8..]}, {A[g+8][2t+8..]}
//   B 16x8 (k x n), 2 regs:             {B[2t..2t+1][g]}, {B[2t+8..2t+9][g]}
//   C 16x8 fp32, 4 values:              C[g][2t], C[g][2t+1], C[g+8][2t], C[g+8][2t+1]
// so the S = Q K^T accumulators of two adjacent 8-key tiles are, element for element, the A
// fragment of P for the next product P V (no trip through shared memory). Q, K and V sit in
// shared memory as [row][hd]: Q's A fragments and K's B fragments (two consecutive hd values of
// one key) come through ldmatrix, V's B fragments (two consecutive keys of one hd) through
// ldmatrix.trans.
//
// The tensor-core kernel is compiled for head dims 64 and 128, which the LLaMA family uses
// (testbed-44m 64, LLaMA-2/3 128); other head dims take a plain kernel (attention_generic_kernel).
// On Hopper, head dim 128 runs the wgmma kernel of namespace sm90 instead (same blocking and
// online softmax, products on the warpgroup-wide instructions).
#include "backend/cuda/ops.cuh"

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <string>

namespace lowbit::cuda {

namespace {

constexpr int kWarps = 4;
constexpr int kMTiles = 2;                      // 16-row m-tiles per warp
constexpr int kBlockM = kWarps * kMTiles * 16;  // queries per block
constexpr int kBlockN = 64;                     // keys per tile

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// 2^x on the special-function unit (flushes denormal results to zero; 2^-inf = 0).
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
  const uint32_t dst = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  const int n = valid ? 16 : 0;  // 0: the 16 bytes are zero-filled
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem), "r"(n));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}
// Four 8x8 bf16 matrices: lane l gives the address of row (l & 7) of matrix l >> 3.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* smem) {
  const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}
// The same, transposed.
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* smem) {
  const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}

// A thread block's share of the attention: its query tile, head, sequence, the keys it can see
// (up to its last query's position) and where its q, k and v rows start. The longest query tiles
// (the last ones, under the causal mask) start first, over all heads and sequences: grid
// (heads, sequences, query tiles), tiles counted down.
struct BlockTask {
  int q0, head, b, keys_total, ntiles;
  const bf16 *qb, *kb, *vb;
};
template <int BM, int BN, int HD>
__device__ __forceinline__ BlockTask block_task(const bf16* q, const bf16* k, const bf16* v, int T, int past, int nh,
                                                int nkv, int64_t ldq, int64_t ldk) {
  BlockTask bt;
  bt.q0 = (gridDim.z - 1 - blockIdx.z) * BM, bt.head = blockIdx.x, bt.b = blockIdx.y;
  const int kvh = bt.head / (nh / nkv);
  bt.keys_total = past + T;
  bt.qb = q + int64_t(bt.b) * T * ldq + int64_t(bt.head) * HD;
  bt.kb = k + int64_t(bt.b) * bt.keys_total * ldk + int64_t(kvh) * HD;
  bt.vb = v + int64_t(bt.b) * bt.keys_total * ldk + int64_t(kvh) * HD;
  const int last_key = min(bt.keys_total - 1, past + min(bt.q0 + BM, T) - 1);
  bt.ntiles = last_key / BN + 1;
  return bt;
}

// rotate_half RoPE on two adjacent pairs (a[i], b[i]) of a Q row in shared memory, fp32 from bf16,
// rounded to bf16 as the rope kernel does; c, sn: the angles' cos and sin.
__device__ __forceinline__ void rope_pairs(__nv_bfloat162* a, __nv_bfloat162* b, float2 c, float2 sn) {
  const float2 av = __bfloat1622float2(*a), bv = __bfloat1622float2(*b);
  *a = __floats2bfloat162_rn(av.x * c.x - bv.x * sn.x, av.y * c.y - bv.y * sn.y);
  *b = __floats2bfloat162_rn(bv.x * c.x + av.x * sn.x, bv.y * c.y + av.y * sn.y);
}

// Online softmax over one key tile of a 16-row m-tile's S accumulators, in the m16n8k16 C layout
// (also a wgmma accumulator's, per warp): NT 8-key tiles, s[j][0..1] row g and s[j][2..3] row
// g + 8, keys key0 + 8j + 2t + (0, 1). In log2 units (scale_log2 folds 1/sqrt(hd) and log2 e).
// With `masked`, keys after a row's position (pos_lo, pos_hi) become -inf; the row max is taken
// on the raw scores, P = 2^(S scale - m) overwrites S, the row sums l (per lane; combined across
// the quad at the end) and maxima m are updated, and the factors the output rows must be
// multiplied by are returned (x: row g, y: row g + 8). Maxima and sums are trees, not chains.
// Every row sees key 0 in the first tile, so m is finite from then on (a row wholly masked in a
// later tile keeps its max: alpha = 1, P = 0).
template <int NT>
__device__ __forceinline__ float2 online_softmax_tile(float (&s)[NT][4], int key0, int t, int pos_lo, int pos_hi,
                                                      bool masked, float scale_log2, float& m_lo, float& m_hi,
                                                      float& l_lo, float& l_hi) {
  if (masked) {
#pragma unroll
    for (int j = 0; j < NT; ++j) {
      const int c = key0 + j * 8 + 2 * t;
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        if (c + e > pos_lo) s[j][e] = -INFINITY;
        if (c + e > pos_hi) s[j][2 + e] = -INFINITY;
      }
    }
  }
  float t_lo[NT], t_hi[NT];
#pragma unroll
  for (int j = 0; j < NT; ++j) {
    t_lo[j] = fmaxf(s[j][0], s[j][1]);
    t_hi[j] = fmaxf(s[j][2], s[j][3]);
  }
#pragma unroll
  for (int w = NT / 2; w > 0; w /= 2)
#pragma unroll
    for (int j = 0; j < w; ++j) {
      t_lo[j] = fmaxf(t_lo[j], t_lo[j + w]);
      t_hi[j] = fmaxf(t_hi[j], t_hi[j + w]);
    }
  float mx_lo = t_lo[0], mx_hi = t_hi[0];
  mx_lo = fmaxf(mx_lo, __shfl_xor_sync(0xffffffffu, mx_lo, 1));
  mx_lo = fmaxf(mx_lo, __shfl_xor_sync(0xffffffffu, mx_lo, 2));
  mx_hi = fmaxf(mx_hi, __shfl_xor_sync(0xffffffffu, mx_hi, 1));
  mx_hi = fmaxf(mx_hi, __shfl_xor_sync(0xffffffffu, mx_hi, 2));
  const float new_lo = fmaxf(m_lo, mx_lo * scale_log2), new_hi = fmaxf(m_hi, mx_hi * scale_log2);
  const float2 alpha = make_float2(fast_exp2(m_lo - new_lo), fast_exp2(m_hi - new_hi));
  m_lo = new_lo;
  m_hi = new_hi;
#pragma unroll
  for (int j = 0; j < NT; ++j) {
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      s[j][e] = fast_exp2(fmaf(s[j][e], scale_log2, -new_lo));
      s[j][2 + e] = fast_exp2(fmaf(s[j][2 + e], scale_log2, -new_hi));
    }
    t_lo[j] = s[j][0] + s[j][1];
    t_hi[j] = s[j][2] + s[j][3];
  }
#pragma unroll
  for (int w = NT / 2; w > 0; w /= 2)
#pragma unroll
    for (int j = 0; j < w; ++j) {
      t_lo[j] += t_lo[j + w];
      t_hi[j] += t_hi[j + w];
    }
  l_lo = l_lo * alpha.x + t_lo[0];
  l_hi = l_hi * alpha.y + t_hi[0];
  return alpha;
}

// O *= alpha per row (the accumulator layout of online_softmax_tile), unless no row of the warp
// raised its max (alpha = 1 exactly), which grows common as the rows see more keys.
template <int OT>
__device__ __forceinline__ void rescale_rows(float (&o)[OT][4], float2 alpha) {
  if (!__any_sync(0xffffffffu, alpha.x != 1.0f || alpha.y != 1.0f)) return;
#pragma unroll
  for (int j = 0; j < OT; ++j) {
    o[j][0] *= alpha.x;
    o[j][1] *= alpha.x;
    o[j][2] *= alpha.y;
    o[j][3] *= alpha.y;
  }
}

// The m16n8k16 A fragment of P for keys 16kk .. 16kk + 15, from the accumulators of 8-key tiles
// 2kk and 2kk + 1 (element for element the A layout: no trip through shared memory).
template <int NT>
__device__ __forceinline__ void p_fragment(const float (&s)[NT][4], int kk, uint32_t (&a)[4]) {
  a[0] = pack_bf16(s[2 * kk][0], s[2 * kk][1]);
  a[1] = pack_bf16(s[2 * kk][2], s[2 * kk][3]);
  a[2] = pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]);
  a[3] = pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3]);
}

// The output rows g and g + 8 of a 16-row m-tile (rows r_lo, r_lo + 8 below T), divided by the
// row sums (per-lane partials, combined across the quad here).
template <int OT>
__device__ __forceinline__ void store_rows(bf16* ob, int64_t ldo, int T, int r_lo, int t, const float (&o)[OT][4],
                                           float l_lo, float l_hi) {
  l_lo += __shfl_xor_sync(0xffffffffu, l_lo, 1);
  l_lo += __shfl_xor_sync(0xffffffffu, l_lo, 2);
  l_hi += __shfl_xor_sync(0xffffffffu, l_hi, 1);
  l_hi += __shfl_xor_sync(0xffffffffu, l_hi, 2);
  const float inv_lo = 1.0f / l_lo, inv_hi = 1.0f / l_hi;
  const int r_hi = r_lo + 8;
#pragma unroll
  for (int j = 0; j < OT; ++j) {
    const int c = j * 8 + 2 * t;
    if (r_lo < T)
      *reinterpret_cast<uint32_t*>(ob + int64_t(r_lo) * ldo + c) = pack_bf16(o[j][0] * inv_lo, o[j][1] * inv_lo);
    if (r_hi < T)
      *reinterpret_cast<uint32_t*>(ob + int64_t(r_hi) * ldo + c) = pack_bf16(o[j][2] * inv_hi, o[j][3] * inv_hi);
  }
}

// RoPE on the block's Q tile in shared memory (rotate_half, fp32 from bf16, rounded to bf16 as
// the rope kernel does): pairs (i, i + HD/2) of each row below T, two adjacent i per step. Not
// inlined: it runs once per block, and kept apart it leaves the main loop all the registers.
template <int HD>
__device__ __noinline__ void rope_q_tile(bf16* qs, int q0, int T, int past, const float* __restrict__ rope_cos,
                                         const float* __restrict__ rope_sin) {
  constexpr int kHalf = HD / 2, kStride = HD + 8;
  for (int idx = threadIdx.x; idx < kBlockM * kHalf / 2; idx += blockDim.x) {
    const int r = idx / (kHalf / 2), i = (idx % (kHalf / 2)) * 2;
    if (q0 + r >= T) continue;
    const int64_t pos = int64_t(past + q0 + r) * kHalf + i;
    const float2 c = *reinterpret_cast<const float2*>(rope_cos + pos);
    const float2 sn = *reinterpret_cast<const float2*>(rope_sin + pos);
    rope_pairs(reinterpret_cast<__nv_bfloat162*>(qs + r * kStride + i),
               reinterpret_cast<__nv_bfloat162*>(qs + r * kStride + i + kHalf), c, sn);
  }
}

// Rows of the Q, K and V tiles are padded by 8 bf16, so that the 8 rows one ldmatrix matrix
// touches fall on distinct banks.
template <int HD>
constexpr int flash_smem_bytes() {
  return (kBlockM + 2 * 2 * kBlockN) * (HD + 8) * int(sizeof(bf16));  // Q; K and V double-buffered
}

// K and V tiles are double-buffered: cp.async brings tile i+1 while tile i is multiplied.
template <int HD>
__global__ void __launch_bounds__(kWarps * 32) flash_attention_kernel(const bf16* __restrict__ q,
                                                                      const bf16* __restrict__ k,
                                                                      const bf16* __restrict__ v, bf16* __restrict__ out,
                                                                      int T, int past, int nh, int nkv, int64_t ldq,
                                                                      int64_t ldk, int64_t ldo, float scale_log2,
                                                                      const float* __restrict__ rope_cos,
                                                                      const float* __restrict__ rope_sin,
                                                                      const int32_t* __restrict__ past_dev) {
  if (past_dev != nullptr) past = *past_dev;
  constexpr int KS = HD / 16;        // k-steps of Q K^T
  constexpr int NT = kBlockN / 8;    // 8-key tiles per key tile
  constexpr int OT = HD / 8;         // 8-wide output tiles
  constexpr int kStride = HD + 8;    // padded row of a Q, K or V tile (bf16)
  constexpr int kTile = kBlockN * kStride;
  constexpr int kRowChunks = HD / 8;  // 16-byte chunks per row
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* qs = reinterpret_cast<bf16*>(smem_raw);  // [kBlockM][kStride]
  bf16* ks = qs + kBlockM * kStride;              // [2][kBlockN][kStride]
  bf16* vs = ks + 2 * kTile;                      // [2][kBlockN][kStride]

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const BlockTask bt = block_task<kBlockM, kBlockN, HD>(q, k, v, T, past, nh, nkv, ldq, ldk);
  const int q0 = bt.q0, keys_total = bt.keys_total, ntiles = bt.ntiles;
  const bf16 *qb = bt.qb, *kb = bt.kb, *vb = bt.vb;
  // Each thread copies the same 16-byte column chunk c8 of rows r0, r0 + R, r0 + 2R, ... of
  // every tile (R = threads / chunks per row), so its addresses advance by constant strides.
  constexpr int kRowsPerPass = kWarps * 32 / kRowChunks;
  const int r0 = threadIdx.x / kRowChunks, c8 = (threadIdx.x % kRowChunks) * 8;
  const bf16* kp = kb + int64_t(r0) * ldk + c8;
  const bf16* vp = vb + int64_t(r0) * ldk + c8;
  const int64_t pass_stride = int64_t(kRowsPerPass) * ldk;
  auto load_tile = [&](int tile, int buf) {
    const int key0 = tile * kBlockN;
    bf16* kd = ks + buf * kTile + r0 * kStride + c8;
    bf16* vd = vs + buf * kTile + r0 * kStride + c8;
    const int64_t tile_off = int64_t(key0) * ldk;
#pragma unroll
    for (int i = 0; i < kBlockN / kRowsPerPass; ++i) {
      const bool valid = key0 + r0 + i * kRowsPerPass < keys_total;  // else zero-filled from key 0's address
      const int64_t off = tile_off + i * pass_stride;
      cp_async16(kd + i * kRowsPerPass * kStride, valid ? kp + off : kb, valid);
      cp_async16(vd + i * kRowsPerPass * kStride, valid ? vp + off : vb, valid);
    }
    cp_async_commit();
  };
  // Q (rows past T read as zeros), then the first K and V tile.
#pragma unroll
  for (int i = 0; i < kBlockM / kRowsPerPass; ++i) {
    const int row = q0 + r0 + i * kRowsPerPass;
    const bool valid = row < T;
    cp_async16(qs + (r0 + i * kRowsPerPass) * kStride + c8, qb + int64_t(valid ? row : 0) * ldq + c8, valid);
  }
  cp_async_commit();
  load_tile(0, 0);
  if (rope_cos != nullptr) {
    cp_async_wait<1>();  // Q has landed
    __syncthreads();
    rope_q_tile<HD>(qs, q0, T, past, rope_cos, rope_sin);
    // The loop's first barrier orders these writes before any read of Q.
  }

  const int row0 = q0 + warp * 32;  // this warp's first row; m-tile mt holds rows row0 + 16 mt ..
  float o[kMTiles][OT][4];
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
    for (int j = 0; j < OT; ++j) o[mt][j][0] = o[mt][j][1] = o[mt][j][2] = o[mt][j][3] = 0.0f;
  // Row statistics: [mt][0] for row g of the m-tile, [mt][1] for row g + 8.
  float m[kMTiles][2], l[kMTiles][2];
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt) m[mt][0] = m[mt][1] = -INFINITY, l[mt][0] = l[mt][1] = 0.0f;
  // ldmatrix addressing. A fragments of Q: row lane & 15, column half lane >> 4. B fragments of
  // K for two 8-key tiles: key (lane & 7) + 8 (lane >> 4), column half (lane >> 3) & 1.
  // ldmatrix.trans of V: key (lane & 7) + 8 ((lane >> 3) & 1) within a 16-key chunk, 8-column
  // offset 8 (lane >> 4).
  const int qa_row = lane & 15, qa_col = (lane >> 4) * 8;
  const int kb_key = (lane & 7) + (lane >> 4) * 8, kb_col = ((lane >> 3) & 1) * 8;
  const int lm_key = (lane & 7) + ((lane >> 3) & 1) * 8, lm_col = (lane >> 4) * 8;

  for (int tile = 0; tile < ntiles; ++tile) {
    const int key0 = tile * kBlockN, buf = tile & 1;
    if (tile + 1 < ntiles) {
      load_tile(tile + 1, buf ^ 1);  // its buffer was released by the barrier ending tile - 1
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const bf16* kt = ks + buf * kTile;
    const bf16* vt = vs + buf * kTile;
    // The warp skips tiles entirely after its rows (causal).
    if (key0 <= past + row0 + 31) {
      float s[kMTiles][NT][4];
#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
        for (int j = 0; j < NT; ++j) s[mt][j][0] = s[mt][j][1] = s[mt][j][2] = s[mt][j][3] = 0.0f;
      // S = Q K^T, one k-step at a time: the Q fragments of both m-tiles, then for each pair of
      // 8-key tiles one ldmatrix.x4 of K (keys j*8 .. j*8+15, hd columns st*16 .. st*16+15)
      // feeding four products.
#pragma unroll
      for (int st = 0; st < KS; ++st) {
        uint32_t qa[kMTiles][4];
#pragma unroll
        for (int mt = 0; mt < kMTiles; ++mt)
          ldmatrix_x4(qa[mt], qs + (warp * 32 + mt * 16 + qa_row) * kStride + st * 16 + qa_col);
#pragma unroll
        for (int j = 0; j < NT; j += 2) {
          uint32_t kb4[4];
          ldmatrix_x4(kb4, kt + (j * 8 + kb_key) * kStride + st * 16 + kb_col);
#pragma unroll
          for (int mt = 0; mt < kMTiles; ++mt) {
            mma_bf16(s[mt][j], qa[mt], kb4[0], kb4[1]);
            mma_bf16(s[mt][j + 1], qa[mt], kb4[2], kb4[3]);
          }
        }
      }
#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt) {
        const int pos_lo = past + row0 + mt * 16 + g;  // absolute positions of rows g and g + 8
        const bool masked = key0 + kBlockN - 1 > past + row0 + mt * 16;  // some key of the tile is masked
        rescale_rows(o[mt], online_softmax_tile(s[mt], key0, t, pos_lo, pos_lo + 8, masked, scale_log2, m[mt][0],
                                                m[mt][1], l[mt][0], l[mt][1]));
      }
      // O += P V, P from the S accumulators of 8-key tiles 2kk and 2kk+1; V's B fragments for
      // two 8-wide output tiles per ldmatrix.x4.trans, shared by both m-tiles.
#pragma unroll
      for (int kk = 0; kk < kBlockN / 16; ++kk) {
        uint32_t pa[kMTiles][4];
#pragma unroll
        for (int mt = 0; mt < kMTiles; ++mt) p_fragment(s[mt], kk, pa[mt]);
#pragma unroll
        for (int j = 0; j < OT; j += 2) {
          uint32_t vb4[4];
          ldmatrix_x4_trans(vb4, vt + (kk * 16 + lm_key) * kStride + j * 8 + lm_col);
#pragma unroll
          for (int mt = 0; mt < kMTiles; ++mt) {
            mma_bf16(o[mt][j], pa[mt], vb4[0], vb4[1]);
            mma_bf16(o[mt][j + 1], pa[mt], vb4[2], vb4[3]);
          }
        }
      }
    }
    __syncthreads();  // the buffer of this tile is free for tile + 2
  }
  bf16* ob = out + int64_t(bt.b) * T * ldo + int64_t(bt.head) * HD;
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt) store_rows(ob, ldo, T, row0 + mt * 16 + g, t, o[mt], l[mt][0], l[mt][1]);
}

template <int HD>
void launch_flash(const dim3& grid, cudaStream_t s, const bf16* q, const bf16* k, const bf16* v, bf16* out, int T,
                  int past, int nh, int nkv, int64_t ldq, int64_t ldk, int64_t ldo, float scale_log2,
                  const float* rope_cos, const float* rope_sin, const int32_t* past_dev) {
  constexpr int bytes = flash_smem_bytes<HD>();
  static bool configured = false;  // the attribute is per kernel and device; setting it again is harmless
  if (!configured) {
    LB_CUDA_CHECK(cudaFuncSetAttribute(flash_attention_kernel<HD>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
    configured = true;
  }
  flash_attention_kernel<HD><<<grid, kWarps * 32, bytes, s>>>(q, k, v, out, T, past, nh, nkv, ldq, ldk, ldo, scale_log2,
                                                              rope_cos, rope_sin, past_dev);
}

// ---------------------------------------------------------------------------------------------
// Hopper (sm_90a) kernel for head dim 128: the two products on wgmma, the warpgroup-wide
// asynchronous tensor-core instruction (bench_cuda_ops, H100: 1.4x the mma.sync kernel's rate).
// One thread block per (128 queries, head, sequence) with two warpgroups of 64 query rows each,
// key tiles of 64, so that two blocks (97 KB of shared memory, at most 128 registers a thread)
// share an SM and one's loads and softmax overlap the other's products.
// S = Q K^T takes Q and K from shared memory (K-major). P stays in registers: a wgmma
// accumulator's layout is, per warp, the m16n8k16 one, so P's A fragments come straight from S
// as in the mma.sync kernel. O += P V reads V from shared memory N-major (V's rows are keys, the
// product's k). Q, K and V tiles are stored as two 64-column halves of 128-byte rows in the
// 128-byte-swizzled layout wgmma reads (16-byte chunk c of row r at c ^ (r mod 8)), filled by
// cp.async, K and V double-buffered.
namespace sm90 {

constexpr int kHd = 128;
constexpr int kThreads = 256;  // two warpgroups of 64 query rows
constexpr int kBlockM = 128, kBlockN = 64;
constexpr int kQBytes = 2 * kBlockM * 128, kTileBytes = 2 * kBlockN * 128;  // two 64-column halves
constexpr int kSmemBytes = kQBytes + 4 * kTileBytes + 1024;  // Q; K and V twice; 1024-byte alignment

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
// D [64 x 64] (+)= A [64 x 16] . B [16 x 64], A and B in shared memory (descriptors), both K-major.
__device__ __forceinline__ void wgmma_ss(float (&d)[8][4], uint64_t desc_a, uint64_t desc_b, int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"
      ", %32, %33, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]),
        "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]),
        "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]),
        "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3])
      : "l"(desc_a), "l"(desc_b), "r"(accumulate));
}
// D [64 x 128] += A [64 x 16] . B [16 x 128], A in registers (the m16n8k16 A fragment of each
// warp's 16 rows), B in shared memory N-major (transposed).
__device__ __forceinline__ void wgmma_rs(float (&d)[16][4], const uint32_t (&a)[4], uint64_t desc_b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"
      ", {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
      : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]),
        "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]),
        "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]),
        "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3]),
        "+f"(d[8][0]), "+f"(d[8][1]), "+f"(d[8][2]), "+f"(d[8][3]), "+f"(d[9][0]), "+f"(d[9][1]), "+f"(d[9][2]), "+f"(d[9][3]),
        "+f"(d[10][0]), "+f"(d[10][1]), "+f"(d[10][2]), "+f"(d[10][3]), "+f"(d[11][0]), "+f"(d[11][1]), "+f"(d[11][2]), "+f"(d[11][3]),
        "+f"(d[12][0]), "+f"(d[12][1]), "+f"(d[12][2]), "+f"(d[12][3]), "+f"(d[13][0]), "+f"(d[13][1]), "+f"(d[13][2]), "+f"(d[13][3]),
        "+f"(d[14][0]), "+f"(d[14][1]), "+f"(d[14][2]), "+f"(d[14][3]), "+f"(d[15][0]), "+f"(d[15][1]), "+f"(d[15][2]), "+f"(d[15][3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(1));
}
// Shared-memory matrix descriptor, 128-byte swizzle (PTX ISA, wgmma matrix descriptor).
__device__ __forceinline__ uint64_t smem_desc(uint32_t addr, uint32_t lead_bytes, uint32_t stride_bytes) {
  return uint64_t((addr & 0x3FFFF) >> 4) | uint64_t((lead_bytes & 0x3FFFF) >> 4) << 16 |
         uint64_t((stride_bytes & 0x3FFFF) >> 4) << 32 | uint64_t(1) << 62;
}
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_wait_all() { asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory"); }
// Keeps the compiler from moving accesses of accumulator registers across the asynchronous
// products.
template <int N>
__device__ __forceinline__ void fence_regs(float (&d)[N][4]) {
#pragma unroll
  for (int i = 0; i < N; ++i)
#pragma unroll
    for (int e = 0; e < 4; ++e) asm volatile("" : "+f"(d[i][e])::"memory");
}
// Makes this thread's shared-memory writes (cp.async, st.shared) visible to wgmma's reads.
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
// Byte offset of element (row, col) in a swizzled tile of `rows` rows.
__device__ __forceinline__ uint32_t swizzled(int row, int col, int rows) {
  return uint32_t((col >> 6) * rows * 128 + row * 128 + ((((col & 63) >> 3) ^ (row & 7)) << 4) + (col & 7) * 2);
}
#endif


__global__ void __launch_bounds__(kThreads, 2)
    flash_attention_kernel(const bf16* __restrict__ q, const bf16* __restrict__ k, const bf16* __restrict__ v,
                           bf16* __restrict__ out, int T, int past, int nh, int nkv, int64_t ldq, int64_t ldk,
                           int64_t ldo, float scale_log2, const float* __restrict__ rope_cos,
                           const float* __restrict__ rope_sin, const int32_t* __restrict__ past_dev) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  if (past_dev != nullptr) past = *past_dev;
  extern __shared__ unsigned char smem_raw[];
  const uint32_t raw = static_cast<uint32_t>(__cvta_generic_to_shared(smem_raw));
  const uint32_t base = (raw + 1023u) & ~1023u;
  unsigned char* const smem = smem_raw + (base - raw);
  const uint32_t q_s = base, k_s = base + kQBytes, v_s = k_s + 2 * kTileBytes;

  const BlockTask bt = block_task<kBlockM, kBlockN, kHd>(q, k, v, T, past, nh, nkv, ldq, ldk);
  const int q0 = bt.q0, keys_total = bt.keys_total, ntiles = bt.ntiles;

  // Each thread copies 16-byte chunk c16 of rows r0, r0 + 16, ...: 16 chunks per 128-value row.
  const int c16 = threadIdx.x & 15, r0 = threadIdx.x >> 4;
  constexpr int kRowsPerPass = kThreads / 16;
  unsigned char* const k_p = smem + kQBytes;
  unsigned char* const v_p = k_p + 2 * kTileBytes;
  auto load_tile = [&](int tile, int buf) {
    const int key0 = tile * kBlockN;
#pragma unroll
    for (int i = 0; i < kBlockN / kRowsPerPass; ++i) {
      const int r = r0 + i * kRowsPerPass;
      const bool valid = key0 + r < keys_total;  // else zero-filled
      const int64_t off = valid ? int64_t(key0 + r) * ldk + c16 * 8 : 0;
      const uint32_t o = swizzled(r, c16 * 8, kBlockN) + uint32_t(buf * kTileBytes);
      cp_async16(k_p + o, bt.kb + off, valid);
      cp_async16(v_p + o, bt.vb + off, valid);
    }
    cp_async_commit();
  };
#pragma unroll
  for (int i = 0; i < kBlockM / kRowsPerPass; ++i) {
    const int r = r0 + i * kRowsPerPass;
    const bool valid = q0 + r < T;
    cp_async16(smem + swizzled(r, c16 * 8, kBlockM), bt.qb + (valid ? int64_t(q0 + r) * ldq + c16 * 8 : 0), valid);
  }
  cp_async_commit();
  load_tile(0, 0);
  if (rope_cos != nullptr) {
    cp_async_wait<1>();  // Q has landed
    __syncthreads();
    // rotate_half on pairs (i, i + 64): the same offset in the two halves.
    for (int idx = threadIdx.x; idx < kBlockM * 32; idx += kThreads) {
      const int r = idx >> 5, i = (idx & 31) * 2;
      if (q0 + r >= T) continue;
      const int64_t pos = int64_t(past + q0 + r) * 64 + i;
      const float2 c = *reinterpret_cast<const float2*>(rope_cos + pos);
      const float2 sn = *reinterpret_cast<const float2*>(rope_sin + pos);
      rope_pairs(reinterpret_cast<__nv_bfloat162*>(smem + swizzled(r, i, kBlockM)),
                 reinterpret_cast<__nv_bfloat162*>(smem + swizzled(r, i + 64, kBlockM)), c, sn);
    }
    // The loop's fence and barrier order these writes before wgmma reads Q.
  }

  const int wg = threadIdx.x >> 7, warp = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31;
  const int g = lane >> 2, t = lane & 3;
  const int wg_row0 = q0 + wg * 64;                 // first query row of this warpgroup
  const int pos_lo = past + wg_row0 + warp * 16 + g, pos_hi = pos_lo + 8;  // this thread's two rows
  float o[kHd / 8][4];
#pragma unroll
  for (int j = 0; j < kHd / 8; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
  float m_lo = -INFINITY, m_hi = -INFINITY, l_lo = 0.0f, l_hi = 0.0f;

  for (int tile = 0; tile < ntiles; ++tile) {
    const int key0 = tile * kBlockN, buf = tile & 1;
    if (tile + 1 < ntiles) {
      load_tile(tile + 1, buf ^ 1);  // its buffer was released by the barrier ending tile - 1
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    fence_proxy_async();
    __syncthreads();
    // A warpgroup skips tiles entirely after its rows (causal).
    if (key0 <= past + wg_row0 + 63) {
      const uint32_t kt = k_s + buf * kTileBytes, vt = v_s + buf * kTileBytes;
      float s[kBlockN / 8][4];
      wgmma_fence();
#pragma unroll
      for (int st = 0; st < kHd / 16; ++st) {
        const uint32_t koff = uint32_t((st >> 2) * kBlockM * 128 + (st & 3) * 32);
        const uint32_t kkoff = uint32_t((st >> 2) * kBlockN * 128 + (st & 3) * 32);
        wgmma_ss(s, smem_desc(q_s + wg * 64 * 128 + koff, 16, 1024), smem_desc(kt + kkoff, 16, 1024),
                            st > 0);
      }
      wgmma_commit();
      wgmma_wait_all();
      fence_regs(s);
      const bool masked = key0 + kBlockN - 1 > past + wg_row0 + warp * 16;  // some key of the tile is masked
      rescale_rows(o, online_softmax_tile(s, key0, t, pos_lo, pos_hi, masked, scale_log2, m_lo, m_hi, l_lo, l_hi));
      uint32_t p[kBlockN / 16][4];
#pragma unroll
      for (int kk = 0; kk < kBlockN / 16; ++kk) p_fragment(s, kk, p[kk]);
      fence_regs(o);
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < kBlockN / 16; ++kk)  // keys 16kk .. 16kk + 15: two 8-row groups of V
        wgmma_rs(o, p[kk], smem_desc(vt + kk * 16 * 128, kBlockN * 128, 1024));
      wgmma_commit();
      wgmma_wait_all();
      fence_regs(o);
    }
    __syncthreads();  // the buffer of this tile is free for tile + 2
  }
  store_rows(out + int64_t(bt.b) * T * ldo + int64_t(bt.head) * kHd, ldo, T, wg_row0 + warp * 16 + g, t, o, l_lo, l_hi);
#endif
}

// 1 when this binary holds the sm_90a code above for the running GPU (a Hopper GPU running an
// sm_90a build), 0 otherwise (the PTX fallback compiled without it).
__global__ void probe_kernel(int* has) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  *has = 1;
#else
  *has = 0;
#endif
}

void launch(cudaStream_t s, const bf16* q, const bf16* k, const bf16* v, bf16* out, int64_t B, int64_t T, int64_t past,
            int64_t nh, int64_t nkv, int64_t ldq, int64_t ldk, int64_t ldo, float scale_log2, const float* rope_cos,
            const float* rope_sin, const int32_t* past_dev) {
  static bool configured = false;  // the attribute is per kernel and device; setting it again is harmless
  if (!configured) {
    LB_CUDA_CHECK(
        cudaFuncSetAttribute(flash_attention_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes));
    configured = true;
  }
  const dim3 grid(unsigned(nh), unsigned(B), unsigned((T + kBlockM - 1) / kBlockM));
  flash_attention_kernel<<<grid, kThreads, kSmemBytes, s>>>(q, k, v, out, int(T), int(past), int(nh), int(nkv), ldq,
                                                            ldk, ldo, scale_log2, rope_cos, rope_sin, past_dev);
  LB_CUDA_LAUNCH_CHECK();
}

}  // namespace sm90

// Any head dim up to HDMAX (the models whose head dims the tensor-core kernel does not cover:
// small test and toy models): one warp per (query, head, sequence); lane j takes keys j, j+32, ...
// with its own online softmax, and the warp merges the 32 partial results at the end.
template <int HDMAX>
__global__ void attention_generic_kernel(const bf16* __restrict__ q, const bf16* __restrict__ k,
                                         const bf16* __restrict__ v, bf16* __restrict__ out, int T, int past, int nh,
                                         int nkv, int hd, int64_t ldq, int64_t ldk, int64_t ldo, float scale,
                                         const float* __restrict__ rope_cos, const float* __restrict__ rope_sin,
                                         const int32_t* __restrict__ past_dev) {
  if (past_dev != nullptr) past = *past_dev;
  const int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5), lane = threadIdx.x & 31;
  const int head = blockIdx.y, b = blockIdx.z;
  if (row >= T) return;
  const int kvh = head / (nh / nkv), S = past + T;
  const bf16* qr = q + (int64_t(b) * T + row) * ldq + int64_t(head) * hd;
  float qv[HDMAX], acc[HDMAX];
  for (int d = 0; d < hd; ++d) {
    qv[d] = __bfloat162float(qr[d]);
    acc[d] = 0.0f;
  }
  if (rope_cos != nullptr) {  // as the rope kernel: fp32 from bf16, rounded to bf16
    const int half = hd / 2;
    const float* c = rope_cos + int64_t(past + row) * half;
    const float* sn = rope_sin + int64_t(past + row) * half;
    for (int i = 0; i < half; ++i) {
      const float a = qv[i], bv = qv[i + half];
      qv[i] = __bfloat162float(__float2bfloat16(a * c[i] - bv * sn[i]));
      qv[i + half] = __bfloat162float(__float2bfloat16(bv * c[i] + a * sn[i]));
    }
  }
  for (int d = 0; d < hd; ++d) qv[d] *= scale;
  float m = -FLT_MAX, l = 0.0f;
  for (int j = lane; j <= past + row; j += 32) {
    const bf16* kr = k + (int64_t(b) * S + j) * ldk + int64_t(kvh) * hd;
    const bf16* vr = v + (int64_t(b) * S + j) * ldk + int64_t(kvh) * hd;
    float sc = 0.0f;
    for (int d = 0; d < hd; ++d) sc += qv[d] * __bfloat162float(kr[d]);
    const float mn = fmaxf(m, sc), corr = __expf(m - mn), p = __expf(sc - mn);
    l = l * corr + p;
    for (int d = 0; d < hd; ++d) acc[d] = acc[d] * corr + p * __bfloat162float(vr[d]);
    m = mn;
  }
  for (int o = 16; o > 0; o /= 2) {
    const float m2 = __shfl_xor_sync(0xffffffffu, m, o), l2 = __shfl_xor_sync(0xffffffffu, l, o);
    const float mn = fmaxf(m, m2);
    const float c1 = m == -FLT_MAX ? 0.0f : __expf(m - mn), c2 = m2 == -FLT_MAX ? 0.0f : __expf(m2 - mn);
    for (int d = 0; d < hd; ++d) acc[d] = acc[d] * c1 + __shfl_xor_sync(0xffffffffu, acc[d], o) * c2;
    l = l * c1 + l2 * c2;
    m = mn;
  }
  bf16* orow = out + (int64_t(b) * T + row) * ldo + int64_t(head) * hd;
  for (int d = lane; d < hd; d += 32) orow[d] = __float2bfloat16(acc[d] / l);
}

}  // namespace

namespace {
AttentionKernel g_attention_kernel = AttentionKernel::Auto;
}  // namespace

void set_attention_kernel(AttentionKernel kernel) { g_attention_kernel = kernel; }

bool wgmma_attention_available() {
  static int has[64];  // per device: 0 unknown, 1 no, 2 yes
  int dev = 0;
  LB_CUDA_CHECK(cudaGetDevice(&dev));
  if (dev < 64 && has[dev] != 0) return has[dev] == 2;
  DeviceBuffer<int> flag(1);
  sm90::probe_kernel<<<1, 1>>>(flag.get());
  LB_CUDA_LAUNCH_CHECK();
  int h = 0;
  LB_CUDA_CHECK(cudaMemcpy(&h, flag.get(), sizeof h, cudaMemcpyDeviceToHost));
  if (dev < 64) has[dev] = h ? 2 : 1;
  return h != 0;
}

void attention(const bf16* q, const bf16* k, const bf16* v, bf16* out, int64_t B, int64_t T, int64_t past,
               int64_t nh, int64_t nkv, int64_t hd, int64_t ldq, int64_t ldk, int64_t ldo, cudaStream_t s,
               const float* rope_cos, const float* rope_sin, const int32_t* past_dev) {
  if (B * T == 0) return;
  if (nh % nkv != 0)
    throw_error("attention: " + std::to_string(nh) + " heads do not group over " + std::to_string(nkv) + " KV heads");
  if (ldq % 8 != 0 || ldk % 8 != 0 || ldo % 2 != 0) throw_error("attention: row strides must be multiples of 8 elements");
  const float scale_log2 = float(1.4426950408889634 / std::sqrt(double(hd)));
  if (hd == sm90::kHd && g_attention_kernel != AttentionKernel::MmaSync) {
    const bool have = wgmma_attention_available();
    if (have) {
      sm90::launch(s, q, k, v, out, B, T, past, nh, nkv, ldq, ldk, ldo, scale_log2, rope_cos, rope_sin, past_dev);
      return;
    }
    if (g_attention_kernel == AttentionKernel::Wgmma)
      throw_error("attention: the wgmma kernel needs a Hopper GPU and a build for sm_90a");
  }
  const dim3 grid(unsigned(nh), unsigned(B), unsigned((T + kBlockM - 1) / kBlockM));
  switch (hd) {
    case 64:
      launch_flash<64>(grid, s, q, k, v, out, int(T), int(past), int(nh), int(nkv), ldq, ldk, ldo, scale_log2, rope_cos,
                       rope_sin, past_dev);
      break;
    case 128:
      launch_flash<128>(grid, s, q, k, v, out, int(T), int(past), int(nh), int(nkv), ldq, ldk, ldo, scale_log2, rope_cos,
                        rope_sin, past_dev);
      break;
    default: {
      if (hd > 256 || hd % 2 != 0) throw_error("attention on the GPU supports even head dims up to 256, not " + std::to_string(hd));
      const dim3 g(unsigned((T + 3) / 4), unsigned(nh), unsigned(B));
      const float scale = float(1.0 / std::sqrt(double(hd)));
      if (hd <= 32)
        attention_generic_kernel<32><<<g, 128, 0, s>>>(q, k, v, out, int(T), int(past), int(nh), int(nkv), int(hd), ldq,
                                                       ldk, ldo, scale, rope_cos, rope_sin, past_dev);
      else
        attention_generic_kernel<256><<<g, 128, 0, s>>>(q, k, v, out, int(T), int(past), int(nh), int(nkv), int(hd),
                                                        ldq, ldk, ldo, scale, rope_cos, rope_sin, past_dev);
    }
  }
  LB_CUDA_LAUNCH_CHECK();
}

}  // namespace lowbit::cuda
