// The tokenizer a GGUF file describes in its `tokenizer.ggml.*` metadata, built the way
// transformers builds it for AutoTokenizer.from_pretrained(dir, gguf_file=NAME)
// (transformers/integrations/gguf/gguf_tokenizer_mapping.py), so that the ids match the ones a
// transformers-based evaluation of the same file sees.
//
// The conversion is expressed as the tokenizer.json transformers' builders produce, handed to
// load_hf_tokenizer_json():
//
//   model "gpt2" (byte-level BPE; GPT2Tokenizer):
//     vocab        tokens, each in GPT-2's byte-to-unicode spelling; a token with a character
//                  outside that alphabet is respelled from its UTF-8 bytes
//     merges       tokenizer.ggml.merges ("a b")
//     pre          "default", "gpt-2", "smollm" or absent: ByteLevel with GPT-2's regex;
//                  "llama-bpe" and the other names transformers maps to LLaMA-3's regex:
//                  Split(that regex, isolated) then ByteLevel without its own regex
//     decoder      ByteLevel
//   model "llama" (SentencePiece-style BPE; LlamaTokenizer):
//     vocab        tokens as stored (U+2581 for spaces, <0xNN> byte tokens)
//     merges       tokenizer.ggml.merges when present, else derived from the vocabulary and the
//                  scores (transformers' generate_merges: every split of a token into two
//                  vocabulary entries, ordered by the token's score, then by the lengths of the
//                  two halves in code points, longest first)
//     BPE options  byte_fallback, fuse_unk, no unk_token
//     pre          Metaspace(U+2581, prepend_scheme "first", split false)
//     decoder      Replace(U+2581 -> " "), ByteFallback, Fuse, Strip(one leading space)
//     tokenizer.ggml.pre must be absent or "default"; the architectures for which transformers
//     uses another SentencePiece builder (gemma*, phi3) are refused.
//   Both:
//     added tokens every CONTROL token (type 3; for gpt2 only those spelled in the byte
//                  alphabet) and the tokens named by bos/eos/unk/pad ids, as special; every
//                  USER_DEFINED token (type 4) as a plain added token; all matched whole in the
//                  raw text before the pre-tokenizer. Also the default special tokens of the
//                  class transformers builds with (GPT2Tokenizer: "<|endoftext|>"; LlamaTokenizer:
//                  "<s>", "</s>", "<unk>"), each at the next id after the vocabulary when the
//                  vocabulary lacks it (LLaMA-3's lacks "<|endoftext|>": it becomes id 128256, one
//                  past the model's embedding rows; lowbit keeps it, for parity)
//     bytes        a byte-level vocabulary may lack some byte tokens (SmolLM2's lacks 21); such
//                  bytes are dropped from the text, as the tokenizers library's BPE does without
//                  an unk_token
//     post         BOS before the text when add_bos_token (default true for "llama", false for
//                  "gpt2"), EOS after it when add_eos_token (default false)
// Any other tokenizer.ggml.model or tokenizer.ggml.pre is an error naming the value and the
// supported ones.
//
// Known departure of transformers from llama.cpp, kept here for parity: for pre "smollm"
// llama.cpp splits every digit apart before GPT-2's regex; transformers does not. SmolLM2's
// vocabulary has no multi-digit tokens and no merge of a space with a digit, so both give
// the same ids on it.
#pragma once

#include "formats/tokenizer.h"

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace lowbit {

class GgufFile;

// What a GGUF file's tokenizer metadata holds, key by key. Empty strings/vectors and nullopt
// stand for absent keys.
struct GgufTokenizerData {
  std::string architecture;          // general.architecture ("llama", ...)
  std::string model;                 // tokenizer.ggml.model: "gpt2" or "llama"
  std::string pre;                   // tokenizer.ggml.pre: "default", "llama-bpe", "smollm", ...
  std::vector<std::string> tokens;   // tokenizer.ggml.tokens, indexed by id
  std::vector<float> scores;         // tokenizer.ggml.scores (per token; SentencePiece log-probs)
  std::vector<int32_t> token_type;   // tokenizer.ggml.token_type: 1 normal, 2 unknown, 3 control,
                                     // 4 user-defined, 5 unused, 6 byte
  std::vector<std::string> merges;   // tokenizer.ggml.merges: "left right"
  std::optional<int64_t> bos_id;     // tokenizer.ggml.bos_token_id
  std::optional<int64_t> eos_id;     // tokenizer.ggml.eos_token_id
  std::optional<int64_t> unk_id;     // tokenizer.ggml.unknown_token_id
  std::optional<int64_t> pad_id;     // tokenizer.ggml.padding_token_id
  std::optional<int64_t> sep_id;     // tokenizer.ggml.seperator_token_id (llama.cpp's spelling)
  std::optional<bool> add_bos_token;     // tokenizer.ggml.add_bos_token
  std::optional<bool> add_eos_token;     // tokenizer.ggml.add_eos_token
  std::optional<bool> add_space_prefix;  // tokenizer.ggml.add_space_prefix (transformers ignores it)
  std::optional<std::string> chat_template;  // tokenizer.chat_template
};

// The tokenizer.json and tokenizer_config.json (bos_token/eos_token) equivalent to d.
struct GgufTokenizerJson {
  std::string tokenizer_json;
  std::string tokenizer_config_json;
};
GgufTokenizerJson gguf_tokenizer_json(const GgufTokenizerData& d, const std::string& what);

// Builds the tokenizer; `what` names the source (the .gguf path) in errors. Throws
// lowbit::Error on inconsistent or unsupported metadata.
std::unique_ptr<Tokenizer> load_gguf_tokenizer(const GgufTokenizerData& d, const std::string& what);

// Reads the keys above from an open GGUF file (tokenizer_gguf_read.cpp).
GgufTokenizerData read_gguf_tokenizer_data(const GgufFile& f);

}  // namespace lowbit
