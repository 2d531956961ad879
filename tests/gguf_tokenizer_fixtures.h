// The GGUF tokenizer fixtures (scripts/make_gguf_tokenizer_fixtures.py): the manifest, and each
// case's GgufTokenizerData read back from its JSON.
#pragma once

#include "core/hash.h"
#include "core/mapped_file.h"
#include "formats/tokenizer_gguf.h"
#include "test_util.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <string>
#include <vector>

namespace lowbit::test {

// SmolLM2-135M-Instruct.Q4_1.gguf where scripts/fetch-smollm2.sh puts it (LOWBIT_SMOLLM2 names
// the file itself).
inline std::string smollm2_gguf_path() {
  if (const char* p = std::getenv("LOWBIT_SMOLLM2"); p && *p) return p;
  std::string dir;
  if (const char* m = std::getenv("LOWBIT_MODELS_CACHE"); m && *m) {
    dir = m;
  } else {
    const char* home = std::getenv("HOME");
    dir = std::string(home ? home : "") + "/.cache/lowbit/models";
  }
  return dir + "/SmolLM2-135M-Instruct.Q4_1.gguf";
}

inline std::string gguf_fixtures_dir() { return fixtures_dir() + "/gguf_tokenizer"; }

inline const nlohmann::json& gguf_manifest() {
  static nlohmann::json m = nlohmann::json::parse(slurp(gguf_fixtures_dir() + "/manifest.json"));
  return m;
}

inline std::string joined_sha256(const std::vector<std::string>& v) {
  std::string all;
  for (const auto& s : v) {
    all += s;
    all += '\0';
  }
  return sha256_hex(all);
}

// A case's data needs the shared models when it is derived from a tokenizer.json there.
inline bool gguf_case_needs_models(const std::string& name) {
  const nlohmann::json j = nlohmann::json::parse(
      read_zst(gguf_fixtures_dir() + "/" + gguf_manifest()["cases"][name]["data"].get<std::string>()));
  return j.contains("derive_from");
}

// The case's GgufTokenizerData with the manifest's overrides applied. A llama3 data file holds
// hashes in place of the vocabulary, which is rebuilt from tokenizer.json as
// convert_hf_to_gguf.py exports it (tokens by id; CONTROL for special added tokens, NORMAL
// otherwise; merges as listed) and checked against those hashes.
inline GgufTokenizerData gguf_case_data(const std::string& name) {
  using nlohmann::json;
  const json& c = gguf_manifest()["cases"][name];
  const json j = json::parse(read_zst(gguf_fixtures_dir() + "/" + c["data"].get<std::string>()));
  GgufTokenizerData d;
  d.architecture = j.value("architecture", "");
  d.model = j.value("model", "");
  d.pre = j.value("pre", "");
  if (j.contains("tokens")) d.tokens = j["tokens"].get<std::vector<std::string>>();
  if (j.contains("scores")) d.scores = j["scores"].get<std::vector<float>>();
  if (j.contains("token_type")) d.token_type = j["token_type"].get<std::vector<int32_t>>();
  if (j.contains("merges")) d.merges = j["merges"].get<std::vector<std::string>>();
  auto opt_id = [&](const char* k, std::optional<int64_t>& out) {
    if (j.contains(k)) out = j[k].get<int64_t>();
  };
  opt_id("bos_id", d.bos_id);
  opt_id("eos_id", d.eos_id);
  opt_id("unk_id", d.unk_id);
  opt_id("pad_id", d.pad_id);
  opt_id("sep_id", d.sep_id);
  auto opt_bool = [&](const json& src, const char* k, std::optional<bool>& out) {
    if (src.contains(k)) out = src[k].get<bool>();
  };
  opt_bool(j, "add_bos_token", d.add_bos_token);
  opt_bool(j, "add_eos_token", d.add_eos_token);
  opt_bool(j, "add_space_prefix", d.add_space_prefix);
  if (j.contains("chat_template")) d.chat_template = j["chat_template"].get<std::string>();

  if (j.contains("derive_from")) {
    const json t = json::parse(read_file(models_dir() + "/" + j["derive_from"].get<std::string>()));
    const json& vocab = t["model"]["vocab"];
    size_t n = vocab.size();
    for (const json& a : t["added_tokens"]) n = std::max(n, a["id"].get<size_t>() + 1);
    d.tokens.assign(n, "");
    d.token_type.assign(n, 1);
    for (auto it = vocab.begin(); it != vocab.end(); ++it) d.tokens[it.value().get<size_t>()] = it.key();
    for (const json& a : t["added_tokens"]) {
      d.tokens[a["id"].get<size_t>()] = a["content"].get<std::string>();
      d.token_type[a["id"].get<size_t>()] = a["special"].get<bool>() ? 3 : 4;
    }
    for (const json& m : t["model"]["merges"])
      d.merges.push_back(m.is_string() ? m.get<std::string>() : m[0].get<std::string>() + " " + m[1].get<std::string>());
    EXPECT_EQ(joined_sha256(d.tokens), j["tokens_sha256"].get<std::string>()) << name << ": rebuilt tokens";
    EXPECT_EQ(joined_sha256(d.merges), j["merges_sha256"].get<std::string>()) << name << ": rebuilt merges";
    EXPECT_EQ(sha256_hex({reinterpret_cast<const char*>(d.token_type.data()), d.token_type.size() * 4}),
              j["token_type_sha256"].get<std::string>())
        << name << ": rebuilt token types";
  }

  const json& over = c["overrides"];
  if (over.contains("pre")) d.pre = over["pre"].get<std::string>();
  opt_bool(over, "add_bos_token", d.add_bos_token);
  opt_bool(over, "add_eos_token", d.add_eos_token);
  return d;
}

inline void expect_same_data(const GgufTokenizerData& got, const GgufTokenizerData& want) {
  EXPECT_EQ(got.architecture, want.architecture);
  EXPECT_EQ(got.model, want.model);
  EXPECT_EQ(got.pre, want.pre);
  EXPECT_EQ(got.tokens, want.tokens);
  EXPECT_EQ(got.scores, want.scores);
  EXPECT_EQ(got.token_type, want.token_type);
  EXPECT_EQ(got.merges, want.merges);
  EXPECT_EQ(got.bos_id, want.bos_id);
  EXPECT_EQ(got.eos_id, want.eos_id);
  EXPECT_EQ(got.unk_id, want.unk_id);
  EXPECT_EQ(got.pad_id, want.pad_id);
  EXPECT_EQ(got.sep_id, want.sep_id);
  EXPECT_EQ(got.add_bos_token, want.add_bos_token);
  EXPECT_EQ(got.add_eos_token, want.add_eos_token);
  EXPECT_EQ(got.add_space_prefix, want.add_space_prefix);
  EXPECT_EQ(got.chat_template, want.chat_template);
}

}  // namespace lowbit::test
