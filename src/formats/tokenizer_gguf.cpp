#include "formats/tokenizer_gguf.h"

#include "core/error.h"
#include "core/utf8.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <map>
#include <set>
#include <unordered_map>
#include <unordered_set>

namespace lowbit {

using json = nlohmann::json;

namespace {

constexpr int32_t kTypeControl = 3;
constexpr int32_t kTypeUserDefined = 4;

// LLaMA-3's pre-tokenizer regex, as transformers spells it for the GGUF pre names below.
const char* kLlama3Split =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3})"
    R"(| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// tokenizer.ggml.pre values and the regex transformers splits with ("" = GPT-2's ByteLevel regex).
const std::map<std::string, const char*>& byte_level_pres() {
  static const std::map<std::string, const char*> m = {
      {"", ""},           {"default", ""},       {"gpt-2", ""},           {"smollm", ""},
      {"llama3", kLlama3Split},    {"llama-v3", kLlama3Split}, {"llama-bpe", kLlama3Split},
      {"falcon3", kLlama3Split},   {"falcon-h1", kLlama3Split}, {"pixtral", kLlama3Split},
      {"midm-2.0", kLlama3Split},  {"lfm2", kLlama3Split},     {"jina-v5-nano", kLlama3Split},
      {"dbrx", kLlama3Split},      {"smaug-bpe", kLlama3Split}};
  return m;
}

std::string supported_list(const std::map<std::string, const char*>& m) {
  std::string s;
  for (const auto& [k, v] : m) {
    if (k.empty()) continue;
    if (!s.empty()) s += ", ";
    s += k;
  }
  return s;
}

// GPT-2's bytes_to_unicode as UTF-8 strings, byte -> spelling.
std::array<std::string, 256> byte_spellings() {
  std::array<std::string, 256> out;
  uint32_t n = 0;
  for (int b = 0; b < 256; ++b) {
    const bool direct = (b >= '!' && b <= '~') || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
    utf8_append(out[size_t(b)], direct ? uint32_t(b) : 256 + n++);
  }
  return out;
}

size_t code_points(const std::string& s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xc0) != 0x80;
  return n;
}

// transformers' generate_merges(vocab, vocab_scores): for every token (in file order, each
// string once), every split into two vocabulary entries, ordered within the token by the ids of
// the halves; then all of them stably ordered by (score, len(left), len(right)), largest first.
json derive_merges(const GgufTokenizerData& d, const std::unordered_map<std::string, int64_t>& vocab) {
  struct Merge {
    std::string l, r;
    float score;
    size_t ll, lr;
  };
  // dict(zip(tokens, scores)): a repeated string keeps its first position and its last score.
  std::unordered_map<std::string, size_t> first;
  std::vector<size_t> order;
  std::vector<float> score;
  for (size_t i = 0; i < d.tokens.size(); ++i) {
    auto [it, fresh] = first.emplace(d.tokens[i], order.size());
    if (fresh) {
      order.push_back(i);
      score.push_back(d.scores[i]);
    } else {
      score[it->second] = d.scores[i];
    }
  }
  std::vector<Merge> merges;
  std::vector<Merge> local;
  for (size_t k = 0; k < order.size(); ++k) {
    const std::string& t = d.tokens[order[k]];
    local.clear();
    for (size_t cut = utf8_len(static_cast<unsigned char>(t[0])); cut < t.size();
         cut += utf8_len(static_cast<unsigned char>(t[cut]))) {
      std::string l = t.substr(0, cut), r = t.substr(cut);
      if (vocab.count(l) && vocab.count(r)) local.push_back({std::move(l), std::move(r), score[k], 0, 0});
    }
    std::stable_sort(local.begin(), local.end(), [&](const Merge& a, const Merge& b) {
      const int64_t al = vocab.at(a.l), bl = vocab.at(b.l);
      return al != bl ? al < bl : vocab.at(a.r) < vocab.at(b.r);
    });
    for (Merge& m : local) {
      m.ll = code_points(m.l);
      m.lr = code_points(m.r);
      merges.push_back(std::move(m));
    }
  }
  std::stable_sort(merges.begin(), merges.end(), [](const Merge& a, const Merge& b) {
    if (a.score != b.score) return a.score > b.score;
    if (a.ll != b.ll) return a.ll > b.ll;
    return a.lr > b.lr;
  });
  json out = json::array();
  for (const Merge& m : merges) out.push_back(json::array({m.l, m.r}));
  return out;
}

