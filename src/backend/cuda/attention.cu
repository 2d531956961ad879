// Causal GQA attention, FlashAttention-2 style: the scores are never materialized. One thread
// block per (64 queries, head, sequence); each of its 4 warps owns 16 query rows and walks the
// key tiles (64 keys) the rows can see, keeping a running row max and sum (online softmax) and
// the output accumulator in registers. Both products run on tensor cores through
// mma.sync.m16n8k16 (bf16 in, fp32 accumulate).
//
// Fragment layouts of mma.m16n8k16 (PTX ISA), lane = 4 * g + t (g = 0..7, t = 0..3):
//   A 16x16 row-major, 4 regs of 2 bf16: {A[g][2t..2t+1]}, {A[g+8][2t..]}, {A[g][2t+8..]}, {A[g+8][2t+8..]}
//   B 16x8 (k x n), 2 regs:             {B[2t..2t+1][g]}, {B[2t+8..2t+9][g]}
//   C 16x8 fp32, 4 values:              C[g][2t], C[g][2t+1], C[g+8][2t], C[g+8][2t+1]
// so the S = Q K^T accumulators of two adjacent 8-key tiles are, element for element, the A
// fragment of P for the next product P V (no trip through shared memory). K sits in shared
// memory as [key][hd] (B of Q K^T reads two consecutive hd values of one key), and so does V
// (B of P V, two consecutive keys of one hd, comes through ldmatrix.trans).
//
// The tensor-core kernel is compiled for head dims 64 and 128, which the LLaMA family uses
// (testbed-44m 64, LLaMA-2/3 128); other head dims take a plain kernel (attention_generic_kernel).
#include "backend/cuda/ops.cuh"

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <string>

