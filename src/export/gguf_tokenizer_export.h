// The tokenizer of a Hugging Face model directory as GGUF `tokenizer.ggml.*` metadata, the way
// llama.cpp's convert_hf_to_gguf.py describes it (the keys formats/tokenizer_gguf.h reads):
//
//   tokenizer.model (SentencePiece)  model "llama", pre "default"; tokens, scores and types from
//                                    the model's pieces (SentencePiece's piece types are ggml's
//                                    token types: 1 normal, 2 unknown, 3 control, 4 user-defined,
//                                    5 unused, 6 byte)
//   tokenizer.json (byte-level BPE)  model "gpt2"; tokens from the vocabulary and added tokens
//                                    (special: control, others: user-defined), merges "a b";
//                                    pre from the pre-tokenizer: LLaMA-3's Split regex
//                                    "llama-bpe", individual Digits then ByteLevel "smollm",
//                                    ByteLevel alone "gpt-2"
//
// Ids of bos/eos/unk/pad come from tokenizer_config.json (by token text) or config.json;
// add_bos_token from tokenizer_config.json, else the SentencePiece default (true) or the BPE
// post-processor's template. A vocabulary shorter than the embedding is padded with "[PADn]"
// tokens of type unused, as the converter does.
#pragma once

#include "formats/llama_config.h"
#include "formats/tokenizer_gguf.h"

#include <filesystem>
#include <optional>
#include <string>

namespace lowbit {

class GgufWriter;

// The tokenizer metadata of `dir`, or nullopt when it has no tokenizer.json or tokenizer.model
// (`why` says what was found). Throws lowbit::Error for a tokenizer llama.cpp cannot describe.
std::optional<GgufTokenizerData> gguf_tokenizer_of(const std::filesystem::path& dir, const LlamaConfig& c,
                                                   std::string& why);
void write_gguf_tokenizer(GgufWriter& w, const GgufTokenizerData& d);

}  // namespace lowbit
