// Hugging Face tokenizer.json with a BPE model: the pipeline of the `tokenizers` library
// (added tokens -> normalizer -> pre-tokenizer -> BPE -> post-processor; decoder on the way back),
// for the components LLaMA-family tokenizers use:
//   normalizer:    Sequence, Prepend, Replace (string pattern), NFC of already-NFC text is not
//                  assumed: NFC/NFKC are refused
//   pre_tokenizer: Sequence, Split (regex or string; Isolated/Removed/MergedWithPrevious/
//                  MergedWithNext), ByteLevel, Metaspace, Digits
//   model:         BPE (merges by rank, ignore_merges, byte_fallback, unk/fuse_unk)
//   post:          TemplateProcessing, ByteLevel (no effect on ids), Sequence
//   decoder:       ByteLevel, Metaspace, Replace, ByteFallback, Fuse, Strip, Sequence
// Anything else is an error that names the component, never a silent approximation.
//
// Byte-level vocabularies are stored in the GPT-2 byte-to-unicode alphabet; lowbit converts them
// to raw bytes on load, so that a word's initial symbols are its bytes and decoding is a lookup.
#include "formats/bpe.h"
#include "formats/tokenizer.h"

#include "core/error.h"
#include "core/utf8.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <cctype>
#include <memory>
#include <map>
#include <unordered_map>

namespace lowbit {

using json = nlohmann::json;

namespace {

// GPT-2's bytes_to_unicode: printable bytes map to themselves, the rest to U+0100 onwards.
std::array<uint32_t, 256> byte_to_unicode_table() {
  std::array<uint32_t, 256> t{};
  std::array<bool, 256> direct{};
  for (int b = '!'; b <= '~'; ++b) direct[size_t(b)] = true;
  for (int b = 0xa1; b <= 0xac; ++b) direct[size_t(b)] = true;
  for (int b = 0xae; b <= 0xff; ++b) direct[size_t(b)] = true;
  uint32_t n = 0;
  for (int b = 0; b < 256; ++b) t[size_t(b)] = direct[size_t(b)] ? uint32_t(b) : 256 + n++;
  return t;
}

// A compiled PCRE2 regex with JIT, in UTF + Unicode-properties mode (\p{L}, \s as Unicode).
class Regex {
 public:
  Regex(const std::string& pattern, const std::string& what) {
    int err = 0;
    PCRE2_SIZE off = 0;
    code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), PCRE2_UTF | PCRE2_UCP,
                          &err, &off, nullptr);
    if (!code_) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(err, msg, sizeof msg);
      fail("{}: cannot compile regex '{}' at offset {}: {}", what, pattern, off, reinterpret_cast<char*>(msg));
    }
    jit_ = pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE) == 0;
  }
  ~Regex() { pcre2_code_free(code_); }
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Calls f(begin, end) for each successive non-overlapping match in s (valid UTF-8).
  template <typename F>
  void for_each_match(std::string_view s, F&& f) const {
    std::unique_ptr<pcre2_match_data, decltype(&pcre2_match_data_free)> md(
        pcre2_match_data_create_from_pattern(code_, nullptr), &pcre2_match_data_free);
    pcre2_match_data* md_ = md.get();
    size_t pos = 0;
    while (pos <= s.size()) {
      int rc = jit_ ? pcre2_jit_match(code_, reinterpret_cast<PCRE2_SPTR>(s.data()), s.size(), pos,
                                      PCRE2_NO_UTF_CHECK, md_, nullptr)
                    : pcre2_match(code_, reinterpret_cast<PCRE2_SPTR>(s.data()), s.size(), pos, PCRE2_NO_UTF_CHECK,
                                  md_, nullptr);
      if (rc < 0) {
        LB_CHECK(rc == PCRE2_ERROR_NOMATCH, "regex match failed (PCRE2 error {})", rc);
        return;
      }
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md_);
      size_t b = ov[0], e = ov[1];
      if (e == b) {  // empty match: step over one character
        if (b >= s.size()) return;
        pos = b + utf8_len(static_cast<unsigned char>(s[b]));
        continue;
      }
      f(b, e);
      pos = e;
    }
  }

 private:
  pcre2_code* code_ = nullptr;
  bool jit_ = false;
};

// A piece of text on its way through the pipeline; `at_start` marks the piece that begins at
// offset 0 of the input (Metaspace's prepend_scheme "first" looks at it).
struct Piece {
  std::string text;
  bool at_start;
};

enum class SplitBehavior { Isolated, Removed, MergedWithPrevious, MergedWithNext };

