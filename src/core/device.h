// The device a command or a study runs on, decided in one place (the CLI's --device, a study's
// `device`) and passed down to whatever builds models, evaluators and quantization drivers.
#pragma once

#include <string>
#include <string_view>

namespace lowbit {

struct Device {
  enum class Kind { Cpu, Cuda };
  Kind kind = Kind::Cpu;
  int index = 0;  // cuda:N

  bool is_cuda() const { return kind == Kind::Cuda; }
  std::string str() const;  // "cpu", "cuda:0"
  bool operator==(const Device&) const = default;
};

// "cpu", "cuda", "cuda:N". Throws lowbit::Error naming the text for anything else. Whether the
// device exists is checked by check_device_available (backend/device_check.h).
Device parse_device(std::string_view text);
const char* device_kind_name(Device::Kind k);  // "cpu", "cuda"

}  // namespace lowbit