namespace lowbit::cuda {

namespace {

constexpr int kBlockM = 64;  // queries per block (16 per warp)
constexpr int kBlockN = 64;  // keys per tile
constexpr int kWarps = 4;

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

template <int HD>
constexpr int flash_smem_bytes() {
  return 2 * 2 * kBlockN * (HD + 8) * int(sizeof(bf16));  // K and V tiles, double-buffered
}

// K and V tiles sit in shared memory as [key][hd] (rows padded by 8 bf16 so that the 8 rows an
// ldmatrix or a fragment load touches fall on distinct banks), double-buffered: cp.async brings
// tile i+1 while tile i is multiplied. The B fragments of P V (two consecutive keys of one hd
// column) come from the [key][hd] layout through ldmatrix.trans.
template <int HD>
__global__ void __launch_bounds__(kWarps * 32) flash_attention_kernel(const bf16* __restrict__ q,
                                                                      const bf16* __restrict__ k,
                                                                      const bf16* __restrict__ v, bf16* __restrict__ out,
                                                                      int T, int past, int nh, int nkv, int64_t ldq,
                                                                      int64_t ldk, int64_t ldo, float scale_log2) {
  constexpr int KS = HD / 16;        // k-steps of Q K^T
  constexpr int NT = kBlockN / 8;    // 8-key tiles per key tile
  constexpr int OT = HD / 8;         // 8-wide output tiles
  constexpr int kStride = HD + 8;    // padded row of a K or V tile (bf16)
  constexpr int kTile = kBlockN * kStride;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* ks = reinterpret_cast<bf16*>(smem_raw);  // [2][kBlockN][kStride]
  bf16* vs = ks + 2 * kTile;                      // [2][kBlockN][kStride]

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  // The longest query tiles (the last ones, under the causal mask) start first.
  const int q0 = (gridDim.x - 1 - blockIdx.x) * kBlockM, head = blockIdx.y, b = blockIdx.z;
  const int kvh = head / (nh / nkv);
  const int keys_total = past + T;
  const bf16* qb = q + int64_t(b) * T * ldq + int64_t(head) * HD;
  const bf16* kb = k + int64_t(b) * keys_total * ldk + int64_t(kvh) * HD;
  const bf16* vb = v + int64_t(b) * keys_total * ldk + int64_t(kvh) * HD;

  // Keys this block can see: up to the last query's position.
  const int last_key = min(keys_total - 1, past + min(q0 + kBlockM, T) - 1);
  const int ntiles = last_key / kBlockN + 1;
  auto load_tile = [&](int tile, int buf) {
    const int key0 = tile * kBlockN;
    bf16* kd = ks + buf * kTile;
    bf16* vd = vs + buf * kTile;
    for (int idx = threadIdx.x; idx < kBlockN * HD / 8; idx += blockDim.x) {
      const int kr = idx / (HD / 8), c8 = (idx % (HD / 8)) * 8;
      const int key = key0 + kr;
      const bool valid = key < keys_total;
      const int64_t off = int64_t(valid ? key : 0) * ldk + c8;
      cp_async16(kd + kr * kStride + c8, kb + off, valid);
      cp_async16(vd + kr * kStride + c8, vb + off, valid);
    }
    cp_async_commit();
  };
  load_tile(0, 0);

  // Q fragments of this warp's 16 rows, for every k-step (rows past T read as zeros).
  const int r_lo = q0 + warp * 16 + g, r_hi = r_lo + 8;
  uint32_t qa[KS][4];
  auto qpair = [&](int row, int col) -> uint32_t {
    if (row >= T) return 0u;
    return *reinterpret_cast<const uint32_t*>(qb + int64_t(row) * ldq + col);
  };
#pragma unroll
  for (int s = 0; s < KS; ++s) {
    qa[s][0] = qpair(r_lo, s * 16 + 2 * t);
    qa[s][1] = qpair(r_hi, s * 16 + 2 * t);
    qa[s][2] = qpair(r_lo, s * 16 + 2 * t + 8);
    qa[s][3] = qpair(r_hi, s * 16 + 2 * t + 8);
  }
  float o[OT][4];
#pragma unroll
  for (int j = 0; j < OT; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
  float m_lo = -FLT_MAX, m_hi = -FLT_MAX, l_lo = 0.0f, l_hi = 0.0f;
  const int pos_lo = past + r_lo, pos_hi = past + r_hi;  // absolute positions of the two rows
  // ldmatrix.trans row of this lane within a 16-key chunk, and its 8-column offset (0 or 8).
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
    if (key0 <= past + q0 + warp * 16 + 15) {
      float s[NT][4];
#pragma unroll
      for (int j = 0; j < NT; ++j) {
        s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
        // B fragments of two k-steps per ldmatrix.x4: rows are keys j*8 .. j*8+7, the four
        // matrices the hd columns st*16, st*16+8, st*16+16, st*16+24.
#pragma unroll
        for (int st = 0; st < KS; st += 2) {
          uint32_t kb4[4];
          ldmatrix_x4(kb4, kt + (j * 8 + (lane & 7)) * kStride + st * 16 + (lane >> 3) * 8);
          mma_bf16(s[j], qa[st], kb4[0], kb4[1]);
          mma_bf16(s[j], qa[st + 1], kb4[2], kb4[3]);
        }
      }
      // Scale (in log2 units), mask, row maxima.
      float mx_lo = m_lo, mx_hi = m_hi;
      const bool full = key0 + kBlockN - 1 <= past + q0 + warp * 16;  // no key of the tile is masked
#pragma unroll
      for (int j = 0; j < NT; ++j) {
        const int c = key0 + j * 8 + 2 * t;
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          s[j][e] = (full || c + e <= pos_lo) ? s[j][e] * scale_log2 : -FLT_MAX;
          s[j][2 + e] = (full || c + e <= pos_hi) ? s[j][2 + e] * scale_log2 : -FLT_MAX;
          mx_lo = fmaxf(mx_lo, s[j][e]);
          mx_hi = fmaxf(mx_hi, s[j][2 + e]);
        }
      }
      mx_lo = fmaxf(mx_lo, __shfl_xor_sync(0xffffffffu, mx_lo, 1));
      mx_lo = fmaxf(mx_lo, __shfl_xor_sync(0xffffffffu, mx_lo, 2));
      mx_hi = fmaxf(mx_hi, __shfl_xor_sync(0xffffffffu, mx_hi, 1));
      mx_hi = fmaxf(mx_hi, __shfl_xor_sync(0xffffffffu, mx_hi, 2));
      const float alpha_lo = exp2f(m_lo - mx_lo), alpha_hi = exp2f(m_hi - mx_hi);
      m_lo = mx_lo;
      m_hi = mx_hi;
      float sum_lo = 0.0f, sum_hi = 0.0f;
#pragma unroll
      for (int j = 0; j < NT; ++j) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          s[j][e] = exp2f(s[j][e] - m_lo);
          s[j][2 + e] = exp2f(s[j][2 + e] - m_hi);
          sum_lo += s[j][e];
          sum_hi += s[j][2 + e];
        }
      }
      l_lo = l_lo * alpha_lo + sum_lo;  // per-lane partial sums; combined across the quad at the end
      l_hi = l_hi * alpha_hi + sum_hi;
#pragma unroll
      for (int j = 0; j < OT; ++j) {
        o[j][0] *= alpha_lo;
        o[j][1] *= alpha_lo;
        o[j][2] *= alpha_hi;
        o[j][3] *= alpha_hi;
      }
      // O += P V, P from the S accumulators of 8-key tiles 2kk and 2kk+1; V's B fragments for
      // two 8-wide output tiles per ldmatrix.x4.trans.
#pragma unroll
      for (int kk = 0; kk < kBlockN / 16; ++kk) {
        uint32_t pa[4];
        pa[0] = pack_bf16(s[2 * kk][0], s[2 * kk][1]);
        pa[1] = pack_bf16(s[2 * kk][2], s[2 * kk][3]);
        pa[2] = pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]);
        pa[3] = pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
        for (int j = 0; j < OT; j += 2) {
          uint32_t vb4[4];
          ldmatrix_x4_trans(vb4, vt + (kk * 16 + lm_key) * kStride + j * 8 + lm_col);
          mma_bf16(o[j], pa, vb4[0], vb4[1]);
          mma_bf16(o[j + 1], pa, vb4[2], vb4[3]);
        }
      }
    }
    __syncthreads();  // the buffer of this tile is free for tile + 2
  }
  l_lo += __shfl_xor_sync(0xffffffffu, l_lo, 1);
  l_lo += __shfl_xor_sync(0xffffffffu, l_lo, 2);
  l_hi += __shfl_xor_sync(0xffffffffu, l_hi, 1);
  l_hi += __shfl_xor_sync(0xffffffffu, l_hi, 2);
  const float inv_lo = 1.0f / l_lo, inv_hi = 1.0f / l_hi;
  bf16* ob = out + int64_t(b) * T * ldo + int64_t(head) * HD;