SplitBehavior parse_behavior(const json& j, const std::string& what) {
  const std::string b = j.value("behavior", "Isolated");
  if (b == "Isolated") return SplitBehavior::Isolated;
  if (b == "Removed") return SplitBehavior::Removed;
  if (b == "MergedWithPrevious") return SplitBehavior::MergedWithPrevious;
  if (b == "MergedWithNext") return SplitBehavior::MergedWithNext;
  fail("{}: split behavior '{}' is not supported", what, b);
}

// Splits p at the given [b, e) delimiter spans according to the behavior.
void split_spans(const Piece& p, const std::vector<std::pair<size_t, size_t>>& spans, SplitBehavior beh,
                 std::vector<Piece>& out) {
  const std::string& s = p.text;
  size_t last = 0;
  std::vector<std::pair<size_t, size_t>> parts;  // [b, e)
  for (auto [b, e] : spans) {
    switch (beh) {
      case SplitBehavior::Isolated:
        if (b > last) parts.push_back({last, b});
        parts.push_back({b, e});
        last = e;
        break;
      case SplitBehavior::Removed:
        if (b > last) parts.push_back({last, b});
        last = e;
        break;
      case SplitBehavior::MergedWithPrevious:
        parts.push_back({last, e});
        last = e;
        break;
      case SplitBehavior::MergedWithNext:
        if (b > last) parts.push_back({last, b});
        last = b;
        break;
    }
  }
  if (last < s.size()) parts.push_back({last, s.size()});
  for (auto [b, e] : parts)
    if (e > b) out.push_back({s.substr(b, e - b), p.at_start && b == 0});
}

const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

class HfTokenizer final : public Tokenizer {
 public:
  HfTokenizer(const json& j, const std::string& what, const json& config, std::string kind);

  std::string kind() const override {
    if (!kind_.empty()) return kind_;
    return byte_level_ ? "hf-bpe-bytelevel (tokenizer.json)" : "hf-bpe (tokenizer.json)";
  }
  std::string decode(std::span<const int32_t> ids) const override;
  int32_t vocab_size() const override { return int32_t(id_to_token_.size()); }
  std::optional<int32_t> bos_id() const override { return bos_; }
  std::optional<int32_t> eos_id() const override { return eos_; }
  bool adds_bos_by_default() const override {
    return bos_ && !template_prefix_.empty() && template_prefix_.front() == *bos_;
  }
  std::vector<SpecialToken> special_tokens() const override;
  std::string token_text(int32_t id) const override {
    LB_CHECK(id >= 0 && id < vocab_size(), "token id {} is outside the vocabulary (size {})", id, vocab_size());
    return id_to_token_[size_t(id)];
  }

 protected:
  std::vector<int32_t> encode_plain(std::string_view text) const override;
  std::vector<int32_t> add_default_specials(std::vector<int32_t> ids) const override {
    ids.insert(ids.begin(), template_prefix_.begin(), template_prefix_.end());
    ids.insert(ids.end(), template_suffix_.begin(), template_suffix_.end());
    return ids;
  }

 private:
  struct AddedToken {
    int32_t id;
    std::string content;
    bool special, lstrip, rstrip, single_word;
  };
  struct NormStep { enum { Prepend, Replace } kind; std::string a, b; };
  struct PreStep {
    enum { Split, ByteLevel, Metaspace, Digits } kind;
    std::shared_ptr<Regex> regex;  // Split (regex), ByteLevel (use_regex)
    std::string literal;           // Split with a String pattern
    SplitBehavior behavior = SplitBehavior::Isolated;
    bool add_prefix_space = false;
    std::string replacement;                      // Metaspace
    enum { Always, First, Never } prepend = Always;  // Metaspace
    bool split = true;                            // Metaspace
    bool individual_digits = false;               // Digits
  };
  struct DecStep {
    enum { ByteLevel, Metaspace, Replace, ByteFallback, Fuse, Strip } kind;
    std::string a = {}, b = {};
    int start = 0, stop = 0;
    bool prepend = true;
  };

  void parse_model(const json& m, const std::string& what);
  void parse_normalizer(const json& n, const std::string& what);
  void parse_pre_tokenizer(const json& p, const std::string& what);
  void parse_decoder(const json& d, const std::string& what);
  void parse_post_processor(const json& p, const std::string& what);
  void pre_tokenize(std::vector<Piece>& pieces) const;
  void bpe_word(const std::string& word, std::vector<int32_t>& out,
                std::unordered_map<std::string, std::vector<int32_t>>& cache) const;
  std::optional<int32_t> token_id(const std::string& t) const {
    auto it = token_to_id_.find(t);
    return it == token_to_id_.end() ? std::nullopt : std::optional<int32_t>(it->second);
  }

