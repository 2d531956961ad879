// libFuzzer target: the safetensors header parser on arbitrary bytes. Bad input must end in
// lowbit::Error, never a crash, a sanitizer report or another exception.
#include "core/error.h"
#include "formats/safetensors.h"

#include <cstddef>
#include <cstdint>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    lowbit::SafetensorsHeader h = lowbit::parse_safetensors_header(data, size, "fuzz");
    // Whatever parsed must describe bytes inside the input.
    for (const auto& e : h.entries)
      if (h.data_start + e.end > size) __builtin_trap();
  } catch (const lowbit::Error&) {
  }
  return 0;
}
