// Builds without CUDA: no GPU LLaVA-Next runner (check_device_available refuses a CUDA device
// before place_llava_next gets here; this says so again for any other caller).
#include "model/llava_next_device.h"

#include "core/error.h"

namespace lowbit {

std::unique_ptr<LlavaNextRunner> make_cuda_llava_next_runner(const LlavaNextModel&, int device) {
  fail("device cuda:{}: this lowbit was built without CUDA, so LLaVA-Next runs on the CPU only", device);
}

}  // namespace lowbit
