#include "train/base_residency.h"

#include "core/error.h"

namespace lowbit::train {

const char* base_residency_name(BaseResidency r) {
  switch (r) {
    case BaseResidency::Auto: return "auto";
    case BaseResidency::On: return "on";
    case BaseResidency::Off: return "off";
  }
  return "?";
}

BaseResidency parse_base_residency(std::string_view text) {
  for (BaseResidency r : {BaseResidency::Auto, BaseResidency::On, BaseResidency::Off})
    if (text == base_residency_name(r)) return r;
  LB_CHECK(false, "--base-resident '{}': unknown value (known: auto, on, off)", text);
  return BaseResidency::Off;
}

BaseResidency resolve_base_residency(const Device& d, ComputePrecision p, BaseResidency r) {
  const bool applies = d.is_cuda() && p == ComputePrecision::Bf16;
  if (applies) return r;
  LB_CHECK(r != BaseResidency::On,
           "--base-resident on with --compute {} on device {}: a resident base is the GPU's bf16 mode's (--device "
           "cuda --compute bf16); use auto or off",
           compute_precision_name(p), d.str());
  return BaseResidency::Off;
}

bool resident_base_fits(int64_t resident_bytes, int64_t free_bytes, int64_t other_bytes) {
  const int64_t room = free_bytes - other_bytes;
  return room > 0 && double(resident_bytes) <= kResidentMargin * double(room);
}

}  // namespace lowbit::train
