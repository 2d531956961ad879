// Builds without CUDA: the device entry points of the methods' solves (gptq_quantize_on,
// gptq_inverse_factor_on, obs_hinv_device, pbllm_quantize_on, quip_products_on,
// billm_searches_on) decline, and each method solves on the host wherever its context lives (the
// CPU is the only device such a build runs).
#include "quant/billm.h"
#include "quant/gptq.h"
#include "quant/obs_hinv.h"
#include "quant/pbllm.h"
#include "quant/quip.h"

namespace lowbit {

std::optional<GptqResult> gptq_quantize_on(const BlockContext&, LinearKind, int64_t, int64_t, const InputStats&,
                                           const GptqOptions&, DType) {
  return std::nullopt;
}

std::optional<std::vector<float>> gptq_inverse_factor_on(const BlockContext&, const std::vector<double>&, int64_t,
                                                         double, double*) {
  return std::nullopt;
}

std::optional<ObsHinv> obs_hinv_device(const BlockContext&, const InputStats&, int64_t, double) { return std::nullopt; }

std::optional<PbllmResult> pbllm_quantize_on(const BlockContext&, const float*, int64_t, int64_t, const InputStats&,
                                             const PbllmOptions&, DType) {
  return std::nullopt;
}

std::unique_ptr<QuipProducts> quip_products_on(const BlockContext&) { return nullptr; }

std::unique_ptr<BillmSearches> billm_searches_on(const BlockContext&) { return nullptr; }

}  // namespace lowbit
