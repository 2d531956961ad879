#include "train/step_engine.h"

#include "backend/device_check.h"
#include "core/error.h"

#include <cstdlib>

namespace lowbit::train {

bool StepEngine::can_hold_adapters(const LoraAdapters&) const { return false; }

namespace {

[[noreturn]] void no_held_adapters(const std::string& engine) {
  LB_CHECK(false, "training on {}: this engine does not hold adapters on its device", engine);
  std::abort();
}

}  // namespace

void StepEngine::hold_adapters(const LoraAdapters&, const AdamWState&) { no_held_adapters(name()); }
void StepEngine::release_adapters() {}
StepResult StepEngine::held_forward_backward(const Batch&, const StepOptions&, bool) { no_held_adapters(name()); }
double StepEngine::held_grad_norm() { no_held_adapters(name()); }
void StepEngine::held_adamw_step(double, double, const AdamWOptions&, double, int64_t) { no_held_adapters(name()); }
void StepEngine::download_held(LoraAdapters*, AdamWState*, LoraAdapters*) { no_held_adapters(name()); }

namespace {

class CpuStepEngine final : public StepEngine {
 public:
  explicit CpuStepEngine(const LlamaModel& model) : model_(model) {}
  std::string name() const override { return "cpu"; }
  StepResult forward_backward(const LoraAdapters* lora, const Batch& batch, const StepOptions& opt,
                              LoraAdapters* lora_grads, BaseGrads* base_grads) override {
    return train::forward_backward(model_, lora, batch, opt, lora_grads, base_grads);
  }
  StepResult forward_loss(const LoraAdapters* lora, const Batch& batch) override {
    return train::forward_loss(model_, lora, batch);
  }

 private:
  const LlamaModel& model_;
};

}  // namespace

std::unique_ptr<StepEngine> make_step_engine(const Device& d, const LlamaModel& model, const StepEngineOptions& o) {
  check_compute_precision(d, o.compute);
  StepEngineOptions r = o;
  r.base_resident = resolve_base_residency(d, o.compute, o.base_resident);
  check_device_available(d);
  if (d.is_cuda()) return make_cuda_step_engine(d, model, r);
  return std::make_unique<CpuStepEngine>(model);
}

std::unique_ptr<StepEngine> make_step_engine(const Device& d, const LlamaModel& model, ComputePrecision compute) {
  StepEngineOptions o;
  o.compute = compute;
  return make_step_engine(d, model, o);
}

}  // namespace lowbit::train
