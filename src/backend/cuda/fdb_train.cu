#include "backend/cuda/fdb_train.cuh"

#include "backend/cuda/block_reduce.cuh"
#include "backend/cuda/rounding.cuh"

#include <algorithm>
#include <cfloat>
#include <cmath>

namespace lowbit::cuda {

namespace {

constexpr int kThreads = 256;

unsigned grid_for(int64_t n) { return grid_stride_blocks(n, kThreads); }

__device__ __forceinline__ bool plane_bit(const uint8_t* p, int64_t row_bytes, int64_t r, int64_t c) {
  return ((p[r * row_bytes + c / 8] >> (c % 8)) & 1u) != 0;
}

__global__ void fdb_dequantize_kernel(const uint8_t* b1, const uint8_t* b2, const float* alpha, float* w,
                                      int64_t rows, int64_t cols, int64_t group, int round_to) {
  const int64_t rb = (cols + 7) / 8, ng = cols / group;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < rows * cols;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / cols, c = i % cols;
    const float* a = alpha + 3 * (r * ng + c / group);
    const float p1 = plane_bit(b1, rb, r, c) ? 1.0f : 0.0f;
    const float p2 = plane_bit(b2, rb, r, c) ? 1.0f : 0.0f;
    // The CPU's order and roundings (no contraction into an fma).
    const float sum = __fadd_rn(__fmul_rn(a[0], p1), __fmul_rn(a[1], p2));
    w[i] = round_to_mode(__fadd_rn(sum, a[2]), round_to);
  }
}

// One warp per group.
__global__ void fdb_group_grad_kernel(const float* dw, const uint8_t* b1, const uint8_t* b2, float* dalpha,
                                      int64_t rows, int64_t cols, int64_t group) {
  const int64_t rb = (cols + 7) / 8, ng = cols / group;
  const int lane = int(threadIdx.x) % 32;
  const int64_t warps = int64_t(gridDim.x) * (blockDim.x / 32);
  for (int64_t s = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32; s < rows * ng; s += warps) {
    const int64_t r = s / ng, c0 = (s % ng) * group;
    double s1 = 0, s2 = 0, s0 = 0;
    for (int64_t c = c0 + lane; c < c0 + group; c += 32) {
      const double d = dw[r * cols + c];
      if (plane_bit(b1, rb, r, c)) s1 += d;
      if (plane_bit(b2, rb, r, c)) s2 += d;
      s0 += d;
    }
    for (int o = 16; o > 0; o >>= 1) {
      s1 += __shfl_down_sync(0xffffffffu, s1, o);
      s2 += __shfl_down_sync(0xffffffffu, s2, o);
      s0 += __shfl_down_sync(0xffffffffu, s0, o);
    }
    if (lane == 0) {
      dalpha[3 * s] += float(s1);
      dalpha[3 * s + 1] += float(s2);
      dalpha[3 * s + 2] += float(s0);
    }
  }
}

// One block per row: both log-softmaxes in fp64 (max, then the sums of exponentials), the KL and
// the entropies, then the gradient.
__global__ void dad_kernel(const float* teacher, float* student, double* loss, double* kl_out, double* weight_out,
                           int64_t V, int weight_mode, double gamma, double scale) {
  __shared__ float fshared[kThreads];
  __shared__ double dshared[kThreads];
  const int64_t r = blockIdx.x;
  const float* t = teacher + r * V;
  float* z = student + r * V;
  float mt = -FLT_MAX, ms = -FLT_MAX;
  for (int64_t i = threadIdx.x; i < V; i += kThreads) {
    mt = fmaxf(mt, t[i]);
    ms = fmaxf(ms, z[i]);
  }
  mt = block_tree_max<kThreads>(mt, fshared);
  ms = block_tree_max<kThreads>(ms, fshared);
  double st = 0, ss = 0;
  for (int64_t i = threadIdx.x; i < V; i += kThreads) {
    st += exp(double(t[i]) - double(mt));
    ss += exp(double(z[i]) - double(ms));
  }
  st = block_tree_sum<kThreads>(st, dshared);
  ss = block_tree_sum<kThreads>(ss, dshared);
  const double lse_t = double(mt) + log(st), lse_s = double(ms) + log(ss);
  double kl = 0, hp = 0, hpq = 0;
  for (int64_t i = threadIdx.x; i < V; i += kThreads) {
    const double lp = double(t[i]) - lse_t, lq = double(z[i]) - lse_s;
    const double p = exp(lp);
    if (p > 0) {
      kl += p * (lp - lq);
      hp -= p * lp;
    }
    hpq -= p * lq;
  }
  kl = block_tree_sum<kThreads>(kl, dshared);
  hp = block_tree_sum<kThreads>(hp, dshared);
  hpq = block_tree_sum<kThreads>(hpq, dshared);
  double w = 1;
  if (weight_mode == 1) w = pow(hp, gamma);
  if (weight_mode == 2) w = pow(hpq, gamma);
  const double g = scale * w;
  for (int64_t i = threadIdx.x; i < V; i += kThreads)
    z[i] = float(g * (exp(double(z[i]) - lse_s) - exp(double(t[i]) - lse_t)));
  if (threadIdx.x == 0) {
    loss[r] = g * kl;
    kl_out[r] = kl;
    weight_out[r] = w;
  }
}

}  // namespace

void fdb_dequantize_f32(const uint8_t* b1, const uint8_t* b2, const float* alpha, float* w, int64_t rows,
                        int64_t cols, int64_t group, cudaStream_t s, DType round_to) {
  if (rows * cols == 0) return;
  if (group <= 0 || cols % group != 0) throw_error("fdb_dequantize_f32: the group size does not divide the columns");
  if (round_to != DType::F32 && round_to != DType::BF16 && round_to != DType::F16)
    throw_error("fdb_dequantize_f32: weights are rounded to F32, BF16 or F16 only");
  const int mode = round_to == DType::BF16 ? kRoundBf16 : round_to == DType::F16 ? kRoundF16 : kRoundNone;
  fdb_dequantize_kernel<<<grid_for(rows * cols), kThreads, 0, s>>>(b1, b2, alpha, w, rows, cols, group, mode);
  LB_CUDA_LAUNCH_CHECK();
}

void fdb_group_grad_f32(const float* dw, const uint8_t* b1, const uint8_t* b2, float* dalpha, int64_t rows,
                        int64_t cols, int64_t group, cudaStream_t s) {
  if (rows * cols == 0) return;
  if (group <= 0 || cols % group != 0) throw_error("fdb_group_grad_f32: the group size does not divide the columns");
  fdb_group_grad_kernel<<<grid_for(rows * (cols / group) * 32), kThreads, 0, s>>>(dw, b1, b2, dalpha, rows, cols,
                                                                                  group);
  LB_CUDA_LAUNCH_CHECK();
}

void dad_loss_backward_f32(const float* teacher, float* student, double* loss, double* kl, double* weight,
                           int64_t rows, int64_t V, int weight_mode, double gamma, double scale, cudaStream_t s) {
  if (rows == 0) return;
  dad_kernel<<<unsigned(rows), kThreads, 0, s>>>(teacher, student, loss, kl, weight, V, weight_mode, gamma, scale);
  LB_CUDA_LAUNCH_CHECK();
}

}  // namespace lowbit::cuda
