// Builds without CUDA: GPTQ's solves and the inverse factors of the methods built on it run on the
// host wherever their context lives (the CPU is the only device such a build runs).
#include "quant/gptq.h"
#include "quant/obs_hinv.h"

namespace lowbit {

std::optional<GptqResult> gptq_quantize_on(const BlockContext&, LinearKind, int64_t, int64_t, const InputStats&,
                                           const GptqOptions&, DType) {
  return std::nullopt;
}

std::optional<ObsHinv> obs_hinv_device(const BlockContext&, const InputStats&, int64_t, double) { return std::nullopt; }

}  // namespace lowbit
