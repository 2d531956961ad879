// Evaluation on the GPU (built with the CUDA backend): perplexity windows in batches and the
// multiple-choice backend, over a CudaModel.
#pragma once

#include "eval/eval_session.h"
#include "eval/kl_divergence.h"
#include "eval/multiple_choice.h"
#include "eval/perplexity.h"
#include "model/cuda_model.h"

#include <memory>

namespace lowbit {

PerplexityResult perplexity_cuda(CudaModel& model, const std::vector<std::vector<int32_t>>& windows, int64_t batch,
                                 const PerplexityProgress& progress = {});

// KL-divergence (eval/kl_divergence.h) with both models on the GPU (one context): per window,
// each model's final hidden states (CudaModel::forward_cached, bf16 GEMMs with float32
// accumulation), its LM head in chunks of 256 rows, the float32 logits reduced per row on the GPU
// in float64 (cuda::kld_rows, the formulas of kld_rows) and only the per-row values downloaded
// into the KlDivergenceAccumulator the CPU path uses. Both models hold one KV cache of a
// window's length.
KlDivergenceResult kl_divergence_cuda(CudaModel& base, CudaModel& model, const std::vector<std::vector<int32_t>>& windows,
                                      const KlDivergenceProgress& progress = {});

std::unique_ptr<McBackend> make_cuda_mc_backend(CudaModel& model, int64_t max_length);


}  // namespace lowbit
