#include "backend/cuda/compact_weight.cuh"

#include "backend/cuda/rounding.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>

namespace lowbit::cuda {

namespace {

constexpr int kThreads = 256;

__device__ float bf16_bits_to_f32(uint16_t h) { return __uint_as_float(uint32_t(h) << 16); }

__device__ void store(float* out, float v) { *out = v; }
__device__ void store(uint16_t* out, float v) { *out = __bfloat16_as_ushort(__float2bfloat16_rn(v)); }

// Out: float (the fp32 weight) or uint16_t (its bf16 rounding). Index: uint32_t for weights of
// fewer than 2^32 elements (every linear of the LLaMA family up to 70B; 32-bit divisions by the
// group size and the columns are several times cheaper than 64-bit ones), else int64_t. The
// arithmetic on the values is the same either way.
template <typename Out, typename Index>
__global__ void expand_kernel(CompactWeightView w, Out* __restrict__ out) {
  const Index n = Index(w.rows * w.cols), cols = Index(w.cols), gs = Index(w.group_size);
  const Index gpr = (cols + gs - 1) / gs;
  const Index stride = Index(gridDim.x) * Index(blockDim.x);
  for (Index i = Index(blockIdx.x) * Index(blockDim.x) + Index(threadIdx.x); i < n; i += stride) {
    if (w.kind == CompactWeightView::kHalf16) {
      const uint16_t h = w.half[i];
      store(out + i, w.half_is_bf16 ? bf16_bits_to_f32(h) : __half2float(__ushort_as_half(h)));
      continue;
    }
    const int code = w.code_bits == 8 ? int(w.codes[i]) : int((w.codes[i >> 1] >> (4 * (i & 1))) & 0xF);
    Index s;
    if (w.flat_groups) {
      s = i / gs;
    } else {
      const Index r = i / cols, c = i - r * cols;
      s = r * gpr + (w.g_idx != nullptr ? Index(w.g_idx[c]) : c / gs);
    }
    float v;
    if (w.kind == CompactWeightView::kInt) {
      v = __fmul_rn(w.scales[s], __fsub_rn(float(code), w.zeros[s]));
    } else {
      v = __fmul_rn(w.codebook[code], w.scales[s]);
      if (w.tau != nullptr) v = __fadd_rn(v, w.tau[i / gs]);
    }
    v = round_to_mode(v, w.round_to);
    store(out + i, v);
  }
}

template <typename Out>
void expand(const CompactWeightView& w, Out* out, cudaStream_t s) {
  const int64_t n = w.rows * w.cols;
  if (n == 0) return;
  const unsigned blocks = unsigned(std::min<int64_t>((n + kThreads - 1) / kThreads, 1 << 16));
  // The grid-stride loop's last index stays below n + blocks * kThreads <= n + 2^24.
  if (n + (int64_t(blocks) * kThreads) < (int64_t(1) << 32)) {
    expand_kernel<Out, uint32_t><<<blocks, kThreads, 0, s>>>(w, out);
  } else {
    expand_kernel<Out, int64_t><<<blocks, kThreads, 0, s>>>(w, out);
  }
  LB_CUDA_LAUNCH_CHECK();
}

}  // namespace

void expand_compact_weight(const CompactWeightView& w, float* out, cudaStream_t s) { expand(w, out, s); }

void expand_compact_weight_bf16(const CompactWeightView& w, uint16_t* out, cudaStream_t s) { expand(w, out, s); }

}  // namespace lowbit::cuda