#pragma unroll
  for (int j = 0; j < OT; ++j) {
    const int c = j * 8 + 2 * t;
    if (r_lo < T) *reinterpret_cast<uint32_t*>(ob + int64_t(r_lo) * ldo + c) = pack_bf16(o[j][0] * inv_lo, o[j][1] * inv_lo);
    if (r_hi < T) *reinterpret_cast<uint32_t*>(ob + int64_t(r_hi) * ldo + c) = pack_bf16(o[j][2] * inv_hi, o[j][3] * inv_hi);
  }
}

template <int HD>
void launch_flash(const dim3& grid, cudaStream_t s, const bf16* q, const bf16* k, const bf16* v, bf16* out, int T,
                  int past, int nh, int nkv, int64_t ldq, int64_t ldk, int64_t ldo, float scale_log2) {
  constexpr int bytes = flash_smem_bytes<HD>();
  static bool configured = false;  // the attribute is per kernel and device; setting it again is harmless
  if (!configured) {
    LB_CUDA_CHECK(cudaFuncSetAttribute(flash_attention_kernel<HD>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
    configured = true;
  }
  flash_attention_kernel<HD><<<grid, kWarps * 32, bytes, s>>>(q, k, v, out, T, past, nh, nkv, ldq, ldk, ldo, scale_log2);
}

// Any head dim up to HDMAX (the models whose head dims the tensor-core kernel does not cover:
// small test and toy models): one warp per (query, head, sequence); lane j takes keys j, j+32, ...
// with its own online softmax, and the warp merges the 32 partial results at the end.
template <int HDMAX>
__global__ void attention_generic_kernel(const bf16* __restrict__ q, const bf16* __restrict__ k,
                                         const bf16* __restrict__ v, bf16* __restrict__ out, int T, int past, int nh,
                                         int nkv, int hd, int64_t ldq, int64_t ldk, int64_t ldo, float scale) {
  const int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5), lane = threadIdx.x & 31;
  const int head = blockIdx.y, b = blockIdx.z;
  if (row >= T) return;
  const int kvh = head / (nh / nkv), S = past + T;
  const bf16* qr = q + (int64_t(b) * T + row) * ldq + int64_t(head) * hd;
  float qv[HDMAX], acc[HDMAX];
  for (int d = 0; d < hd; ++d) {
    qv[d] = __bfloat162float(qr[d]) * scale;
    acc[d] = 0.0f;
  }
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

void attention(const bf16* q, const bf16* k, const bf16* v, bf16* out, int64_t B, int64_t T, int64_t past,
               int64_t nh, int64_t nkv, int64_t hd, int64_t ldq, int64_t ldk, int64_t ldo, cudaStream_t s) {
  if (B * T == 0) return;
  if (nh % nkv != 0)
    throw_error("attention: " + std::to_string(nh) + " heads do not group over " + std::to_string(nkv) + " KV heads");
  if (ldq % 8 != 0 || ldk % 8 != 0 || ldo % 2 != 0) throw_error("attention: row strides must be multiples of 8 elements");
  const dim3 grid(unsigned((T + kBlockM - 1) / kBlockM), unsigned(nh), unsigned(B));
  const float scale_log2 = float(1.4426950408889634 / std::sqrt(double(hd)));
  switch (hd) {
    case 64:
      launch_flash<64>(grid, s, q, k, v, out, int(T), int(past), int(nh), int(nkv), ldq, ldk, ldo, scale_log2);
      break;
    case 128:
      launch_flash<128>(grid, s, q, k, v, out, int(T), int(past), int(nh), int(nkv), ldq, ldk, ldo, scale_log2);
      break;
    default: {
      if (hd > 256 || hd % 2 != 0) throw_error("attention on the GPU supports even head dims up to 256, not " + std::to_string(hd));
      const dim3 g(unsigned((T + 3) / 4), unsigned(nh), unsigned(B));
      const float scale = float(1.0 / std::sqrt(double(hd)));
      if (hd <= 32)
        attention_generic_kernel<32><<<g, 128, 0, s>>>(q, k, v, out, int(T), int(past), int(nh), int(nkv), int(hd), ldq,
                                                       ldk, ldo, scale);
      else
        attention_generic_kernel<256><<<g, 128, 0, s>>>(q, k, v, out, int(T), int(past), int(nh), int(nkv), int(hd),
                                                        ldq, ldk, ldo, scale);
    }
  }
  LB_CUDA_LAUNCH_CHECK();
}

}  // namespace lowbit::cuda
