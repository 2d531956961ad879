// One benchmark's evaluation of a LLaVA-Next model, as lmms-eval's llava models run these tasks:
// per item, "<image>\n" + the task's question (doc_to_text) as the user turn of a LLaMA-3 chat
// prompt (VlmConversation), greedy decoding of at most the task's
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
class LlavaNextRunner;
class Tokenizer;
}  // namespace lowbit

namespace lowbit::vlm {

// How the question becomes a prompt, as lmms-eval's two model classes for LLaVA-Next build it:
//   llava     its `llava` model with conv_template llava_llama_3 (the LLaVA-NeXT repository's
//             conv_llava_llama_3): LLaVA-NeXT's system turn, then the user turn
//             (model/llava_prompt.h);
//   llava_hf  its `llava_hf` model: the tokenizer's chat template (Meta-Llama-3's) over the user
//             turn alone: <|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n{turn,
//             stripped}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n
enum class VlmConversation { Llava, LlavaHf };
VlmConversation parse_vlm_conversation(const std::string& name);  // "llava" or "llava_hf"; throws otherwise
const char* vlm_conversation_name(VlmConversation c);
// The prompt for a question with one image (its "<image>" placeholder still in the text).
std::string vlm_prompt(const std::string& question, VlmConversation c);

struct VlmEvalOptions {
  int64_t max_new_tokens = 0;  // 0: the task's
  VlmConversation conversation = VlmConversation::Llava;
  // How the language model's quantized linears ran, as the caller set the model up (evaluate_vlm
  // does not change it): "fake-quant" (their dequantized 16-bit weights, what the study measures;
  // also a 16-bit model's) or a packed execution ("packed-q8", "packed-w4a16", ...: the names
  // `--packed` gives, tools/lowbit/commands.h). Part of the identity; a packed one is part of the
  // key, so that its results stand beside the fake-quant ones of the same cell.
  std::string execution = "fake-quant";
};

struct VlmPrediction {
  std::string where;       // the item ("FILE:LINE")
  std::string prediction;  // the decoded answer the task scores
  Json record;             // the task's per-item record
  int64_t prompt_tokens = 0, new_tokens = 0;
};

struct VlmEvalResult {
  std::string task;
  VlmConversation conversation = VlmConversation::Llava;
  int64_t max_new_tokens = 0;
  std::vector<VlmPrediction> items;
  Json metrics;  // the task's aggregate
};

// Called after each item (index i of n).
using VlmItemCallback = std::function<void(size_t i, size_t n, const VlmPrediction&)>;

// Every image is decoded and every item's fields checked against the task (an out-of-range AI2D
// answer, an MME answer that is not Yes/No) before the model runs; errors name the item.
// `runner`: the model placed on a device (model/llava_next_device.h) that generates; null: the
// model's own CPU forward.
VlmEvalResult evaluate_vlm(const LlavaNextModel& model, const Tokenizer& tok, const VlmTask& task,
                           const std::vector<VlmItem>& items, const VlmEvalOptions& options = {},
                           const VlmItemCallback& on_item = nullptr, LlavaNextRunner* runner = nullptr);

// The evaluation's key ("docvqa:conversation=llava,max_new_tokens=32,limit=0", with
// ",execution=packed-q8" appended under a packed execution) and identity
// (eval/identity.h's "evaluation" part): the task and its lmms-eval counterpart, the data file and
// its SHA-256 (the images are identified through the paths it lists), every setting that changes
// the numbers, the items evaluated.
std::string vlm_evaluation_key(const VlmTask& task, const VlmEvalOptions& options, int64_t limit);
Json vlm_evaluation_identity(const VlmTask& task, const std::string& data_file, const VlmEvalOptions& options,
                             int64_t limit, const VlmEvalResult& r);

// The token ids of one item's prompt (its image taking `image_tokens` image tokens).
std::vector<int32_t> vlm_prompt_ids(const LlavaNextModel& model, const Tokenizer& tok, const VlmTask& task,
                                    const Json& doc, int64_t image_tokens,
                                    VlmConversation c = VlmConversation::Llava);
// Decodes generated ids as transformers' batch_decode(skip_special_tokens=True) does.
std::string decode_answer(const Tokenizer& tok, std::span<const int32_t> ids);

}  // namespace lowbit::vlm