  std::vector<std::string> id_to_token_;  // model domain (raw bytes when byte-level)
  std::unordered_map<std::string, int32_t> token_to_id_;
  BpeMerges merges_;
  bool byte_level_ = false;
  bool ignore_merges_ = false, byte_fallback_ = false, fuse_unk_ = false;
  std::optional<int32_t> unk_;
  std::array<int32_t, 256> byte_token_{};     // byte-level: id of each single byte
  std::array<int32_t, 256> fallback_token_{};  // byte_fallback: id of <0xNN>
  std::vector<AddedToken> added_;
  std::unordered_map<int32_t, size_t> added_by_id_;
  std::array<std::vector<size_t>, 256> added_by_first_byte_;  // longest content first
  std::vector<NormStep> normalizer_;
  std::vector<PreStep> pre_;
  std::vector<DecStep> decoder_;
  std::vector<int32_t> template_prefix_, template_suffix_;
  std::optional<int32_t> bos_, eos_;
  std::string kind_;
};

HfTokenizer::HfTokenizer(const json& j, const std::string& what, const json& config, std::string kind)
    : kind_(std::move(kind)) {
  LB_CHECK(j.is_object(), "{}: not a JSON object", what);
  LB_CHECK(j.contains("model") && j["model"].is_object(), "{}: no 'model' object", what);
  // The pre-tokenizer decides whether the vocabulary is byte-level, so read it first.
  if (j.contains("pre_tokenizer") && !j["pre_tokenizer"].is_null()) parse_pre_tokenizer(j["pre_tokenizer"], what);
  parse_model(j["model"], what);
  if (j.contains("normalizer") && !j["normalizer"].is_null()) parse_normalizer(j["normalizer"], what);
  if (j.contains("decoder") && !j["decoder"].is_null()) parse_decoder(j["decoder"], what);

  if (j.contains("added_tokens")) {
    LB_CHECK(j["added_tokens"].is_array(), "{}: 'added_tokens' is not an array", what);
    for (const json& a : j["added_tokens"]) {
      LB_CHECK(a.is_object() && a.contains("id") && a["id"].is_number_integer() && a.contains("content") &&
                   a["content"].is_string(),
               "{}: added token {} needs an integer 'id' and a string 'content'", what, a.dump());
      AddedToken t{a["id"].get<int32_t>(), a["content"].get<std::string>(), a.value("special", false),
                   a.value("lstrip", false), a.value("rstrip", false), a.value("single_word", false)};
      LB_CHECK(t.id >= 0 && t.id < (1 << 24), "{}: added token '{}' has id {} out of range", what, t.content, t.id);
      LB_CHECK(!t.content.empty(), "{}: added token {} has empty content", what, t.id);
      LB_CHECK(utf8_find_invalid(t.content) == std::string_view::npos, "{}: added token {} is not valid UTF-8",
               what, t.id);
      if (size_t(t.id) >= id_to_token_.size()) id_to_token_.resize(size_t(t.id) + 1);
      id_to_token_[size_t(t.id)] = t.content;
      added_by_id_[t.id] = added_.size();
      added_.push_back(std::move(t));
    }
  }
  for (size_t i = 0; i < added_.size(); ++i)
    added_by_first_byte_[static_cast<unsigned char>(added_[i].content[0])].push_back(i);
  for (auto& v : added_by_first_byte_)
    std::stable_sort(v.begin(), v.end(),
                     [&](size_t a, size_t b) { return added_[a].content.size() > added_[b].content.size(); });

  if (j.contains("post_processor") && !j["post_processor"].is_null()) parse_post_processor(j["post_processor"], what);

  // BOS/EOS: tokenizer_config.json names them; without it, LLaMA's conventional names.
  auto lookup = [&](const json& v) -> std::optional<int32_t> {
    std::string s;
    if (v.is_string()) s = v.get<std::string>();
    else if (v.is_object() && v.contains("content") && v["content"].is_string()) s = v["content"].get<std::string>();
    else return std::nullopt;
    for (const auto& a : added_)
      if (a.content == s) return a.id;
    return token_id(s);
  };
  if (config.is_object() && config.contains("bos_token")) bos_ = lookup(config["bos_token"]);
  if (config.is_object() && config.contains("eos_token")) eos_ = lookup(config["eos_token"]);
  if (!bos_) bos_ = lookup(json("<|begin_of_text|>"));
  if (!bos_) bos_ = lookup(json("<s>"));
  if (!eos_) eos_ = lookup(json("<|end_of_text|>"));
  if (!eos_) eos_ = lookup(json("</s>"));
}

