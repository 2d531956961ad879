#include "backend/cuda/pbllm.cuh"

#include "backend/cuda/column_blocks.cuh"

namespace lowbit::cuda {

namespace {

// One thread per row, as gptq_block_kernel: the row's slice of the column block in registers and
// local memory, the block of the inverse factor in shared memory.
__global__ void __launch_bounds__(kColumnBlockRows) pbllm_block_kernel(PbllmBlockArgs a) {
  extern __shared__ float hs[];  // [count, count], U[i1 + i, i1 + j]
  const int64_t count = a.count;
  stage_factor_block(hs, a.hinv, a.cols, a.i1, count);
  const int64_t r = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (r >= a.rows) return;
  float w1[kColumnBlockCols];
  const float* wrow = a.W + r * a.cols;
  for (int64_t j = 0; j < count; ++j) w1[j] = wrow[a.i1 + j];
  const int64_t g = a.i1 / a.group_size;
  const float m = a.mu[r * a.ngroups + g], al = a.alpha[r * a.ngroups + g];
  const float sc = a.high_scale[r], z = a.high_zero[r];
  double loss = 0.0;
  for (int64_t i = 0; i < count; ++i) {
    const int64_t f = r * a.cols + a.i1 + i;
    const float w = w1[i];
    float q;
    if (a.mask[f]) {
      const float x = __fsub_rn(w, m);
      const float s = x > 0.0f ? 1.0f : (x < 0.0f ? -1.0f : 0.0f);
      q = __fadd_rn(__fmul_rn(s, al), m);
      a.sign[f] = s > 0.0f;
      a.at_mean[f] = s == 0.0f;
    } else {
      const float c = fminf(fmaxf(__fadd_rn(rintf(__fdiv_rn(w, sc)), z), 0.0f), float(a.maxq));
      a.code[f] = uint8_t(c);
      q = __fmul_rn(sc, __fsub_rn(float(uint8_t(c)), z));
    }
    a.q[f] = q;
    const float d = hs[i * count + i];
    const float diff = __fsub_rn(w, q);
    loss += double(__fdiv_rn(__fmul_rn(diff, diff), __fmul_rn(d, d)));
    const float e = __fdiv_rn(diff, d);
    a.err[r * count + i] = e;
    for (int64_t j = i + 1; j < count; ++j) w1[j] = __fsub_rn(w1[j], __fmul_rn(e, hs[i * count + j]));
  }
  a.loss[r] += loss;
}

}  // namespace

void pbllm_block(const PbllmBlockArgs& a, cudaStream_t s) { launch_column_block(pbllm_block_kernel, a, "pbllm", s); }

}  // namespace lowbit::cuda
