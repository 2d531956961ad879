#include "eval/vlm/vlm_eval.h"

#include "core/error.h"
#include "core/hash.h"
#include "eval/vlm/py_text.h"
#include "formats/tokenizer.h"
#include "model/llava_next.h"
#include "model/llava_next_device.h"
#include "model/llava_prompt.h"
#include "vision/image.h"
#include "vision/image_processor.h"

#include <algorithm>

namespace lowbit::vlm {

VlmConversation parse_vlm_conversation(const std::string& name) {
  if (name == "llava") return VlmConversation::Llava;
  if (name == "llava_hf") return VlmConversation::LlavaHf;
  throw Error(fmt::format("unknown conversation '{}' (llava or llava_hf)", name));
}

const char* vlm_conversation_name(VlmConversation c) { return c == VlmConversation::Llava ? "llava" : "llava_hf"; }

std::string vlm_prompt(const std::string& question, VlmConversation c) {
  if (c == VlmConversation::Llava) return llava_llama3_prompt(question, 1);
  return "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n" +
         py_strip(std::string(kImagePlaceholder) + "\n" + question) +
         "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n";
}

std::vector<int32_t> vlm_prompt_ids(const LlavaNextModel& model, const Tokenizer& tok, const VlmTask& task,
                                    const Json& doc, int64_t image_tokens, VlmConversation c) {
  const std::vector<int64_t> counts = {image_tokens};
  return tokenize_with_images(tok, vlm_prompt(task.doc_to_text(doc), c), counts,
                              int32_t(model.config().image_token_id));
}

std::string decode_answer(const Tokenizer& tok, std::span<const int32_t> ids) {
  std::vector<int32_t> kept;
  const std::vector<SpecialToken> specials = tok.special_tokens();
  for (int32_t id : ids)
    if (std::none_of(specials.begin(), specials.end(), [&](const SpecialToken& s) { return s.id == id; }))
      kept.push_back(id);
  return utf8_lossy(tok.decode(kept));
}

std::string vlm_evaluation_key(const VlmTask& task, const VlmEvalOptions& options, int64_t limit) {
  const int64_t n = options.max_new_tokens > 0 ? options.max_new_tokens : task.max_new_tokens;
  // The fake-quant key is the one studies have always stored, so it names no execution.
  return fmt::format("{}:conversation={},max_new_tokens={},limit={}{}", task.name,
                     vlm_conversation_name(options.conversation), n, limit,
                     options.execution == "fake-quant" ? "" : ",execution=" + options.execution);
}

Json vlm_evaluation_identity(const VlmTask& task, const std::string& data_file, const VlmEvalOptions& options,
                             int64_t limit, const VlmEvalResult& r) {
  return Json{{"kind", "vision_language"},
              {"task", task.name},
              {"key", vlm_evaluation_key(task, options, limit)},
              {"convention", "lmms-eval " + task.lmms_eval_task},
              {"split", task.split},
              {"files", Json::array({Json{{"path", data_file}, {"sha256", sha256_file(data_file)}}})},
              {"conversation", vlm_conversation_name(options.conversation)},
              {"execution", options.execution},
              {"decoding", "greedy"},
              {"max_new_tokens", r.max_new_tokens},
              {"limit", limit},
              {"items", r.items.size()}};
}

namespace {

// Runs f, prefixing any lowbit::Error with the item's name.
template <typename F>
auto for_item(const VlmItem& item, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const Error& e) {
    const std::string msg = e.what();
    if (msg.rfind(item.where, 0) == 0) throw;
    throw Error(item.where + ": " + msg);
  }
}

}  // namespace

VlmEvalResult evaluate_vlm(const LlavaNextModel& model, const Tokenizer& tok, const VlmTask& task,
                           const std::vector<VlmItem>& items, const VlmEvalOptions& options,
                           const VlmItemCallback& on_item, LlavaNextRunner* runner) {
  VlmEvalResult r;
  r.task = task.name;
  r.conversation = options.conversation;
  r.max_new_tokens = options.max_new_tokens > 0 ? options.max_new_tokens : task.max_new_tokens;
  // Everything that can be refused is refused before the first generation.
  for (const VlmItem& item : items)
    for_item(item, [&] {
      check_vlm_doc(task, item.doc, item.where);
      (void)vision::read_image(item.image);
      (void)task.process(item.doc, "");
      return 0;
    });

  std::vector<int64_t> stop = model.config().text.eos_token_ids;
  for (const SpecialToken& s : tok.special_tokens())
    if (s.text == "<|eot_id|>") stop.push_back(s.id);

  for (size_t i = 0; i < items.size(); ++i) {
    const VlmItem& item = items[i];
    VlmPrediction p;
    p.where = item.where;
    for_item(item, [&] {
      const vision::ProcessedImage image =
          vision::preprocess_llava_next(vision::read_image(item.image), model.processor());
      const std::vector<int32_t> ids =
          vlm_prompt_ids(model, tok, task, item.doc, model.image_token_count(image.height, image.width),
                         options.conversation);
      const std::vector<vision::ProcessedImage> images = {image};
      const std::vector<int32_t> out = runner != nullptr ? runner->generate(ids, images, r.max_new_tokens, stop)
                                                         : model.generate(ids, images, r.max_new_tokens, stop);
      p.prompt_tokens = int64_t(ids.size());
      p.new_tokens = int64_t(out.size());
      p.prediction = decode_answer(tok, out);
      p.record = task.process(item.doc, p.prediction);
      return 0;
    });
    if (on_item) on_item(i, items.size(), p);
    r.items.push_back(std::move(p));
  }
  std::vector<Json> records;
  for (const VlmPrediction& p : r.items) records.push_back(p.record);
  r.metrics = task.aggregate(records);
  return r;
}

}  // namespace lowbit::vlm
