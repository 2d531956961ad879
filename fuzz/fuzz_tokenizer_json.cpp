// libFuzzer target: loading a tokenizer.json from arbitrary bytes, then encoding and decoding a
// few texts with whatever loaded. Bad input must end in lowbit::Error, never a crash.
#include "core/error.h"
#include "formats/tokenizer.h"

#include <cstddef>
#include <cstdint>
#include <string>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::unique_ptr<lowbit::Tokenizer> tok;
  try {
    tok = lowbit::load_hf_tokenizer_json(std::string(reinterpret_cast<const char*>(data), size), "fuzz");
  } catch (const lowbit::Error&) {
    return 0;
  }
  for (const char* text : {"Hello world", "  <s>a\n\n b</s> 12345 ", "\xc3\xbc\xe6\x97\xa5\xf0\x9f\x98\x80", ""}) {
    try {
      auto ids = tok->encode(text, lowbit::BosMode::Default);
      tok->decode(ids);
    } catch (const lowbit::Error&) {
    }
  }
  return 0;
}