void HfTokenizer::parse_model(const json& m, const std::string& what) {
  const std::string type = m.value("type", "BPE");
  LB_CHECK(type == "BPE", "{}: model type '{}' is not supported (lowbit reads BPE tokenizers)", what, type);
  LB_CHECK(m.contains("vocab") && m["vocab"].is_object(), "{}: model has no 'vocab' object", what);
  LB_CHECK(m.contains("merges") && m["merges"].is_array(), "{}: model has no 'merges' array", what);
  for (const char* k : {"continuing_subword_prefix", "end_of_word_suffix"})
    LB_CHECK(!m.contains(k) || m[k].is_null() || m[k] == "", "{}: model option '{}' is not supported", what, k);
  LB_CHECK(!m.contains("dropout") || m["dropout"].is_null(), "{}: BPE dropout is not supported", what);
  ignore_merges_ = m.value("ignore_merges", false);
  byte_fallback_ = m.value("byte_fallback", false);
  fuse_unk_ = m.value("fuse_unk", false);

  const auto to_unicode = byte_to_unicode_table();
  std::unordered_map<uint32_t, uint8_t> from_unicode;
  for (int b = 0; b < 256; ++b) from_unicode[to_unicode[size_t(b)]] = uint8_t(b);
  auto model_form = [&](const std::string& key) -> std::string {
    if (!byte_level_) return key;
    std::string raw;
    size_t i = 0;
    while (i < key.size()) {
      uint32_t cp = utf8_next(key, i);
      auto it = from_unicode.find(cp);
      LB_CHECK(it != from_unicode.end(), "{}: vocabulary entry '{}' is not in the byte-level alphabet", what, key);
      raw += char(it->second);
    }
    return raw;
  };

  const json& vocab = m["vocab"];
  token_to_id_.reserve(vocab.size());
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    LB_CHECK(it.value().is_number_integer(), "{}: vocab entry '{}' has a non-integer id", what, it.key());
    const int64_t id = it.value().get<int64_t>();
    LB_CHECK(id >= 0 && id < (1 << 24), "{}: vocab entry '{}' has id {} out of range", what, it.key(), id);
    LB_CHECK(utf8_find_invalid(it.key()) == std::string_view::npos, "{}: vocab entry {} is not valid UTF-8", what, id);
    std::string t = model_form(it.key());
    if (size_t(id) >= id_to_token_.size()) id_to_token_.resize(size_t(id) + 1);
    id_to_token_[size_t(id)] = t;
    token_to_id_[t] = int32_t(id);
  }
  LB_CHECK(!token_to_id_.empty(), "{}: the vocabulary is empty", what);

  const json& merges = m["merges"];
  LB_CHECK(!merges.empty() || token_to_id_.size() < 300, "{}: model has no merges", what);
  merges_.reserve(merges.size());
  int32_t rank = 0;
  for (const json& mg : merges) {
    std::string a, b;
    if (mg.is_string()) {  // "a b"
      const std::string s = mg.get<std::string>();
      const size_t sp = s.find(' ');
      LB_CHECK(sp != std::string::npos && s.find(' ', sp + 1) == std::string::npos,
               "{}: merge {} '{}' is not two tokens separated by one space", what, rank, s);
      a = s.substr(0, sp);
      b = s.substr(sp + 1);
    } else {  // ["a", "b"]
      LB_CHECK(mg.is_array() && mg.size() == 2 && mg[0].is_string() && mg[1].is_string(),
               "{}: merge {} is not a pair of strings: {}", what, rank, mg.dump());
      a = mg[0].get<std::string>();
      b = mg[1].get<std::string>();
    }
    LB_CHECK(utf8_find_invalid(a) == std::string_view::npos && utf8_find_invalid(b) == std::string_view::npos,
             "{}: merge {} is not valid UTF-8", what, rank);
    const std::string ma = model_form(a), mb = model_form(b);
    auto ia = token_id(ma), ib = token_id(mb), im = token_id(ma + mb);
    LB_CHECK(ia && ib, "{}: merge {} ('{}' '{}') uses a token that is not in the vocabulary", what, rank, a, b);
    LB_CHECK(im.has_value(), "{}: merge {} ('{}' '{}') makes '{}{}', which is not in the vocabulary", what, rank, a,
             b, a, b);
    merges_.add(*ia, *ib, rank, *im);
    ++rank;
  }

  if (m.contains("unk_token") && m["unk_token"].is_string()) {
    unk_ = token_id(model_form(m["unk_token"].get<std::string>()));
    LB_CHECK(unk_.has_value(), "{}: unk_token '{}' is not in the vocabulary", what, m["unk_token"].get<std::string>());
  }
  byte_token_.fill(-1);
  fallback_token_.fill(-1);
  for (int b = 0; b < 256; ++b) {
    // A byte-level vocabulary may lack some bytes (SmolLM's lacks the ones UTF-8 text never
    // holds, and a few controls); encode_plain maps them as the tokenizers library does.
    if (byte_level_) {
      if (auto id = token_id(std::string(1, char(b)))) byte_token_[size_t(b)] = *id;
    }
    if (byte_fallback_) {
      if (auto id = token_id(fmt::format("<0x{:02X}>", b))) fallback_token_[size_t(b)] = *id;
    }
  }
}

