// The input statistics of one block's linears (layer_input_stats in calib/block_driver.h) with the
// model on the GPU: the blocks before `layer` run there on chunks of windows, then the inputs of
// `layer`'s linears (bf16, as the GPU forward computes them) give GPTQ's Hessian (fp32 sums,
// 2 / windows * sum X^T X), the per-channel max |x| and mean |x|. q/k/v share one entry, as do
// gate/up.
#pragma once

#include "calib/block_driver.h"
#include "model/cuda_model.h"

namespace lowbit {

BlockContext::StatsMap layer_input_stats_cuda(const LlamaModel& model, const std::vector<std::vector<int32_t>>& windows,
                                              int64_t layer, cuda::Context& ctx);

}  // namespace lowbit
