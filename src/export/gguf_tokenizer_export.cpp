#include "export/gguf_tokenizer_export.h"

#include "core/error.h"
#include "formats/gguf_writer.h"

#include <nlohmann/json.hpp>

#include <cstring>
#include <fstream>
#include <map>
#include <sstream>

namespace lowbit {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

std::string read_all(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  LB_CHECK(f.good(), "cannot read '{}'", p.string());
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// Protocol-buffer wire reading, just what SentencePiece's ModelProto needs:
//   ModelProto   1: repeated SentencePiece pieces (length-delimited)
//   SentencePiece 1: piece (string), 2: score (fixed32 float), 3: type (varint, default 1)
struct Wire {
  const uint8_t* p;
  const uint8_t* end;
  std::string what;
  uint64_t varint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      LB_CHECK(p < end, "'{}': truncated protobuf varint", what);
      const uint8_t b = *p++;
      v |= uint64_t(b & 0x7f) << shift;
      if (!(b & 0x80)) return v;
    }
    fail("'{}': protobuf varint longer than 10 bytes", what);
  }
  // Skips a field of wire type `wt` (the field's bytes for length-delimited ones).
  std::pair<const uint8_t*, uint64_t> field(uint32_t wt) {
    switch (wt) {
      case 0: varint(); return {nullptr, 0};
      case 1: LB_CHECK(end - p >= 8, "'{}': truncated protobuf", what); p += 8; return {p - 8, 8};
      case 5: LB_CHECK(end - p >= 4, "'{}': truncated protobuf", what); p += 4; return {p - 4, 4};
      case 2: {
        const uint64_t n = varint();
        LB_CHECK(uint64_t(end - p) >= n, "'{}': protobuf field of {} bytes overruns the file", what, n);
        p += n;
        return {p - n, n};
      }
      default: fail("'{}': protobuf wire type {} is not valid here", what, wt);
    }
  }
};

void sentencepiece_pieces(const std::string& bytes, const std::string& what, GgufTokenizerData& d) {
  Wire w{reinterpret_cast<const uint8_t*>(bytes.data()), reinterpret_cast<const uint8_t*>(bytes.data()) + bytes.size(),
         what};
  while (w.p < w.end) {
    const uint64_t tag = w.varint();
    const auto [data, n] = w.field(uint32_t(tag & 7));
    if ((tag >> 3) != 1 || (tag & 7) != 2) continue;
    Wire pw{data, data + n, what};
    std::string piece;
    float score = 0.0f;
    int32_t type = 1;
    while (pw.p < pw.end) {
      const uint64_t t = pw.varint();
      const uint32_t field = uint32_t(t >> 3), wt = uint32_t(t & 7);
      if (field == 3 && wt == 0) {
        type = int32_t(pw.varint());
        continue;
      }
      const auto [fd, fn] = pw.field(wt);
      if (field == 1 && wt == 2) piece.assign(reinterpret_cast<const char*>(fd), fn);
      if (field == 2 && wt == 5) std::memcpy(&score, fd, 4);
    }
    LB_CHECK(type >= 1 && type <= 6, "'{}': piece {} '{}' has type {}, outside SentencePiece's 1..6", what,
             d.tokens.size(), piece, type);
    d.tokens.push_back(piece);
    d.scores.push_back(score);
    d.token_type.push_back(type);
  }
  LB_CHECK(!d.tokens.empty(), "'{}' holds no SentencePiece pieces", what);
}

std::optional<int64_t> id_of(const std::vector<std::string>& tokens, const std::string& text) {
  for (size_t i = 0; i < tokens.size(); ++i)
    if (tokens[i] == text) return int64_t(i);
  return std::nullopt;
}

// A special token of tokenizer_config.json: a string or {"content": ...}.
std::optional<std::string> config_token(const json& cfg, const char* key) {
  if (!cfg.contains(key)) return std::nullopt;
  const json& v = cfg[key];
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
  return std::nullopt;
}