void HfTokenizer::parse_normalizer(const json& n, const std::string& what) {
  const std::string type = n.value("type", "");
  if (type == "Sequence") {
    for (const json& s : n.value("normalizers", json::array())) parse_normalizer(s, what);
  } else if (type == "Prepend") {
    normalizer_.push_back({NormStep::Prepend, n.value("prepend", ""), ""});
  } else if (type == "Replace") {
    LB_CHECK(n.contains("pattern") && n["pattern"].contains("String"),
             "{}: Replace normalizer with a regex pattern is not supported", what);
    normalizer_.push_back({NormStep::Replace, n["pattern"]["String"].get<std::string>(), n.value("content", "")});
  } else {
    fail("{}: normalizer '{}' is not supported", what, type);
  }
}

void HfTokenizer::parse_pre_tokenizer(const json& p, const std::string& what) {
  const std::string type = p.value("type", "");
  if (type == "Sequence") {
    for (const json& s : p.value("pretokenizers", json::array())) parse_pre_tokenizer(s, what);
    return;
  }
  PreStep s{};
  if (type == "Split") {
    s.kind = PreStep::Split;
    LB_CHECK(!p.value("invert", false), "{}: Split pre-tokenizer with invert=true is not supported", what);
    s.behavior = parse_behavior(p, what);
    const json& pat = p.value("pattern", json::object());
    if (pat.contains("Regex")) s.regex = std::make_shared<Regex>(pat["Regex"].get<std::string>(), what);
    else if (pat.contains("String")) s.literal = pat["String"].get<std::string>();
    else fail("{}: Split pre-tokenizer has no pattern", what);
    LB_CHECK(s.regex || !s.literal.empty(), "{}: Split pre-tokenizer has an empty pattern", what);
  } else if (type == "ByteLevel") {
    s.kind = PreStep::ByteLevel;
    s.add_prefix_space = p.value("add_prefix_space", false);
    if (p.value("use_regex", true)) s.regex = std::make_shared<Regex>(kGpt2Pattern, what);
    byte_level_ = true;
  } else if (type == "Metaspace") {
    s.kind = PreStep::Metaspace;
    s.replacement = p.value("replacement", "\xe2\x96\x81");
    const std::string scheme = p.value("prepend_scheme", p.value("add_prefix_space", true) ? "always" : "never");
    if (scheme == "always") s.prepend = PreStep::Always;
    else if (scheme == "first") s.prepend = PreStep::First;
    else if (scheme == "never") s.prepend = PreStep::Never;
    else fail("{}: Metaspace prepend_scheme '{}' is not supported", what, scheme);
    s.split = p.value("split", true);
  } else if (type == "Digits") {
    s.kind = PreStep::Digits;
    s.individual_digits = p.value("individual_digits", false);
  } else {
    fail("{}: pre-tokenizer '{}' is not supported", what, type);
  }
  pre_.push_back(std::move(s));
}

void HfTokenizer::parse_decoder(const json& d, const std::string& what) {
  const std::string type = d.value("type", "");
  if (type == "Sequence") {
    for (const json& s : d.value("decoders", json::array())) parse_decoder(s, what);
  } else if (type == "ByteLevel") {
    decoder_.push_back({DecStep::ByteLevel});
  } else if (type == "Metaspace") {
    DecStep s{DecStep::Metaspace, d.value("replacement", "\xe2\x96\x81"), " "};
    s.prepend = d.value("prepend_scheme", "always") != "never" && d.value("add_prefix_space", true);
    decoder_.push_back(s);
  } else if (type == "Replace") {
    LB_CHECK(d.contains("pattern") && d["pattern"].contains("String"),
             "{}: Replace decoder with a regex pattern is not supported", what);
    decoder_.push_back({DecStep::Replace, d["pattern"]["String"].get<std::string>(), d.value("content", "")});
  } else if (type == "ByteFallback") {
    decoder_.push_back({DecStep::ByteFallback});
  } else if (type == "Fuse") {
    decoder_.push_back({DecStep::Fuse});
  } else if (type == "Strip") {
    DecStep s{DecStep::Strip, d.value("content", " ")};
    // Characters stripped at each end: non-negative integers (a float or a huge number is a bad
    // file, not something to convert).
    for (auto [key, field] : {std::pair{"start", &s.start}, std::pair{"stop", &s.stop}}) {
      if (!d.contains(key)) continue;
      const json& v = d[key];
      LB_CHECK(v.is_number_integer() && v.get<int64_t>() >= 0 && v.get<int64_t>() <= (1 << 20),
               "{}: Strip decoder's '{}' is {}, not a count of characters in [0, {}]", what, key, v.dump(), 1 << 20);
      *field = int(v.get<int64_t>());
    }
    decoder_.push_back(s);
  } else {
    fail("{}: decoder '{}' is not supported", what, type);
  }
}

