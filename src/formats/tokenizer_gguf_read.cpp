// GgufTokenizerData from a GGUF file's metadata (the keys listed in tokenizer_gguf.h).
#include "core/error.h"
#include "formats/gguf.h"
#include "formats/tokenizer_gguf.h"

#include <limits>

namespace lowbit {

GgufTokenizerData read_gguf_tokenizer_data(const GgufFile& f) {
  GgufTokenizerData d;
  d.architecture = f.get_string("general.architecture").value_or("");
  auto model = f.get_string("tokenizer.ggml.model");
  LB_CHECK(model.has_value(), "'{}': no tokenizer.ggml.model: the file holds no tokenizer", f.path());
  d.model = *model;
  d.pre = f.get_string("tokenizer.ggml.pre").value_or("");
  LB_CHECK(f.has("tokenizer.ggml.tokens"), "'{}': no tokenizer.ggml.tokens: the file holds no vocabulary", f.path());
  d.tokens = f.get_strings("tokenizer.ggml.tokens");
  if (f.has("tokenizer.ggml.scores")) {
    for (double s : f.get_floats("tokenizer.ggml.scores")) d.scores.push_back(float(s));  // stored as f32
  }
  if (f.has("tokenizer.ggml.token_type")) {
    for (int64_t t : f.get_ints("tokenizer.ggml.token_type")) {
      LB_CHECK(t >= std::numeric_limits<int32_t>::min() && t <= std::numeric_limits<int32_t>::max(),
               "'{}': tokenizer.ggml.token_type holds {}, not a token type", f.path(), t);
      d.token_type.push_back(int32_t(t));
    }
  }
  if (f.has("tokenizer.ggml.merges")) d.merges = f.get_strings("tokenizer.ggml.merges");
  d.bos_id = f.get_int("tokenizer.ggml.bos_token_id");
  d.eos_id = f.get_int("tokenizer.ggml.eos_token_id");
  d.unk_id = f.get_int("tokenizer.ggml.unknown_token_id");
  d.pad_id = f.get_int("tokenizer.ggml.padding_token_id");
  d.sep_id = f.get_int("tokenizer.ggml.seperator_token_id");
  d.add_bos_token = f.get_bool("tokenizer.ggml.add_bos_token");
  d.add_eos_token = f.get_bool("tokenizer.ggml.add_eos_token");
  d.add_space_prefix = f.get_bool("tokenizer.ggml.add_space_prefix");
  d.chat_template = f.get_string("tokenizer.chat_template");
  return d;
}

}  // namespace lowbit
