// Builds without CUDA: the CPU is the only device a training step runs on (check_device_available
// refuses a GPU before this is reached).
#include "train/step_engine.h"

#include "core/error.h"

namespace lowbit::train {

std::unique_ptr<StepEngine> make_cuda_step_engine(const Device& d, const LlamaModel&) {
  LB_CHECK(false, "training on {}: this lowbit was built without the CUDA backend", d.str());
  return nullptr;
}

}  // namespace lowbit::train