void HfTokenizer::parse_post_processor(const json& p, const std::string& what) {
  const std::string type = p.value("type", "");
  if (type == "Sequence") {
    for (const json& s : p.value("processors", json::array())) parse_post_processor(s, what);
  } else if (type == "ByteLevel") {
    // Adjusts offsets only.
  } else if (type == "TemplateProcessing") {
    LB_CHECK(p.contains("single") && p["single"].is_array(), "{}: TemplateProcessing has no 'single' template", what);
    const json& specials = p.value("special_tokens", json::object());
    bool seen_sequence = false;
    for (const json& item : p["single"]) {
      if (item.contains("Sequence")) {
        seen_sequence = true;
      } else if (item.contains("SpecialToken")) {
        const std::string name = item["SpecialToken"].value("id", "");
        LB_CHECK(specials.contains(name) && specials[name].contains("ids") && specials[name]["ids"].is_array(),
                 "{}: TemplateProcessing uses special token '{}' that it does not define", what, name);
        for (const json& id : specials[name]["ids"]) {
          LB_CHECK(id.is_number_integer(), "{}: special token '{}' has a non-integer id", what, name);
          (seen_sequence ? template_suffix_ : template_prefix_).push_back(id.get<int32_t>());
        }
      } else {
        fail("{}: unknown TemplateProcessing item {}", what, item.dump());
      }
    }
  } else {
    fail("{}: post-processor '{}' is not supported", what, type);
  }
}

void HfTokenizer::pre_tokenize(std::vector<Piece>& pieces) const {
  std::vector<Piece> next;
  std::vector<std::pair<size_t, size_t>> spans;
  for (const PreStep& s : pre_) {
    next.clear();
    for (Piece& p : pieces) {
      spans.clear();
      switch (s.kind) {
        case PreStep::Split:
          if (s.regex) {
            s.regex->for_each_match(p.text, [&](size_t b, size_t e) { spans.push_back({b, e}); });
          } else {
            for (size_t pos = p.text.find(s.literal); pos != std::string::npos;
                 pos = p.text.find(s.literal, pos + s.literal.size()))
              spans.push_back({pos, pos + s.literal.size()});
          }
          split_spans(p, spans, s.behavior, next);
          break;
        case PreStep::ByteLevel:
          if (s.add_prefix_space && (p.text.empty() || p.text[0] != ' ')) p.text.insert(0, 1, ' ');
          if (s.regex) {
            s.regex->for_each_match(p.text, [&](size_t b, size_t e) { spans.push_back({b, e}); });
            split_spans(p, spans, SplitBehavior::Isolated, next);
          } else {
            next.push_back(std::move(p));
          }
          break;
        case PreStep::Metaspace: {
          std::string t;
          t.reserve(p.text.size() + 8);
          for (char c : p.text) {
            if (c == ' ') t += s.replacement;
            else t += c;
          }
          const bool starts = t.compare(0, s.replacement.size(), s.replacement) == 0;
          if (!starts && (s.prepend == PreStep::Always || (s.prepend == PreStep::First && p.at_start)))
            t.insert(0, s.replacement);
          Piece q{std::move(t), p.at_start};
          if (s.split) {
            for (size_t pos = q.text.find(s.replacement); pos != std::string::npos;
                 pos = q.text.find(s.replacement, pos + s.replacement.size()))
              spans.push_back({pos, pos + s.replacement.size()});
            split_spans(q, spans, SplitBehavior::MergedWithNext, next);
          } else {
            next.push_back(std::move(q));
          }
          break;
        }
        case PreStep::Digits: {
          size_t i = 0;
          while (i < p.text.size()) {
            const bool digit = p.text[i] >= '0' && p.text[i] <= '9';
            size_t j = i + 1;
            if (digit && !s.individual_digits)
              while (j < p.text.size() && p.text[j] >= '0' && p.text[j] <= '9') ++j;
            if (digit) spans.push_back({i, j});
            i = j;
          }
          split_spans(p, spans, SplitBehavior::Isolated, next);
          break;
        }
      }
    }
    pieces.swap(next);
  }
}

