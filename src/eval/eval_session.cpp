#include "eval/eval_session.h"

#include "backend/device_check.h"
#include "core/error.h"
#ifdef LOWBIT_WITH_CUDA
#include "eval/cuda_eval.h"
#endif

namespace lowbit {

namespace {

class CpuPlacedModel final : public PlacedModel {
 public:
  explicit CpuPlacedModel(const LlamaModel& m) : model_(m) {}
  PerplexityResult perplexity(const std::vector<std::vector<int32_t>>& windows, int64_t,
                              const PerplexityProgress& progress) override {
    return lowbit::perplexity(model_, windows, progress);
  }
  KlDivergenceResult kl_divergence(PlacedModel& base, const std::vector<std::vector<int32_t>>& windows,
                                   const KlDivergenceProgress& progress) override {
    auto* b = dynamic_cast<CpuPlacedModel*>(&base);
    LB_CHECK(b != nullptr, "KL-divergence: the base model is placed on another device than the model (cpu)");
    return lowbit::kl_divergence(b->model_, model_, windows, progress);
  }
  std::unique_ptr<McBackend> mc_backend(int64_t max_length) override {
    return make_cpu_mc_backend(model_, max_length);
  }
  Tensor logits(std::span<const int32_t> ids) override {
    return model_.forward(ids);
  }

 private:
  const LlamaModel& model_;
};

class CpuEvalSession final : public EvalSession {
 public:
  const Device& device() const override { return device_; }
  std::string name() const override { return "cpu"; }
  std::unique_ptr<PlacedModel> place(const LlamaModel& model, bool) override {
    return std::make_unique<CpuPlacedModel>(model);
  }

 private:
  Device device_;
};

}  // namespace

std::unique_ptr<EvalSession> open_eval_session(const Device& device) {
  check_device_available(device);
#ifdef LOWBIT_WITH_CUDA
  if (device.is_cuda()) return open_cuda_eval_session(device);
#endif
  LB_CHECK(!device.is_cuda(), "device {}: this lowbit was built without CUDA", device.str());
  return std::make_unique<CpuEvalSession>();
}

}  // namespace lowbit