std::string bpe_pre(const json& pre, const std::string& what) {
  auto type = [](const json& j) { return j.is_object() ? j.value("type", std::string()) : std::string(); };
  if (type(pre) == "ByteLevel") return "gpt-2";
  if (type(pre) == "Sequence" && pre.contains("pretokenizers") && pre["pretokenizers"].is_array()) {
    const json& seq = pre["pretokenizers"];
    if (seq.size() == 2 && type(seq[1]) == "ByteLevel") {
      if (type(seq[0]) == "Digits" && seq[0].value("individual_digits", false)) return "smollm";
      if (type(seq[0]) == "Split" && seq[0].contains("pattern")) {
        const std::string regex = seq[0]["pattern"].value("Regex", std::string());
        if (regex.rfind("(?i:'s|'t|'re|'ve|'m|'ll|'d)", 0) == 0) return "llama-bpe";
      }
    }
  }
  fail("'{}': its pre-tokenizer ({}) is none that lowbit can name for llama.cpp (ByteLevel: gpt-2; Digits + "
       "ByteLevel: smollm; LLaMA-3's Split + ByteLevel: llama-bpe)",
       what, pre.dump().substr(0, 200));
}

void bpe_tokenizer(const json& tj, const std::string& what, GgufTokenizerData& d) {
  const json& model = tj.at("model");
  LB_CHECK(model.value("type", std::string()) == "BPE", "'{}': model type '{}' is not BPE", what,
           model.value("type", std::string()));
  d.model = "gpt2";
  d.pre = bpe_pre(tj.value("pre_tokenizer", json(nullptr)), what);
  std::map<int64_t, std::string> by_id;
  for (auto it = model.at("vocab").begin(); it != model.at("vocab").end(); ++it) by_id[it.value().get<int64_t>()] = it.key();
  std::map<int64_t, bool> added;  // id -> special
  for (const json& a : tj.value("added_tokens", json::array())) {
    const int64_t id = a.at("id").get<int64_t>();
    by_id[id] = a.at("content").get<std::string>();
    added[id] = a.value("special", false);
  }
  LB_CHECK(!by_id.empty() && by_id.begin()->first == 0 && by_id.rbegin()->first == int64_t(by_id.size()) - 1,
           "'{}': token ids are not 0..{} without gaps", what, by_id.size() - 1);
  for (const auto& [id, text] : by_id) {
    d.tokens.push_back(text);
    auto a = added.find(id);
    d.token_type.push_back(a == added.end() ? 1 : (a->second ? 3 : 4));
  }
  for (const json& m : model.value("merges", json::array()))
    d.merges.push_back(m.is_string() ? m.get<std::string>() : m.at(0).get<std::string>() + " " + m.at(1).get<std::string>());
}

}  // namespace

