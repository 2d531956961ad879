#include "backend/cuda/billm.cuh"

#include "backend/cuda/billm_rows.h"

namespace lowbit::cuda {

namespace {

namespace br = billm_rows;

constexpr int kThreads = 128;

__global__ void __launch_bounds__(kThreads) salient_kernel(const float* __restrict__ sT, const int32_t* __restrict__ rank,
                                                           int64_t rows, int n, float* __restrict__ e) {
  __shared__ int32_t rk[br::kMaxN];
  for (int j = threadIdx.x; j < n; j += kThreads) rk[j] = rank[j];
  __syncthreads();
  const int64_t r = blockIdx.x * int64_t(kThreads) + threadIdx.x;
  const int64_t c = blockIdx.y;
  if (r >= rows) return;
  br::salient_row(n, [&](int j) { return sT[int64_t(j) * rows + r]; }, rk, int(c + 1), e + (c * rows + r) * n);
}

__global__ void __launch_bounds__(kThreads) split_kernel(const float* __restrict__ sT, const float* __restrict__ absT,
                                                         const uint8_t* __restrict__ keepT,
                                                         const float* __restrict__ g3T,
                                                         const float* __restrict__ splits, int64_t rows, int n,
                                                         float* __restrict__ e) {
  const int64_t r = blockIdx.x * int64_t(kThreads) + threadIdx.x;
  const int64_t c = blockIdx.y;
  if (r >= rows) return;
  br::split_row(
      n, [&](int j) { return sT[int64_t(j) * rows + r]; }, [&](int j) { return absT[int64_t(j) * rows + r]; },
      [&](int j) { return keepT[int64_t(j) * rows + r] != 0; }, [&](int j) { return g3T[int64_t(j) * rows + r]; },
      splits[c], e + (c * rows + r) * n);
}

// One thread per (candidate, chunk, partial): 32 consecutive threads read 32 consecutive values.
__global__ void partials_kernel(const float* __restrict__ e, int64_t ncand, int64_t numel, int64_t chunk,
                                int64_t nchunks, float* __restrict__ partials) {
  const int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (t >= ncand * nchunks * br::kPartials) return;
  const int q = int(t % br::kPartials);
  const int64_t k = (t / br::kPartials) % nchunks, c = t / (br::kPartials * nchunks);
  partials[t] = br::chunk_partial(e + c * numel + k * chunk, chunk, q);
}

__global__ void means_kernel(const float* __restrict__ e, const float* __restrict__ partials, int64_t ncand,
                             int64_t numel, int64_t chunk, int64_t nchunks, float* __restrict__ mean) {
  const int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (c >= ncand) return;
  const float sum = br::sum_from_chunks(partials + c * nchunks * br::kPartials, e + c * numel + nchunks * chunk, numel);
  mean[c] = br::div(sum, float(numel));
}

void check_row_length(int64_t n) {
  if (n < 8 || n > br::kMaxN)
    throw_error("billm searches on the GPU: blocks of 8.." + std::to_string(br::kMaxN) + " columns, not " +
                std::to_string(n));
}

}  // namespace

void billm_salient_errors(const float* sT, const int32_t* rank, int64_t rows, int64_t n, int64_t nk, float* e,
                          cudaStream_t s) {
  check_row_length(n);
  if (nk < 1 || rows < 1) return;
  const dim3 grid(unsigned((rows + kThreads - 1) / kThreads), unsigned(nk));
  salient_kernel<<<grid, kThreads, 0, s>>>(sT, rank, rows, int(n), e);
  LB_CUDA_LAUNCH_CHECK();
}

void billm_split_errors(const float* sT, const float* absT, const uint8_t* keepT, const float* g3T,
                        const float* splits, int64_t rows, int64_t n, int64_t ncand, float* e, cudaStream_t s) {
  check_row_length(n);
  if (ncand < 1 || rows < 1) return;
  const dim3 grid(unsigned((rows + kThreads - 1) / kThreads), unsigned(ncand));
  split_kernel<<<grid, kThreads, 0, s>>>(sT, absT, keepT, g3T, splits, rows, int(n), e);
  LB_CUDA_LAUNCH_CHECK();
}

void billm_candidate_means(const float* e, int64_t ncand, int64_t numel, float* partials, float* mean,
                           cudaStream_t s) {
  if (numel < 8) throw_error("billm searches on the GPU: " + std::to_string(numel) + " errors per candidate (< 8)");
  if (ncand < 1) return;
  const int64_t chunk = br::chunk_of(numel), nchunks = numel / chunk, nthreads = ncand * nchunks * br::kPartials;
  if (nthreads > 0) {
    partials_kernel<<<unsigned((nthreads + 255) / 256), 256, 0, s>>>(e, ncand, numel, chunk, nchunks, partials);
    LB_CUDA_LAUNCH_CHECK();
  }
  means_kernel<<<unsigned((ncand + 127) / 128), 128, 0, s>>>(e, partials, ncand, numel, chunk, nchunks, mean);
  LB_CUDA_LAUNCH_CHECK();
}

}  // namespace lowbit::cuda
