// Whether a Device (core/device.h) can be used by this build on this machine: the one place,
// with the backend factory, that knows whether the CUDA backend was compiled in.
#pragma once

#include "core/device.h"

#include <string>

namespace lowbit {

bool cuda_backend_built();
// Throws lowbit::Error naming the device when this lowbit was built without CUDA, no CUDA device
// is present, or the index is out of range.
void check_device_available(const Device& d);
// The device's name as results record it ("cpu", or the GPU's name).
std::string device_display_name(const Device& d);

}  // namespace lowbit
