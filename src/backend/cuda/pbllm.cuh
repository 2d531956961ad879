// GPU kernel of PB-LLM's column loop (quant/pbllm.h defines the algorithm, step 5; quant/pbllm_cuda.cpp
// drives it). Matrices are row-major; W is [rows, cols] fp32, the inverse factor [cols, cols].
#pragma once

#include "backend/cuda/ops.cuh"

#include <cstdint>

namespace lowbit::cuda {

struct PbllmBlockArgs {
  float* W;                    // [rows, cols] the weights, updated in place by the lazy batches
  const float* hinv;           // [cols, cols] upper Cholesky factor of the damped H^-1
  const uint8_t* mask;         // [rows, cols] 1 = binarized
  const float* mu;             // [rows, ngroups] the binarizer's mean and scale per row and group
  const float* alpha;
  const float* high_scale;     // [rows] the salient weights' grid
  const float* high_zero;
  uint8_t* sign;               // [rows, cols] binarized: 1 where w - mu > 0
  uint8_t* at_mean;            // [rows, cols] binarized: 1 where w - mu == 0 (the value is mu)
  uint8_t* code;               // [rows, cols] salient: the grid code
  float* q;                    // [rows, cols] the quantized value
  float* err;                  // [rows, count] (w - q) / U[i, i]
  double* loss;                // [rows], accumulated: (w - q)^2 / U[i, i]^2, each term in fp32
  int64_t rows, cols, i1, count, group_size, ngroups;
  int maxq;
};
// Quantizes columns i1 .. i1 + count - 1 (count <= 128, within one group) row by row with the
// mixed quantizer, each column's error carried to the block's later columns, every product and
// sum rounded on its own as the host code (-ffp-contract=off) does; writes the block's scaled
// errors for the lazy update (W[:, i1 + count:] -= err . U[i1:i1 + count, i1 + count:]).
void pbllm_block(const PbllmBlockArgs& a, cudaStream_t s);

}  // namespace lowbit::cuda