void HfTokenizer::bpe_word(const std::string& word, std::vector<int32_t>& out,
                           std::unordered_map<std::string, std::vector<int32_t>>& cache) const {
  if (ignore_merges_) {
    if (auto id = token_id(word)) {
      out.push_back(*id);
      return;
    }
  }
  const bool cacheable = word.size() < 256;
  if (cacheable) {
    auto it = cache.find(word);
    if (it != cache.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<int32_t> sym;
  sym.reserve(word.size());
  if (byte_level_) {
    // A byte without a token becomes unk_token (consecutive ones fused under fuse_unk), or is
    // dropped when there is none, as in the tokenizers library's BPE.
    bool last_unk = false;
    for (unsigned char c : word) {
      if (byte_token_[c] >= 0) {
        sym.push_back(byte_token_[c]);
        last_unk = false;
      } else if (unk_) {
        if (!(fuse_unk_ && last_unk)) sym.push_back(*unk_);
        last_unk = true;
      }
    }
  } else {
    size_t i = 0;
    bool last_unk = false;
    while (i < word.size()) {
      const size_t len = utf8_len(static_cast<unsigned char>(word[i]));
      const std::string ch = word.substr(i, len);
      i += len;
      if (auto id = token_id(ch)) {
        sym.push_back(*id);
        last_unk = false;
        continue;
      }
      bool all_bytes = byte_fallback_;
      if (byte_fallback_)
        for (unsigned char c : ch) all_bytes = all_bytes && fallback_token_[c] >= 0;
      if (all_bytes) {
        for (unsigned char c : ch) sym.push_back(fallback_token_[c]);
        last_unk = false;
      } else {
        LB_CHECK(unk_.has_value(), "text has a character that the vocabulary cannot represent and there is no unk_token");
        if (!(fuse_unk_ && last_unk)) sym.push_back(*unk_);
        last_unk = true;
      }
    }
  }
  merges_.apply(sym);
  out.insert(out.end(), sym.begin(), sym.end());
  if (cacheable && cache.size() < 100000) cache.emplace(word, std::move(sym));
}

std::vector<int32_t> HfTokenizer::encode_plain(std::string_view text) const {
  const size_t bad = utf8_find_invalid(text);
  LB_CHECK(bad == std::string_view::npos, "text is not valid UTF-8 (byte {} of {})", bad, text.size());
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  std::unordered_map<std::string, std::vector<int32_t>> cache;
  std::vector<Piece> pieces;

  auto encode_segment = [&](size_t b, size_t e) {
    if (e <= b) return;
    Piece p{std::string(text.substr(b, e - b)), b == 0};
    for (const NormStep& n : normalizer_) {
      if (n.kind == NormStep::Prepend) {
        if (!p.text.empty()) p.text.insert(0, n.a);
      } else if (!n.a.empty()) {
        std::string r;
        r.reserve(p.text.size());
        size_t pos = 0;
        for (size_t f = p.text.find(n.a); f != std::string::npos; f = p.text.find(n.a, pos)) {
          r.append(p.text, pos, f - pos);
          r += n.b;
          pos = f + n.a.size();
        }
        r.append(p.text, pos, std::string::npos);
        p.text.swap(r);
      }
    }
    pieces.clear();
    pieces.push_back(std::move(p));
    pre_tokenize(pieces);
    for (const Piece& q : pieces)
      if (!q.text.empty()) bpe_word(q.text, ids, cache);
  };

  // Added tokens are split out first: leftmost match, longest at a position.
  auto is_space = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; };
  auto is_word = [](unsigned char c) { return c >= 0x80 || std::isalnum(c) || c == '_'; };
  size_t seg_start = 0, i = 0;
  while (i < text.size()) {
    const AddedToken* hit = nullptr;
    for (size_t k : added_by_first_byte_[static_cast<unsigned char>(text[i])]) {
      const AddedToken& t = added_[k];
      if (text.compare(i, t.content.size(), t.content) != 0) continue;
      if (t.single_word) {
        const size_t e = i + t.content.size();
        if ((i > 0 && is_word(static_cast<unsigned char>(text[i - 1]))) ||
            (e < text.size() && is_word(static_cast<unsigned char>(text[e]))))
          continue;
      }
      hit = &t;
      break;
    }
    if (!hit) {
      ++i;
      continue;
    }
    size_t seg_end = i, next = i + hit->content.size();
    if (hit->lstrip)
      while (seg_end > seg_start && is_space(text[seg_end - 1])) --seg_end;
    if (hit->rstrip)
      while (next < text.size() && is_space(text[next])) ++next;
    encode_segment(seg_start, seg_end);
    ids.push_back(hit->id);
    seg_start = i = next;
  }
  encode_segment(seg_start, text.size());
  return ids;
}

std::string HfTokenizer::decode(std::span<const int32_t> ids) const {
  std::vector<std::string> toks;
  toks.reserve(ids.size());
  for (int32_t id : ids) {
    LB_CHECK(id >= 0 && size_t(id) < id_to_token_.size(), "cannot decode token id {}: vocabulary size is {}", id,
             id_to_token_.size());
    toks.push_back(id_to_token_[size_t(id)]);
  }
  for (const DecStep& d : decoder_) {
    switch (d.kind) {
      case DecStep::ByteLevel:  // the vocabulary already holds raw bytes
        break;
      case DecStep::Replace:
        for (std::string& t : toks) {
          std::string r;
          size_t pos = 0;
          for (size_t f = t.find(d.a); f != std::string::npos && !d.a.empty(); f = t.find(d.a, pos)) {
            r.append(t, pos, f - pos);
            r += d.b;
            pos = f + d.a.size();
          }
          r.append(t, pos, std::string::npos);
          t.swap(r);
        }
        break;
      case DecStep::Metaspace:
        for (size_t k = 0; k < toks.size(); ++k) {
          std::string r;
          size_t pos = 0;
          std::string& t = toks[k];
          for (size_t f = t.find(d.a); f != std::string::npos; f = t.find(d.a, pos)) {
            r.append(t, pos, f - pos);
            r += ' ';
            pos = f + d.a.size();
          }
          r.append(t, pos, std::string::npos);
          if (k == 0 && d.prepend && !r.empty() && r[0] == ' ') r.erase(0, 1);
          t.swap(r);
        }
        break;
      case DecStep::ByteFallback:
        for (std::string& t : toks) {
          if (t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>' && std::isxdigit(static_cast<unsigned char>(t[3])) &&
              std::isxdigit(static_cast<unsigned char>(t[4])))
            t = std::string(1, char(std::stoi(t.substr(3, 2), nullptr, 16)));
        }
        break;
      case DecStep::Fuse: {
        std::string all;
        for (const std::string& t : toks) all += t;
        toks.assign(1, std::move(all));
        break;
      }
      case DecStep::Strip:
        for (std::string& t : toks) {
          int cut = 0;
          while (cut < d.start && t.compare(size_t(cut) * d.a.size(), d.a.size(), d.a) == 0) ++cut;
          t.erase(0, size_t(cut) * d.a.size());
          int cut_end = 0;
          while (cut_end < d.stop && t.size() >= d.a.size() * size_t(cut_end + 1) &&
                 t.compare(t.size() - d.a.size() * size_t(cut_end + 1), d.a.size(), d.a) == 0)
            ++cut_end;
          t.resize(t.size() - size_t(cut_end) * d.a.size());
        }
        break;
    }
  }
  std::string out;
  for (const std::string& t : toks) out += t;
  return out;
}

std::vector<SpecialToken> HfTokenizer::special_tokens() const {
  std::vector<SpecialToken> out;
  for (const auto& a : added_) {
    if (!a.special) continue;
    std::string role = "special";
    if (bos_ && a.id == *bos_) role = "bos";
    else if (eos_ && a.id == *eos_) role = "eos";
    else if (unk_ && a.id == *unk_) role = "unk";
    out.push_back({a.id, a.content, role});
  }
  return out;
}

}  // namespace

std::unique_ptr<Tokenizer> load_hf_tokenizer_json(const std::string& json_text, const std::string& what,
                                                  const std::string& tokenizer_config_json, const std::string& kind) {
  json j = json::parse(json_text, nullptr, false);
  LB_CHECK(!j.is_discarded(), "{}: not valid JSON", what);
  json config;
  if (!tokenizer_config_json.empty()) {
    config = json::parse(tokenizer_config_json, nullptr, false);
    LB_CHECK(!config.is_discarded(), "{}: tokenizer_config.json beside it is not valid JSON", what);
  }
  try {
    return std::make_unique<HfTokenizer>(j, what, config, kind);
  } catch (const json::exception& e) {
    fail("{}: malformed tokenizer description: {}", what, e.what());
  }
}

}  // namespace lowbit
