// Builds without CUDA: no GPU evaluation session (check_device_available refuses a CUDA device
// before open_eval_session gets here; this says so again for any other caller).
#include "eval/eval_session.h"

#include "core/error.h"

namespace lowbit {

std::unique_ptr<EvalSession> open_cuda_eval_session(const Device& device) {
  fail("device {}: this lowbit was built without CUDA", device.str());
}

}  // namespace lowbit
