// Tokenizers, one interface for every kind lowbit reads:
//   - Hugging Face tokenizer.json (byte-level BPE as LLaMA-3 uses it, and the Metaspace/byte-fallback
//     BPE that transformers builds for LLaMA-2-style SentencePiece models),
//   - SentencePiece tokenizer.model (LLaMA-2), through the sentencepiece library,
//   - llama2.c tokenizer.bin / tok512.bin,
//   - the tokenizer.ggml.* metadata of a .gguf file (formats/tokenizer_gguf.h).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace lowbit {

// Which special tokens encode() adds.
//   Default: what the tokenizer adds on its own (transformers' add_special_tokens=True; the
//            LLaMA-3 tokenizer.json of April 2024 adds none, its later variant adds BOS,
//            LLaMA-2's SentencePiece tokenizer adds BOS).
//   On:      exactly one BOS at the start and nothing else.
//   Off:     none (transformers' add_special_tokens=False).
enum class BosMode { Default, On, Off };

struct SpecialToken {
  int32_t id;
  std::string text;
  std::string role;  // "bos", "eos", "unk", "pad" or "special"
};

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  // "hf-bpe-bytelevel (tokenizer.json)", "sentencepiece-bpe (tokenizer.model)", ...
  virtual std::string kind() const = 0;
  std::vector<int32_t> encode(std::string_view text, BosMode bos = BosMode::Default) const;
  // Ids to the exact bytes they stand for: special tokens as their text, like transformers'
  // decode with skip_special_tokens=False (the sentencepiece convention and llama2.c decode
  // control tokens to nothing, as their libraries do). Invalid ids throw.
  virtual std::string decode(std::span<const int32_t> ids) const = 0;
  virtual int32_t vocab_size() const = 0;
  virtual std::optional<int32_t> bos_id() const = 0;
  virtual std::optional<int32_t> eos_id() const = 0;
  virtual bool adds_bos_by_default() const = 0;
  virtual std::vector<SpecialToken> special_tokens() const = 0;
  // The stored form of one token (a vocabulary entry), for display.
  virtual std::string token_text(int32_t id) const = 0;

 protected:
  // The text's tokens with no special tokens added.
  virtual std::vector<int32_t> encode_plain(std::string_view text) const = 0;
  // The default special tokens around ids (the post-processor).
  virtual std::vector<int32_t> add_default_specials(std::vector<int32_t> ids) const = 0;
};

// How a SentencePiece tokenizer.model is applied. transformers itself has two conversions of
// such a model, and which one AutoTokenizer builds depends on the files beside it:
//   Llama:         transformers' LlamaTokenizer (what AutoTokenizer builds when
//                  tokenizer_config.json names LlamaTokenizer, as LLaMA-2 checkpoints do): BPE over
//                  the whole text, U+2581 prepended only when the text does not start with a space,
//                  special tokens split out, one leading space stripped on decode.
//   Generic:       transformers' generic SentencePiece conversion (what AutoTokenizer builds for a
//                  model directory with config.json and tokenizer.model but no
//                  tokenizer_config.json): spaces become U+2581, nothing is prepended.
//   SentencePiece: the sentencepiece library (whitespace-separated pieces, dummy prefix, special
//                  tokens as plain text): transformers' former "slow" tokenizer, which GPTQ's
//                  perplexity code loads with use_fast=False.
//   Auto:          what AutoTokenizer would build from the files present (Llama for a bare
//                  tokenizer.model).
enum class SpmConvention { Auto, Llama, Generic, SentencePiece };
const char* spm_convention_name(SpmConvention c);
SpmConvention parse_spm_convention(const std::string& name);  // throws on unknown names

struct TokenizerOptions {
  SpmConvention spm = SpmConvention::Auto;
};

// Loads the tokenizer of a model directory (tokenizer.json, else tokenizer.model, else
// tokenizer.bin/tok512.bin) or a tokenizer file (one of those, or a .gguf model file). Throws lowbit::Error naming the file and the
// problem.
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path, const TokenizerOptions& opt = {});

// Individual loaders.
// `what` names the source in errors; `kind` overrides the reported kind.
std::unique_ptr<Tokenizer> load_hf_tokenizer_json(const std::string& json_text, const std::string& what,
                                                  const std::string& tokenizer_config_json = "",
                                                  const std::string& kind = "");
std::unique_ptr<Tokenizer> load_sentencepiece(const std::string& path, SpmConvention convention);
std::unique_ptr<Tokenizer> load_llama2c_tokenizer(const std::string& path);

// The path load_tokenizer would read for a model directory or file; empty when none is found.
std::string find_tokenizer_file(const std::string& path);

}  // namespace lowbit
