#include "backend/device_check.h"

#include "core/error.h"

#ifdef LOWBIT_WITH_CUDA
#include "backend/cuda/cuda_util.h"
#endif

namespace lowbit {

bool cuda_backend_built() {
#ifdef LOWBIT_WITH_CUDA
  return true;
#else
  return false;
#endif
}

void check_device_available(const Device& d) {
  if (!d.is_cuda()) return;
#ifdef LOWBIT_WITH_CUDA
  const int n = cuda::device_count();
  LB_CHECK(n > 0, "device {}: no CUDA device is available", d.str());
  LB_CHECK(d.index < n, "device {}: there are {} CUDA devices", d.str(), n);
#else
  fail("device {}: this lowbit was built without the CUDA backend (nvcc was not found at build time)", d.str());
#endif
}

std::string device_display_name(const Device& d) {
  if (!d.is_cuda()) return "cpu";
#ifdef LOWBIT_WITH_CUDA
  return cuda::device_name(d.index);
#else
  return d.str();
#endif
}

}  // namespace lowbit
