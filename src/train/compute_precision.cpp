#include "train/compute_precision.h"

#include "core/error.h"

#include <cstdlib>
#include <cstring>

namespace lowbit::train {

const char* compute_precision_name(ComputePrecision p) {
  switch (p) {
    case ComputePrecision::Fp32: return "fp32";
    case ComputePrecision::Tf32: return "tf32";
    case ComputePrecision::Bf16: return "bf16";
  }
  return "?";
}

ComputePrecision parse_compute_precision(std::string_view text) {
  for (ComputePrecision p : {ComputePrecision::Fp32, ComputePrecision::Tf32, ComputePrecision::Bf16})
    if (text == compute_precision_name(p)) return p;
  LB_CHECK(false, "--compute '{}': unknown precision (known: fp32, tf32, bf16)", text);
  return ComputePrecision::Fp32;
}

ComputePrecision default_compute_precision(const Device& d) {
  return d.is_cuda() ? ComputePrecision::Bf16 : ComputePrecision::Fp32;
}

void check_compute_precision(const Device& d, ComputePrecision p) {
  LB_CHECK(d.is_cuda() || p == ComputePrecision::Fp32,
           "--compute {} on device {}: the CPU trains in fp32 only (tf32 and bf16 are GPU modes)",
           compute_precision_name(p), d.str());
}

ComputePrecision resolve_compute_precision(const Device& d, std::string_view text) {
  const ComputePrecision p = text.empty() ? default_compute_precision(d) : parse_compute_precision(text);
  check_compute_precision(d, p);
  return p;
}

bool tf32_attention(ComputePrecision p) {
  if (p == ComputePrecision::Fp32) return false;
  const char* v = std::getenv("LOWBIT_TRAIN_ATTENTION");
  if (v == nullptr || std::strcmp(v, "fp32") == 0) return false;
  LB_CHECK(std::strcmp(v, "tf32") == 0, "LOWBIT_TRAIN_ATTENTION='{}': expected fp32 (the default) or tf32", v);
  return true;
}

}  // namespace lowbit::train
