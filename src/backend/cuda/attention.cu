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
// memory as [key][hd] (B of Q K^T reads two consecutive hd values of one key) and V transposed
// as [hd][key] (B of P V reads two consecutive keys of one hd).
//
// Only head dims 64 and 128 are compiled: the LLaMA family uses them (testbed-44m 64,
// LLaMA-2/3 128).
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

template <int HD>
__global__ void __launch_bounds__(kWarps * 32) flash_attention_kernel(const bf16* __restrict__ q,
                                                                      const bf16* __restrict__ k,
                                                                      const bf16* __restrict__ v, bf16* __restrict__ out,
                                                                      int T, int past, int nh, int nkv, int64_t ldq,
                                                                      int64_t ldk, int64_t ldo, float scale_log2) {
  constexpr int KS = HD / 16;        // k-steps of Q K^T
  constexpr int NT = kBlockN / 8;    // 8-key tiles per key tile
  constexpr int OT = HD / 8;         // 8-wide output tiles
  constexpr int kStride = HD + 8;    // padded row of the K tile (bf16)
  constexpr int vStride = kBlockN + 8;
  __shared__ __align__(16) bf16 ks[kBlockN * kStride];
  __shared__ __align__(16) bf16 vt[HD * vStride];

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int q0 = blockIdx.x * kBlockM, head = blockIdx.y, b = blockIdx.z;
  const int kvh = head / (nh / nkv);
  const int keys_total = past + T;
  const bf16* qb = q + int64_t(b) * T * ldq + int64_t(head) * HD;
  const bf16* kb = k + int64_t(b) * keys_total * ldk + int64_t(kvh) * HD;
  const bf16* vb = v + int64_t(b) * keys_total * ldk + int64_t(kvh) * HD;

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

  // Keys this block can see: up to the last query's position.
  const int last_key = min(keys_total - 1, past + min(q0 + kBlockM, T) - 1);
  const int ntiles = last_key / kBlockN + 1;
  for (int tile = 0; tile < ntiles; ++tile) {
    const int key0 = tile * kBlockN;
    __syncthreads();  // the previous tile is no longer read
    // K tile [key][hd], 8 bf16 (16 bytes) per load, consecutive threads along a key's row.
    for (int idx = threadIdx.x; idx < kBlockN * HD / 8; idx += blockDim.x) {
      const int kr = idx / (HD / 8), c8 = (idx % (HD / 8)) * 8;
      const int key = key0 + kr;
      uint4 kv = make_uint4(0, 0, 0, 0);
      if (key < keys_total) kv = *reinterpret_cast<const uint4*>(kb + int64_t(key) * ldk + c8);
      *reinterpret_cast<uint4*>(ks + kr * kStride + c8) = kv;
    }
    // V tile transposed [hd][key]: consecutive threads take consecutive keys, so that their
    // 2-byte stores into a row of vt do not collide on shared-memory banks.
    for (int idx = threadIdx.x; idx < kBlockN * HD / 8; idx += blockDim.x) {
      const int kr = idx % kBlockN, c8 = (idx / kBlockN) * 8;
      const int key = key0 + kr;
      uint4 vv = make_uint4(0, 0, 0, 0);
      if (key < keys_total) vv = *reinterpret_cast<const uint4*>(vb + int64_t(key) * ldk + c8);
      const bf16* ve = reinterpret_cast<const bf16*>(&vv);
#pragma unroll
      for (int e = 0; e < 8; ++e) vt[(c8 + e) * vStride + kr] = ve[e];
    }
    __syncthreads();
    // The warp skips tiles entirely after its rows (causal).
    if (key0 > past + q0 + warp * 16 + 15) continue;

    float s[NT][4];
#pragma unroll
    for (int j = 0; j < NT; ++j) {
      s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll
      for (int st = 0; st < KS; ++st) {
        const bf16* kr = ks + (j * 8 + g) * kStride + st * 16 + 2 * t;
        mma_bf16(s[j], qa[st], *reinterpret_cast<const uint32_t*>(kr), *reinterpret_cast<const uint32_t*>(kr + 8));
      }
    }
    // Scale (in log2 units), mask, row maxima.
    float mx_lo = m_lo, mx_hi = m_hi;
#pragma unroll
    for (int j = 0; j < NT; ++j) {
      const int c = key0 + j * 8 + 2 * t;
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        s[j][e] = (c + e <= pos_lo) ? s[j][e] * scale_log2 : -FLT_MAX;
        s[j][2 + e] = (c + e <= pos_hi) ? s[j][2 + e] * scale_log2 : -FLT_MAX;
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
    // O += P V, P from the S accumulators of 8-key tiles 2kk and 2kk+1.
#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk) {
      uint32_t pa[4];
      pa[0] = pack_bf16(s[2 * kk][0], s[2 * kk][1]);
      pa[1] = pack_bf16(s[2 * kk][2], s[2 * kk][3]);
      pa[2] = pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]);
      pa[3] = pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
      for (int j = 0; j < OT; ++j) {
        const bf16* vr = vt + (j * 8 + g) * vStride + kk * 16 + 2 * t;
        mma_bf16(o[j], pa, *reinterpret_cast<const uint32_t*>(vr), *reinterpret_cast<const uint32_t*>(vr + 8));
      }
    }
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
      flash_attention_kernel<64><<<grid, kWarps * 32, 0, s>>>(q, k, v, out, int(T), int(past), int(nh), int(nkv), ldq,
                                                              ldk, ldo, scale_log2);
      break;
    case 128:
      flash_attention_kernel<128><<<grid, kWarps * 32, 0, s>>>(q, k, v, out, int(T), int(past), int(nh), int(nkv),
                                                               ldq, ldk, ldo, scale_log2);
      break;
    default:
      throw_error("attention on the GPU supports head_dim 64 and 128, not " + std::to_string(hd));
  }
  LB_CUDA_LAUNCH_CHECK();
}

}  // namespace lowbit::cuda
