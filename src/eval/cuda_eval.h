// Evaluation on the GPU (built with the CUDA backend): perplexity windows in batches and the
// multiple-choice backend, over a CudaModel.
#pragma once

#include "eval/multiple_choice.h"
#include "eval/perplexity.h"
#include "model/cuda_model.h"

#include <memory>

namespace lowbit {

PerplexityResult perplexity_cuda(CudaModel& model, const std::vector<std::vector<int32_t>>& windows, int64_t batch,
                                 const PerplexityProgress& progress = {});

std::unique_ptr<McBackend> make_cuda_mc_backend(CudaModel& model, int64_t max_length);

}  // namespace lowbit
