#include "formats/llava_next_checkpoint.h"

#include "core/error.h"
#include "formats/safetensors.h"
#include "formats/tokenizer.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace lowbit {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

class RenamedWeights final : public WeightSource {
 public:
  RenamedWeights(std::shared_ptr<WeightSource> base, std::string body_prefix, std::string lm_head)
      : base_(std::move(base)), body_(std::move(body_prefix)), head_(std::move(lm_head)) {}
  std::vector<std::string> names() const override {
    std::vector<std::string> out;
    for (const std::string& n : base_->names()) {
      if (!head_.empty() && n == head_) out.push_back("lm_head.weight");
      else if (n.rfind(body_, 0) == 0) out.push_back("model." + n.substr(body_.size()));
    }
    std::sort(out.begin(), out.end());
    return out;
  }
  const WeightInfo* info(const std::string& name) const override {
    const std::string s = source_name(name);
    return s.empty() ? nullptr : base_->info(s);
  }
  Tensor get(const std::string& name) const override {
    const std::string s = source_name(name);
    LB_CHECK(!s.empty() && base_->has(s), "LLaVA-Next checkpoint has no tensor '{}' (the language model's '{}')", s,
             name);
    return base_->get(s);
  }
  std::vector<std::string> files() const override { return base_->files(); }

 private:
  // The checkpoint's name of a LLaMA tensor name; empty for names outside the language model.
  std::string source_name(const std::string& name) const {
    if (name == "lm_head.weight") return head_;
    if (name.rfind("model.", 0) == 0) return body_ + name.substr(6);
    return {};
  }
  std::shared_ptr<WeightSource> base_;
  std::string body_, head_;
};

}  // namespace

bool is_llava_next_config(const json& j) {
  if (!j.is_object()) return false;
  if (j.value("model_type", "") == "llava_next") return true;
  if (j.contains("architectures") && j["architectures"].is_array())
    for (const auto& a : j["architectures"])
      if (a.is_string() && a.get<std::string>() == "LlavaNextForConditionalGeneration") return true;
  return false;
}

LlamaConfig llava_next_text_config(const json& j, const std::string& path) {
  json t = j.value("text_config", json::object());
  LB_CHECK(t.is_object(), "{}: text_config is not an object", path);
  // transformers' LlamaConfig defaults, for fields a LLaVA text_config may leave out.
  const json defaults = {{"model_type", "llama"},       {"hidden_size", 4096},        {"intermediate_size", 11008},
                         {"num_hidden_layers", 32},     {"num_attention_heads", 32},  {"vocab_size", 32000},
                         {"max_position_embeddings", 2048}, {"rms_norm_eps", 1e-6},   {"rope_theta", 10000.0}};
  for (auto& [k, v] : defaults.items())
    if (!t.contains(k) || t[k].is_null()) t[k] = v;
  if (!t.contains("tie_word_embeddings")) t["tie_word_embeddings"] = j.value("tie_word_embeddings", false);
  return parse_llama_config(t.dump(), path + ": text_config");
}

namespace {

// The prefix under which the checkpoint stores the LLaMA body ("model.language_model." or
// "language_model.model.").
std::string language_prefix(const WeightSource& all, const std::string& dir) {
  std::string body;
  for (const char* p : {"model.language_model.", "language_model.model."})
    if (all.has(std::string(p) + "embed_tokens.weight")) body = p;
  LB_CHECK(!body.empty(), "{}: no language model found (looked for 'model.language_model.embed_tokens.weight' and "
           "'language_model.model.embed_tokens.weight')", dir);
  return body;
}

}  // namespace

std::shared_ptr<WeightSource> llava_next_language_weights(std::shared_ptr<WeightSource> all, const LlamaConfig& text,
                                                          const std::string& dir) {
  const std::string body = language_prefix(*all, dir);
  std::string head;
  if (!text.tie_word_embeddings)
    head = all->has("lm_head.weight") ? "lm_head.weight" : "language_model.lm_head.weight";
  return std::make_shared<RenamedWeights>(std::move(all), body, head);
}

Checkpoint open_llava_next_language_model(const std::string& dir) {
  const fs::path cfg = fs::path(dir) / "config.json";
  std::ifstream in(cfg);
  LB_CHECK(in.good(), "cannot open '{}'", cfg.string());
  std::stringstream ss;
  ss << in.rdbuf();
  const json j = json::parse(ss.str(), nullptr, false);
  LB_CHECK(!j.is_discarded() && is_llava_next_config(j), "{}: not a LLaVA-Next config", cfg.string());
  LB_CHECK(fs::exists(fs::path(dir) / "model.safetensors") || fs::exists(fs::path(dir) / "model.safetensors.index.json"),
           "LLaVA-Next model '{}' has no model.safetensors or model.safetensors.index.json", dir);
  Checkpoint ck;
  ck.path = dir;
  ck.format = "llava-next-language-model";
  ck.config = llava_next_text_config(j, cfg.string());
  ck.weights = llava_next_language_weights(SafetensorsWeights::open(dir), ck.config, dir);
  validate_llama_weights(ck.config, *ck.weights, dir);
  ck.tokenizer_path = find_tokenizer_file(dir);
  return ck;
}

bool is_llava_next_dir(const std::string& path) {
  const fs::path cfg = fs::path(path) / "config.json";
  if (!fs::is_directory(path) || !fs::exists(cfg)) return false;
  std::ifstream in(cfg);
  std::stringstream ss;
  ss << in.rdbuf();
  return is_llava_next_config(json::parse(ss.str(), nullptr, false));
}

std::vector<std::string> llava_next_non_language_tensors(const WeightSource& all, const std::string& dir) {
  const std::string body = language_prefix(all, dir);
  std::vector<std::string> out;
  for (const std::string& n : all.names())
    if (n.rfind(body, 0) != 0 && n != "lm_head.weight" && n != "language_model.lm_head.weight") out.push_back(n);
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace lowbit
