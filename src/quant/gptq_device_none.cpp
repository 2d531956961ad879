// Builds without CUDA: GPTQ solves on the host wherever its context lives (the CPU is the only
// device such a build runs).
#include "quant/gptq.h"

namespace lowbit {

std::optional<GptqResult> gptq_quantize_on(const BlockContext&, const float*, int64_t, int64_t,
                                           const std::vector<double>&, const GptqOptions&, DType) {
  return std::nullopt;
}

}  // namespace lowbit
