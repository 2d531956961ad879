// libFuzzer target: the GGUF reader, ggml dequantization and the LLaMA-from-GGUF mapping on
// arbitrary bytes. Bad input must end in lowbit::Error, never a crash, a sanitizer report or
// another exception.
#include "core/error.h"
#include "formats/checkpoint.h"
#include "formats/ggml_quants.h"
#include "formats/gguf.h"
#include "formats/gguf_llama.h"

#include <cstddef>
#include <cstdint>
#include <vector>

namespace {

// Tensors larger than this many elements are not dequantized (the parser has already checked
// that their bytes lie inside the input; only the output allocation would be large).
constexpr int64_t kMaxElements = 1 << 20;

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::shared_ptr<const lowbit::GgufFile> f;
  try {
    f = lowbit::GgufFile::parse(data, size, "fuzz");
  } catch (const lowbit::Error&) {
    return 0;
  }
  // Whatever parsed must describe bytes inside the input.
  for (const auto& t : f->tensors())
    if (f->data_offset() + t.offset + t.nbytes > size) __builtin_trap();
  for (const auto& [key, v] : f->metadata()) {
    (void)lowbit::GgufFile::describe(v);
    try {
      (void)f->get_ints(key);
    } catch (const lowbit::Error&) {
    }
    try {
      (void)f->get_floats(key);
    } catch (const lowbit::Error&) {
    }
    try {
      (void)f->get_strings(key);
    } catch (const lowbit::Error&) {
    }
  }
  std::vector<float> out;
  for (const auto& t : f->tensors()) {
    if (t.numel() > kMaxElements) continue;
    out.assign(size_t(t.numel()), 0.0f);
    try {
      f->dequantize(t, out.data());
    } catch (const lowbit::Error&) {
    }
  }
  try {
    const lowbit::LlamaConfig c = lowbit::gguf_llama_config(*f);
    auto w = lowbit::gguf_llama_weights(f, c);
    lowbit::validate_llama_weights(c, *w, "fuzz");
    for (const auto& name : w->names()) {
      int64_t n = 1;
      for (int64_t d : w->info(name)->shape) n *= d;
      if (n <= kMaxElements) (void)w->get(name);
    }
  } catch (const lowbit::Error&) {
  }
  return 0;
}
