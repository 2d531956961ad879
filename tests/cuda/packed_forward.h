// A model's forward on the GPU for comparing packed linears with the fake-quant bf16 weights
// (tests/cuda/test_w4a16.cpp, test_gemv_lowbit.cpp): logits of a prompt run as one batch of rows
// then three single-row decode steps (so both the batch-small and the many-row kernels run), and
// the perplexity of windows run two at a time.
#pragma once

#include "backend/cuda/cuda_util.h"
#include "eval/cuda_eval.h"
#include "model/cuda_model.h"

#include <cstdint>
#include <span>
#include <vector>

namespace lowbit::test {

struct PackedForward {
  std::vector<float> logits;  // [T, V]
  double ppl = 0;
};

inline PackedForward run_forward(CudaModel& gpu, const std::vector<int32_t>& ids,
                                 const std::vector<std::vector<int32_t>>& windows) {
  const int64_t T = int64_t(ids.size()), V = gpu.config().vocab_size;
  GpuKvCache cache = gpu.make_kv_cache(T);
  cuda::DeviceBuffer<cuda::bf16> rows;
  // The prompt in two pieces: a batch of rows, then single-row (decode) steps.
  const int64_t first = T - 3;
  gpu.forward_cached(std::span<const int32_t>(ids.data(), size_t(first)), cache, rows);
  cuda::DeviceBuffer<float> dl(size_t(T * V));
  gpu.lm_head(rows.get(), dl.get(), first);
  for (int64_t t = first; t < T; ++t) {
    gpu.forward_cached(std::span<const int32_t>(ids.data() + t, 1), cache, rows);
    gpu.lm_head(rows.get(), dl.get() + t * V, 1);
  }
  PackedForward out;
  out.logits.resize(size_t(T * V));
  cuda::download(out.logits.data(), dl.get(), out.logits.size(), gpu.context().stream());
  out.ppl = perplexity_cuda(gpu, windows, 2).ppl;
  return out;
}

}  // namespace lowbit::test
