// One benchmark's evaluation of a LLaVA-Next model, as lmms-eval's llava model runs these tasks:
// per item, the task's question (doc_to_text) in LLaVA-NeXT's LLaMA-3 conversation with one
// "<image>\n" line before it (model/llava_prompt.h), greedy decoding of at most the task's
// max_new_tokens (stopping at the config's EOS ids and <|eot_id|>), the new tokens decoded with
// special tokens skipped (invalid UTF-8 replaced by U+FFFD, as the tokenizers library decodes),
// then the task's per-item record and aggregate (eval/vlm/vlm_task.h).
#pragma once

#include "eval/vlm/vlm_task.h"

#include <functional>
#include <string>
#include <vector>

namespace lowbit {
class LlavaNextModel;
class Tokenizer;
}  // namespace lowbit

namespace lowbit::vlm {

struct VlmPrediction {
  std::string where;       // the item ("FILE:LINE")
  std::string prediction;  // the decoded answer the task scores
  Json record;             // the task's per-item record
  int64_t prompt_tokens = 0, new_tokens = 0;
};

struct VlmEvalResult {
  std::string task;
  int64_t max_new_tokens = 0;
  std::vector<VlmPrediction> items;
  Json metrics;  // the task's aggregate
};

// Called after each item (index i of n).
using VlmItemCallback = std::function<void(size_t i, size_t n, const VlmPrediction&)>;

// Every image is decoded and every item's fields checked against the task (an out-of-range AI2D
// answer, an MME answer that is not Yes/No) before the model runs; errors name the item.
// max_new_tokens 0 takes the task's.
VlmEvalResult evaluate_vlm(const LlavaNextModel& model, const Tokenizer& tok, const VlmTask& task,
                           const std::vector<VlmItem>& items, int64_t max_new_tokens = 0,
                           const VlmItemCallback& on_item = nullptr);

// The token ids of one item's prompt (its image taking `image_tokens` image tokens).
std::vector<int32_t> vlm_prompt_ids(const LlavaNextModel& model, const Tokenizer& tok, const VlmTask& task,
                                    const Json& doc, int64_t image_tokens);
// Decodes generated ids as transformers' batch_decode(skip_special_tokens=True) does.
std::string decode_answer(const Tokenizer& tok, std::span<const int32_t> ids);

}  // namespace lowbit::vlm