std::optional<GgufTokenizerData> gguf_tokenizer_of(const fs::path& dir, const LlamaConfig& c, std::string& why) {
  GgufTokenizerData d;
  d.architecture = "llama";
  json cfg = json::object();
  if (fs::exists(dir / "tokenizer_config.json")) {
    cfg = json::parse(read_all(dir / "tokenizer_config.json"), nullptr, false);
    LB_CHECK(!cfg.is_discarded() && cfg.is_object(), "'{}' is not a JSON object", (dir / "tokenizer_config.json").string());
  }
  if (fs::exists(dir / "tokenizer.json")) {
    const std::string what = (dir / "tokenizer.json").string();
    const json tj = json::parse(read_all(dir / "tokenizer.json"), nullptr, false);
    LB_CHECK(!tj.is_discarded() && tj.is_object(), "'{}' is not a JSON object", what);
    bpe_tokenizer(tj, what, d);
    // BOS is added when the post-processor's single template starts with it.
    bool template_bos = false;
    const json post = tj.value("post_processor", json(nullptr));
    if (post.is_object() && post.value("type", std::string()) == "TemplateProcessing" && post.contains("single") &&
        !post["single"].empty() && post["single"][0].contains("SpecialToken"))
      template_bos = true;
    d.add_bos_token = cfg.contains("add_bos_token") ? cfg["add_bos_token"].get<bool>() : template_bos;
  } else if (fs::exists(dir / "tokenizer.model")) {
    d.model = "llama";
    d.pre = "default";
    sentencepiece_pieces(read_all(dir / "tokenizer.model"), (dir / "tokenizer.model").string(), d);
    d.add_bos_token = cfg.contains("add_bos_token") ? cfg["add_bos_token"].get<bool>() : true;
    for (size_t i = 0; i < d.token_type.size(); ++i)
      if (d.token_type[i] == 2 && !d.unk_id) d.unk_id = int64_t(i);
  } else {
    why = fmt::format("'{}' has no tokenizer.json or tokenizer.model", dir.string());
    return std::nullopt;
  }
  if (cfg.contains("add_eos_token") && cfg["add_eos_token"].is_boolean()) d.add_eos_token = cfg["add_eos_token"].get<bool>();
  if (cfg.contains("chat_template") && cfg["chat_template"].is_string())
    d.chat_template = cfg["chat_template"].get<std::string>();
  auto pick = [&](const char* key, std::optional<int64_t> fallback) -> std::optional<int64_t> {
    if (auto text = config_token(cfg, key))
      if (auto id = id_of(d.tokens, *text)) return id;
    return fallback;
  };
  d.bos_id = pick("bos_token", c.bos_token_id ? c.bos_token_id : id_of(d.tokens, "<s>"));
  d.eos_id = pick("eos_token", !c.eos_token_ids.empty() ? std::optional<int64_t>(c.eos_token_ids[0]) : id_of(d.tokens, "</s>"));
  d.pad_id = pick("pad_token", std::nullopt);
  if (auto u = pick("unk_token", std::nullopt)) d.unk_id = u;
  LB_CHECK(int64_t(d.tokens.size()) <= c.vocab_size, "'{}': the tokenizer has {} tokens, the embedding {} rows",
           dir.string(), d.tokens.size(), c.vocab_size);
  for (int64_t i = int64_t(d.tokens.size()); i < c.vocab_size; ++i) {
    d.tokens.push_back(fmt::format("[PAD{}]", i));
    d.token_type.push_back(5);
    if (!d.scores.empty()) d.scores.push_back(-1000.0f);
  }
  return d;
}

void write_gguf_tokenizer(GgufWriter& w, const GgufTokenizerData& d) {
  w.set_string("tokenizer.ggml.model", d.model);
  w.set_string("tokenizer.ggml.pre", d.pre);
  w.set_strings("tokenizer.ggml.tokens", d.tokens);
  if (!d.scores.empty()) w.set_f32s("tokenizer.ggml.scores", d.scores);
  w.set_i32s("tokenizer.ggml.token_type", d.token_type);
  if (!d.merges.empty()) w.set_strings("tokenizer.ggml.merges", d.merges);
  if (d.bos_id) w.set_u32("tokenizer.ggml.bos_token_id", uint32_t(*d.bos_id));
  if (d.eos_id) w.set_u32("tokenizer.ggml.eos_token_id", uint32_t(*d.eos_id));
  if (d.unk_id) w.set_u32("tokenizer.ggml.unknown_token_id", uint32_t(*d.unk_id));
  if (d.pad_id) w.set_u32("tokenizer.ggml.padding_token_id", uint32_t(*d.pad_id));
  if (d.add_bos_token) w.set_bool("tokenizer.ggml.add_bos_token", *d.add_bos_token);
  if (d.add_eos_token) w.set_bool("tokenizer.ggml.add_eos_token", *d.add_eos_token);
  if (d.chat_template) w.set_string("tokenizer.chat_template", *d.chat_template);
}

}  // namespace lowbit
