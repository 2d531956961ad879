// GPU kernels of BiLLM's two searches (quant/billm.h, steps b and c; quant/billm_cuda.cpp drives
// them): one thread per (candidate, row) runs backend/cuda/billm_rows.h, the code the CPU test
// checks bit for bit against the host searches, then each candidate's squared errors are summed
// in the host's order (chunk partials, then their combination, one thread per candidate).
// Row-wise inputs are transposed, [n, rows], so that a warp's threads (consecutive rows) read
// consecutive addresses; errors are [ncand, rows, n], the order of the sum.
#pragma once

#include "backend/cuda/cuda_util.h"

#include <cstdint>

namespace lowbit::cuda {

// Step b: e[c] for k = c + 1 salient columns, c < nk. sT [n, rows]; rank [n].
void billm_salient_errors(const float* sT, const int32_t* rank, int64_t rows, int64_t n, int64_t nk, float* e,
                          cudaStream_t s);
// Step c: e[c] for split splits[c], c < ncand. sT, absT, g3T [n, rows]; keepT [n, rows] 1 = not salient.
void billm_split_errors(const float* sT, const float* absT, const uint8_t* keepT, const float* g3T,
                        const float* splits, int64_t rows, int64_t n, int64_t ncand, float* e, cudaStream_t s);
// mean[c] = torch.mean of e[c] ([numel] values each, numel >= 8) in the host's summation order;
// partials: scratch of ncand * (numel / chunk) * 32 floats (chunk = billm_rows::chunk_of(numel)).
void billm_candidate_means(const float* e, int64_t ncand, int64_t numel, float* partials, float* mean,
                           cudaStream_t s);

}  // namespace lowbit::cuda
