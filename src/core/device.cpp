#include "core/device.h"

#include "core/error.h"

#include <charconv>

namespace lowbit {

std::string Device::str() const { return is_cuda() ? "cuda:" + std::to_string(index) : "cpu"; }

const char* device_kind_name(Device::Kind k) { return k == Device::Kind::Cuda ? "cuda" : "cpu"; }

Device parse_device(std::string_view s) {
  Device d;
  if (s == "cpu") return d;
  LB_CHECK(s == "cuda" || s.starts_with("cuda:"), "device '{}': expected cpu, cuda or cuda:N", s);
  d.kind = Device::Kind::Cuda;
  if (s.size() > 5) {
    const char* b = s.data() + 5;
    auto [p, ec] = std::from_chars(b, s.data() + s.size(), d.index);
    LB_CHECK(ec == std::errc() && p == s.data() + s.size() && d.index >= 0, "device '{}': '{}' is not a device index",
             s, s.substr(5));
  }
  return d;
}

}  // namespace lowbit