json template_processing(const std::optional<std::string>& bos, int64_t bos_id, const std::optional<std::string>& eos,
                         int64_t eos_id) {
  json single = json::array();
  json specials = json::object();
  if (bos) {
    single.push_back({{"SpecialToken", {{"id", *bos}, {"type_id", 0}}}});
    specials[*bos] = {{"id", *bos}, {"ids", json::array({bos_id})}, {"tokens", json::array({*bos})}};
  }
  single.push_back({{"Sequence", {{"id", "A"}, {"type_id", 0}}}});
  if (eos) {
    single.push_back({{"SpecialToken", {{"id", *eos}, {"type_id", 0}}}});
    specials[*eos] = {{"id", *eos}, {"ids", json::array({eos_id})}, {"tokens", json::array({*eos})}};
  }
  return {{"type", "TemplateProcessing"}, {"single", single}, {"special_tokens", specials}};
}

}  // namespace

GgufTokenizerJson gguf_tokenizer_json(const GgufTokenizerData& d, const std::string& what) {
  const bool byte_level = d.model == "gpt2";
  LB_CHECK(byte_level || d.model == "llama",
           "{}: tokenizer.ggml.model '{}' is not supported (supported: gpt2, llama)", what, d.model);
  const size_t n = d.tokens.size();
  LB_CHECK(n > 0, "{}: tokenizer.ggml.tokens is empty or missing", what);
  LB_CHECK(n < (size_t(1) << 24), "{}: tokenizer.ggml.tokens has {} entries, more than lowbit supports", what, n);
  LB_CHECK(d.token_type.empty() || d.token_type.size() == n,
           "{}: tokenizer.ggml.token_type has {} entries but tokenizer.ggml.tokens has {}", what, d.token_type.size(), n);
  LB_CHECK(d.scores.empty() || d.scores.size() == n,
           "{}: tokenizer.ggml.scores has {} entries but tokenizer.ggml.tokens has {}", what, d.scores.size(), n);
  for (size_t i = 0; i < n; ++i) {
    LB_CHECK(!d.tokens[i].empty(), "{}: tokenizer.ggml.tokens[{}] is empty", what, i);
    LB_CHECK(utf8_find_invalid(d.tokens[i]) == std::string_view::npos,
             "{}: tokenizer.ggml.tokens[{}] is not valid UTF-8", what, i);
  }
  auto check_id = [&](const std::optional<int64_t>& id, const char* key) {
    LB_CHECK(!id || (*id >= 0 && size_t(*id) < n), "{}: tokenizer.ggml.{} is {}, outside the vocabulary (size {})",
             what, key, id.value_or(0), n);
  };
  check_id(d.bos_id, "bos_token_id");
  check_id(d.eos_id, "eos_token_id");
  check_id(d.unk_id, "unknown_token_id");
  check_id(d.pad_id, "padding_token_id");
  check_id(d.sep_id, "seperator_token_id");

  json j = json::object();
  json model = {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}};
  std::unordered_set<std::string> spelled_vocab;  // the vocabulary's keys
  const auto spelling = byte_spellings();

  std::set<uint32_t> alphabet;  // the code points of the byte-level spelling
  for (const std::string& s : spelling) {
    size_t i = 0;
    alphabet.insert(utf8_next(s, i));
  }
  auto spelled_in_alphabet = [&](const std::string& t) {
    for (size_t i = 0; i < t.size();)
      if (!alphabet.count(utf8_next(t, i))) return false;
    return true;
  };

  if (byte_level) {
    auto pre = byte_level_pres().find(d.pre);
    LB_CHECK(pre != byte_level_pres().end(), "{}: tokenizer.ggml.pre '{}' is not supported for model gpt2 (supported: {})",
             what, d.pre, supported_list(byte_level_pres()));
    // A token spelled outside the byte alphabet is respelled from its UTF-8 bytes. (transformers
    // would keep the last id of a spelling that occurs twice; such a vocabulary is refused.)
    json vocab = json::object();
    std::map<std::string, int64_t> by_spelling;
    for (size_t id = 0; id < n; ++id) {
      const std::string& t = d.tokens[id];
      std::string key;
      if (spelled_in_alphabet(t)) {
        key = t;
      } else {
        for (unsigned char c : t) key += spelling[c];
      }
      by_spelling[key] = int64_t(id);
    }
    LB_CHECK(by_spelling.size() == n, "{}: tokenizer.ggml.tokens spells {} of its {} tokens twice", what,
             n - by_spelling.size(), n);
    for (auto& [k, id] : by_spelling) {
      vocab[k] = id;
      spelled_vocab.insert(k);
    }
    model["vocab"] = std::move(vocab);
    json merges = json::array();
    for (const std::string& m : d.merges) merges.push_back(m);
    LB_CHECK(!d.merges.empty(), "{}: tokenizer.ggml.merges is missing (a gpt2 tokenizer needs its merges)", what);
    model["merges"] = std::move(merges);
    model["fuse_unk"] = false;
    model["byte_fallback"] = false;
    model["ignore_merges"] = false;
    if (*pre->second == '\0') {
      j["pre_tokenizer"] = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}};
    } else {
      j["pre_tokenizer"] = {
          {"type", "Sequence"},
          {"pretokenizers",
           json::array({{{"type", "Split"}, {"pattern", {{"Regex", pre->second}}}, {"behavior", "Isolated"},
                         {"invert", false}},
                        {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}})}};
    }
    j["decoder"] = {{"type", "ByteLevel"}};
  } else {
    LB_CHECK(d.pre.empty() || d.pre == "default",
             "{}: tokenizer.ggml.pre '{}' is not supported for model llama (supported: default)", what, d.pre);
    for (const char* arch : {"gemma", "gemma2", "gemma3", "phi3"})
      LB_CHECK(d.architecture != arch,
               "{}: the SentencePiece tokenizer of architecture '{}' is not supported (transformers converts it "
               "differently)", what, d.architecture);
    LB_CHECK(!d.merges.empty() || d.scores.size() == n,
             "{}: tokenizer.ggml.scores is missing (a llama tokenizer without merges needs its scores)", what);
    std::unordered_map<std::string, int64_t> ids;
    for (size_t id = 0; id < n; ++id) ids[d.tokens[id]] = int64_t(id);
    LB_CHECK(ids.size() == n, "{}: tokenizer.ggml.tokens repeats {} of its {} tokens", what, n - ids.size(), n);
    json vocab = json::object();
    for (size_t id = 0; id < n; ++id) {
      vocab[d.tokens[id]] = int64_t(id);
      spelled_vocab.insert(d.tokens[id]);
    }
    model["vocab"] = std::move(vocab);
    if (!d.merges.empty()) {
      json merges = json::array();
      for (const std::string& m : d.merges) merges.push_back(m);
      model["merges"] = std::move(merges);
    } else {
      model["merges"] = derive_merges(d, ids);
    }
    model["fuse_unk"] = true;
    model["byte_fallback"] = true;
    model["ignore_merges"] = false;
    j["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", "\xe2\x96\x81"}, {"prepend_scheme", "first"},
                          {"split", false}};
    j["decoder"] = {{"type", "Sequence"},
                    {"decoders", json::array({{{"type", "Replace"}, {"pattern", {{"String", "\xe2\x96\x81"}}},
                                               {"content", " "}},
                                              {{"type", "ByteFallback"}},
                                              {{"type", "Fuse"}},
                                              {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}})}};
  }
  j["model"] = std::move(model);
  j["normalizer"] = nullptr;

  // Added tokens, each once, in id order: the default special tokens of the transformers class
  // that builds the tokenizer (GPT2Tokenizer: "<|endoftext|>"; LlamaTokenizer: "<s>", "</s>",
  // "<unk>"), each at its vocabulary id or, when the vocabulary lacks it, at the next id after
  // it; the control tokens and the tokens named by the bos/eos/unk/pad ids (special); the
  // user-defined tokens (plain).
  std::map<int64_t, std::pair<std::string, bool>> added;  // id -> content, special
  int64_t next_id = int64_t(n);
  std::vector<std::string> class_defaults;
  if (byte_level) class_defaults = {"<|endoftext|>"};
  else class_defaults = {"<s>", "</s>", "<unk>"};
  for (const std::string& t : class_defaults) {
    int64_t id = -1;
    for (size_t i = 0; i < n && id < 0; ++i)
      if (d.tokens[i] == t) id = int64_t(i);
    added[id >= 0 ? id : next_id++] = {t, true};
  }
  for (size_t id = 0; id < d.token_type.size(); ++id) {
    if (d.token_type[id] == kTypeControl && (!byte_level || spelled_in_alphabet(d.tokens[id])))
      added[int64_t(id)] = {d.tokens[id], true};
  }
  for (const auto* id : {&d.bos_id, &d.eos_id, &d.unk_id, &d.pad_id}) {
    if (!*id) continue;
    const std::string& t = d.tokens[size_t(**id)];
    LB_CHECK(spelled_vocab.count(t), "{}: special token {} ('{}') is spelled outside the byte-level alphabet, "
             "which is not supported", what, **id, t);
    added[**id] = {t, true};
  }
  for (size_t id = 0; id < d.token_type.size(); ++id) {
    if (d.token_type[id] == kTypeUserDefined && spelled_vocab.count(d.tokens[id]) && !added.count(int64_t(id)))
      added[int64_t(id)] = {d.tokens[id], false};
  }
  json added_tokens = json::array();
  for (const auto& [id, a] : added)
    added_tokens.push_back({{"id", id}, {"content", a.first}, {"single_word", false}, {"lstrip", false},
                            {"rstrip", false}, {"normalized", false}, {"special", a.second}});
  j["added_tokens"] = std::move(added_tokens);

  // transformers adds BOS by default to a SentencePiece vocabulary that does not say otherwise,
  // and drops add_bos/add_eos when the token is not named.
  const bool add_bos = d.add_bos_token.value_or(!byte_level) && d.bos_id.has_value();
  const bool add_eos = d.add_eos_token.value_or(false) && d.eos_id.has_value();
  std::optional<std::string> bos, eos;
  if (add_bos) bos = d.tokens[size_t(*d.bos_id)];
  if (add_eos) eos = d.tokens[size_t(*d.eos_id)];
  j["post_processor"] = template_processing(bos, d.bos_id.value_or(0), eos, d.eos_id.value_or(0));

  json config = json::object();
  if (d.bos_id) config["bos_token"] = d.tokens[size_t(*d.bos_id)];
  if (d.eos_id) config["eos_token"] = d.tokens[size_t(*d.eos_id)];
  return {j.dump(), config.dump()};
}

std::unique_ptr<Tokenizer> load_gguf_tokenizer(const GgufTokenizerData& d, const std::string& what) {
  const GgufTokenizerJson j = gguf_tokenizer_json(d, what);
  const std::string kind = d.model == "gpt2"
                               ? "gguf-bpe-bytelevel (" + (d.pre.empty() ? std::string("default") : d.pre) + ")"
                               : "gguf-bpe-sentencepiece (llama)";
  return load_hf_tokenizer_json(j.tokenizer_json, what, j.tokenizer_config_json, kind);
}

}  // namespace lowbit
