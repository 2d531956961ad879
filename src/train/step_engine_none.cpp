// Builds without CUDA: the CPU is the only device a training step runs on (check_device_available
// refuses a GPU before this is reached).
#include "train/fdb_train_cuda.h"
#include "train/step_engine.h"

#include "core/error.h"

namespace lowbit::train {

std::unique_ptr<StepEngine> make_cuda_step_engine(const Device& d, const LlamaModel&, const StepEngineOptions&) {
  LB_CHECK(false, "training on {}: this lowbit was built without the CUDA backend", d.str());
  return nullptr;
}

std::unique_ptr<FdbCudaEngine> make_fdb_cuda_engine(const Device& d, const LlamaModel&,
                                                    const std::vector<std::array<QuantizedLinear, 7>>&, int64_t,
                                                    ComputePrecision) {
  LB_CHECK(false, "DB-LLM training on {}: this lowbit was built without the CUDA backend", d.str());
  return nullptr;
}

}  // namespace lowbit::train
