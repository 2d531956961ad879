// SentencePiece tokenizer.model (LLaMA-2), read with the sentencepiece library.
//
// The conventions (see SpmConvention in tokenizer.h):
//   SentencePiece:  the library's own Encode/Decode.
//   Llama, Generic: the tokenizer.json pipelines transformers builds from the same model (its
//                   SentencePiece-to-BPE conversions), run by lowbit's tokenizer.json engine.
#include "formats/tokenizer.h"

#include "core/error.h"
#include "core/mapped_file.h"
#include "core/utf8.h"

#include <nlohmann/json.hpp>
#include <sentencepiece_processor.h>

#include <algorithm>
#include <filesystem>
#include <unordered_map>

namespace lowbit {

using json = nlohmann::json;

namespace {

class SentencePieceTokenizer final : public Tokenizer {
 public:
  SentencePieceTokenizer(std::unique_ptr<sentencepiece::SentencePieceProcessor> sp, bool add_bos, bool add_eos)
      : sp_(std::move(sp)), add_bos_(add_bos), add_eos_(add_eos) {}

  std::string kind() const override { return "sentencepiece-library (tokenizer.model)"; }
  std::string decode(std::span<const int32_t> ids) const override {
    std::vector<int> v(ids.begin(), ids.end());
    for (int id : v)
      LB_CHECK(id >= 0 && id < sp_->GetPieceSize(), "cannot decode token id {}: vocabulary size is {}", id,
               sp_->GetPieceSize());
    std::string out;
    auto st = sp_->Decode(v, &out);
    LB_CHECK(st.ok(), "sentencepiece decode failed: {}", st.ToString());
    return out;
  }
  int32_t vocab_size() const override { return sp_->GetPieceSize(); }
  std::optional<int32_t> bos_id() const override { return opt(sp_->bos_id()); }
  std::optional<int32_t> eos_id() const override { return opt(sp_->eos_id()); }
  bool adds_bos_by_default() const override { return add_bos_ && sp_->bos_id() >= 0; }
  std::vector<SpecialToken> special_tokens() const override {
    std::vector<SpecialToken> out;
    for (int i = 0; i < sp_->GetPieceSize(); ++i) {
      if (!sp_->IsControl(i) && !sp_->IsUnknown(i)) continue;
      std::string role = i == sp_->bos_id() ? "bos" : i == sp_->eos_id() ? "eos" : i == sp_->unk_id() ? "unk"
                         : i == sp_->pad_id() ? "pad" : "special";
      out.push_back({i, sp_->IdToPiece(i), role});
    }
    return out;
  }
  std::string token_text(int32_t id) const override {
    LB_CHECK(id >= 0 && id < vocab_size(), "token id {} is outside the vocabulary (size {})", id, vocab_size());
    return sp_->IdToPiece(id);
  }

 protected:
  std::vector<int32_t> encode_plain(std::string_view text) const override {
    const size_t bad = utf8_find_invalid(text);
    LB_CHECK(bad == std::string_view::npos, "text is not valid UTF-8 (byte {} of {})", bad, text.size());
    std::vector<int> ids;
    auto st = sp_->Encode(text, &ids);
    LB_CHECK(st.ok(), "sentencepiece encode failed: {}", st.ToString());
    return {ids.begin(), ids.end()};
  }
  std::vector<int32_t> add_default_specials(std::vector<int32_t> ids) const override {
    if (add_bos_ && sp_->bos_id() >= 0) ids.insert(ids.begin(), sp_->bos_id());
    if (add_eos_ && sp_->eos_id() >= 0) ids.push_back(sp_->eos_id());
    return ids;
  }

