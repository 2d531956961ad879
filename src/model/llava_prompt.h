// Prompts of LLaVA-NeXT's LLaMA-3 models (llama3-llava-next-8b): the conversation they were trained
// with (LLaVA-NeXT's conv_llava_llama_3, which lmms-eval's llava model applies), and its
// tokenization with image placeholders.
//
// The prompt is Meta-Llama-3's chat template over a system turn and one user turn:
//   <|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>
//   <|start_header_id|>user<|end_header_id|>\n\n{"<image>\n" x n_images}{question}<|eot_id|>
//   <|start_header_id|>assistant<|end_header_id|>\n\n
// (one line here; no newlines between the turns), each turn's content with surrounding whitespace
// trimmed as the template's `| trim` does.
#pragma once

#include "formats/tokenizer.h"

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace lowbit {

// conv_llava_llama_3's system message.
extern const char* const kLlavaLlama3System;
// The placeholder each image takes in a prompt before tokenization.
inline constexpr std::string_view kImagePlaceholder = "<image>";

std::string llava_llama3_prompt(std::string_view question, int64_t n_images,
                                std::string_view system = kLlavaLlama3System);

// Tokenizes a prompt with "<image>" placeholders as LLaVA-NeXT's tokenizer_image_token does: the
// text between placeholders encoded piece by piece with no special tokens added (the prompt carries
// its own <|begin_of_text|>), placeholder i replaced by counts[i] copies of image_token_id. The
// number of placeholders must equal counts.size().
std::vector<int32_t> tokenize_with_images(const Tokenizer& tok, std::string_view prompt,
                                          std::span<const int64_t> counts, int32_t image_token_id);

}  // namespace lowbit