 private:
  static std::optional<int32_t> opt(int id) { return id >= 0 ? std::optional<int32_t>(id) : std::nullopt; }
  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
  bool add_bos_, add_eos_;
};

// transformers' conversions of a SentencePiece BPE model to a tokenizer.json pipeline. Both
// keep the vocabulary as is and generate the same merges from it (every split of a piece into
// two pieces of the vocabulary, ordered by the piece's id, and within a piece by the ids of the
// two halves; the pieces' scores are not consulted, so LLaMA-2's "▁▁" (id 259, score -1e9)
// merges first), use byte fallback and split <unk>/<s>/</s> out of the text as special tokens.
//   Llama:   Metaspace pre-tokenization (spaces to U+2581, one prepended to the start of the
//            text unless it starts with one), no unk token, decoder strips one leading space.
//   Generic: a Replace normalizer (spaces to U+2581, nothing prepended), unk token <unk>,
//            decoder keeps every space.
// The template adds BOS/EOS as the tokenizer configuration asks.
json spm_to_tokenizer_json(const sentencepiece::SentencePieceProcessor& sp, SpmConvention conv, bool add_bos,
                           bool add_eos) {
  LB_ASSERT(conv == SpmConvention::Llama || conv == SpmConvention::Generic);
  const bool llama = conv == SpmConvention::Llama;
  const int n = sp.GetPieceSize();
  json vocab = json::object();
  std::unordered_map<std::string, int> id_of;
  for (int i = 0; i < n; ++i) {
    const std::string p = sp.IdToPiece(i);
    if (!id_of.count(p)) id_of[p] = i;
    vocab[p] = i;
  }
  struct M { int l, r; };
  std::vector<M> merges;
  for (int i = 0; i < n; ++i) {
    const std::string p = sp.IdToPiece(i);
    std::vector<M> local;
    size_t pos = 0;
    utf8_next(p, pos);  // split points lie between code points
    while (pos < p.size()) {
      auto l = id_of.find(p.substr(0, pos)), r = id_of.find(p.substr(pos));
      if (l != id_of.end() && r != id_of.end()) local.push_back({l->second, r->second});
      utf8_next(p, pos);
    }
    std::sort(local.begin(), local.end(), [](const M& a, const M& b) { return a.l != b.l ? a.l < b.l : a.r < b.r; });
    merges.insert(merges.end(), local.begin(), local.end());
  }
  json mj = json::array();
  for (const M& m : merges) mj.push_back(json::array({sp.IdToPiece(m.l), sp.IdToPiece(m.r)}));

  json added = json::array();
  for (int i = 0; i < n; ++i)
    if (sp.IsControl(i) || sp.IsUnknown(i))
      added.push_back({{"id", i}, {"content", sp.IdToPiece(i)}, {"special", true}, {"lstrip", false},
                       {"rstrip", false}, {"single_word", false}, {"normalized", false}});
  json single = json::array();
  json specials = json::object();
  if (add_bos && sp.bos_id() >= 0) {
    const std::string b = sp.IdToPiece(sp.bos_id());
    single.push_back({{"SpecialToken", {{"id", b}, {"type_id", 0}}}});
    specials[b] = {{"id", b}, {"ids", {sp.bos_id()}}, {"tokens", {b}}};
  }
  single.push_back({{"Sequence", {{"id", "A"}, {"type_id", 0}}}});
  if (add_eos && sp.eos_id() >= 0) {
    const std::string e = sp.IdToPiece(sp.eos_id());
    single.push_back({{"SpecialToken", {{"id", e}, {"type_id", 0}}}});
    specials[e] = {{"id", e}, {"ids", {sp.eos_id()}}, {"tokens", {e}}};
  }
  const std::string ws = "\xe2\x96\x81";
  json decoders = {{{"type", "Replace"}, {"pattern", {{"String", ws}}}, {"content", " "}},
                   {{"type", "ByteFallback"}},
                   {{"type", "Fuse"}}};
  if (llama) decoders.push_back({{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}});
  json j = {
      {"added_tokens", added},
      {"normalizer", nullptr},
      {"pre_tokenizer", nullptr},
      {"model",
       {{"type", "BPE"}, {"vocab", vocab}, {"merges", mj}, {"byte_fallback", true}, {"fuse_unk", true},
        {"unk_token", llama || sp.unk_id() < 0 ? json(nullptr) : json(sp.IdToPiece(sp.unk_id()))}}},
      {"decoder", {{"type", "Sequence"}, {"decoders", decoders}}},
      {"post_processor", {{"type", "TemplateProcessing"}, {"single", single}, {"special_tokens", specials}}},
  };
  if (llama)
    j["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", ws}, {"prepend_scheme", "first"}, {"split", false}};
  else
    j["normalizer"] = {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", ws}};
  return j;
}

}  // namespace

const char* spm_convention_name(SpmConvention c) {
  switch (c) {
    case SpmConvention::Auto: return "auto";
    case SpmConvention::Llama: return "llama";
    case SpmConvention::Generic: return "generic";
    case SpmConvention::SentencePiece: return "sentencepiece";
  }
  return "?";
}

SpmConvention parse_spm_convention(const std::string& name) {
  for (SpmConvention c : {SpmConvention::Auto, SpmConvention::Llama, SpmConvention::Generic, SpmConvention::SentencePiece})
    if (name == spm_convention_name(c)) return c;
  fail("unknown SentencePiece convention '{}' (auto, llama, generic, sentencepiece)", name);
}

std::unique_ptr<Tokenizer> load_sentencepiece(const std::string& path, SpmConvention convention) {
  auto sp = std::make_unique<sentencepiece::SentencePieceProcessor>();
  auto st = sp->Load(path);
  LB_CHECK(st.ok(), "'{}' is not a SentencePiece model: {}", path, st.ToString());
  LB_CHECK(sp->GetPieceSize() > 0, "'{}': SentencePiece model has no pieces", path);
  const std::filesystem::path dir = std::filesystem::path(path).parent_path();
  const std::filesystem::path cfg_path = dir / "tokenizer_config.json";
  json cfg;
  if (std::filesystem::exists(cfg_path)) {
    cfg = json::parse(read_file(cfg_path.string()), nullptr, false);
    LB_CHECK(!cfg.is_discarded() && cfg.is_object(), "'{}' is not a JSON object", cfg_path.string());
  }
  if (convention == SpmConvention::Auto) {
    // AutoTokenizer's choice: the class tokenizer_config.json names; a model directory without
    // one gets the generic conversion; a bare tokenizer.model is LLaMA's.
    const std::string cls = cfg.is_object() ? cfg.value("tokenizer_class", "") : "";
    if (cls.rfind("Llama", 0) == 0 || cls.rfind("CodeLlama", 0) == 0) convention = SpmConvention::Llama;
    else if (!cfg.is_object() && std::filesystem::exists(dir / "config.json")) convention = SpmConvention::Generic;
    else if (cfg.is_object() && !cls.empty()) convention = SpmConvention::Generic;
    else convention = SpmConvention::Llama;
  }
  // Whether BOS/EOS are added by default: tokenizer_config.json's add_bos_token/add_eos_token
  // when present. Without them, transformers >= 5 adds none, while the sentencepiece-backed
  // ("slow") LlamaTokenizer adds BOS.
  bool add_bos = convention == SpmConvention::SentencePiece, add_eos = false;
  if (cfg.is_object()) {
    if (cfg.contains("add_bos_token") && cfg["add_bos_token"].is_boolean()) add_bos = cfg["add_bos_token"].get<bool>();
    if (cfg.contains("add_eos_token") && cfg["add_eos_token"].is_boolean()) add_eos = cfg["add_eos_token"].get<bool>();
  }
  if (convention == SpmConvention::SentencePiece)
    return std::make_unique<SentencePieceTokenizer>(std::move(sp), add_bos, add_eos);
  json j = spm_to_tokenizer_json(*sp, convention, add_bos, add_eos);
  json config = {{"bos_token", sp->bos_id() >= 0 ? json(sp->IdToPiece(sp->bos_id())) : json(nullptr)},
                 {"eos_token", sp->eos_id() >= 0 ? json(sp->IdToPiece(sp->eos_id())) : json(nullptr)}};
  return load_hf_tokenizer_json(j.dump(), path, config.dump(),
                                fmt::format("sentencepiece-{} (tokenizer.model as transformers converts it)",
                                            spm_convention_name(convention)));
}

}  // namespace lowbit
