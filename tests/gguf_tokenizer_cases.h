// The checks of one GGUF tokenizer fixture case against transformers' GGUF tokenizer
// (AutoTokenizer.from_pretrained(dir, gguf_file=...)), as value-parameterized tests over case
// names of tests/fixtures/gguf_tokenizer/manifest.json: the merges and added tokens it builds,
// special tokens, short texts with and without special tokens, the Unicode stress text and its
// decoding. A test file instantiates GgufTokenizerCase with the cases it runs.
#pragma once

#include "core/hash.h"
#include "core/mapped_file.h"
#include "formats/tokenizer_gguf.h"
#include "gguf_tokenizer_fixtures.h"
#include "test_util.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <tuple>

namespace lowbit::test {

class GgufTokenizerCase : public ::testing::TestWithParam<std::string> {
 protected:
  using json = nlohmann::json;

  void SetUp() override {
    if (gguf_case_needs_models(GetParam()))
      LOWBIT_REQUIRE_PATH(models_dir() + "/tokenizers/llama3/tokenizer.json");
    data_ = gguf_case_data(GetParam());
    tok_ = load_gguf_tokenizer(data_, GetParam());
  }
  const json& ref() const { return gguf_manifest()["cases"][GetParam()]; }
  GgufTokenizerData data_;
  std::unique_ptr<Tokenizer> tok_;
};

// The merges (derived from the scores for a SentencePiece vocabulary) and the added tokens are
// the ones transformers built.
TEST_P(GgufTokenizerCase, SamePipeline) {
  const json j = json::parse(gguf_tokenizer_json(data_, GetParam()).tokenizer_json);
  std::string lines;
  for (const json& m : j["model"]["merges"])
    lines += (m.is_string() ? m.get<std::string>() : m[0].get<std::string>() + " " + m[1].get<std::string>()) + "\n";
  EXPECT_EQ(j["model"]["merges"].size(), ref()["merges_count"].get<size_t>());
  EXPECT_EQ(sha256_hex(lines), ref()["merges_sha256"].get<std::string>());
  for (const char* k : {"fuse_unk", "byte_fallback", "ignore_merges", "unk_token"})
    EXPECT_EQ(j["model"][k], ref()["model"][k]) << k;
  std::vector<std::tuple<int64_t, std::string, bool>> got, want;
  for (const json& a : j["added_tokens"]) got.emplace_back(a["id"], a["content"], a["special"]);
  for (const json& a : ref()["added_tokens"]) want.emplace_back(a["id"], a["content"], a["special"]);
  std::sort(got.begin(), got.end());
  std::sort(want.begin(), want.end());
  EXPECT_EQ(got, want);
  EXPECT_EQ(tok_->vocab_size(), ref()["vocab_size"].get<int32_t>());
}

TEST_P(GgufTokenizerCase, SpecialTokens) {
  EXPECT_EQ(tok_->bos_id(), ref()["bos_token_id"].is_null() ? std::nullopt
                                                             : std::optional<int32_t>(ref()["bos_token_id"].get<int32_t>()));
  EXPECT_EQ(tok_->eos_id(), ref()["eos_token_id"].is_null() ? std::nullopt
                                                             : std::optional<int32_t>(ref()["eos_token_id"].get<int32_t>()));
  EXPECT_EQ(tok_->adds_bos_by_default(), ref()["add_bos_token"].get<bool>());
  std::vector<std::pair<int32_t, std::string>> got, want;
  for (const auto& s : tok_->special_tokens()) got.emplace_back(s.id, s.text);
  for (const json& a : ref()["added_tokens"])
    if (a["special"].get<bool>()) want.emplace_back(a["id"].get<int32_t>(), a["content"].get<std::string>());
  std::sort(got.begin(), got.end());
  std::sort(want.begin(), want.end());
  EXPECT_EQ(got, want);
  // Each special token encodes to its own id, whole, and decodes to its text.
  for (const auto& [id, text] : want) {
    EXPECT_EQ(tok_->encode(text, BosMode::Off), std::vector<int32_t>{id}) << text;
    EXPECT_EQ(tok_->decode(std::vector<int32_t>{id}), text);
  }
  // BosMode::On puts exactly one BOS first.
  if (tok_->bos_id()) {
    auto ids = tok_->encode("Hello world", BosMode::On);
    auto plain = tok_->encode("Hello world", BosMode::Off);
    ASSERT_EQ(ids.size(), plain.size() + 1);
    EXPECT_EQ(ids[0], *tok_->bos_id());
  }
}

TEST_P(GgufTokenizerCase, ShortTexts) {
  for (const json& c : ref()["short_cases"]) {
    const std::string text = c["text"].get<std::string>();
    const auto def = tok_->encode(text);
    EXPECT_EQ(def, c["default"].get<std::vector<int32_t>>()) << "'" << text << "' with special tokens";
    EXPECT_EQ(tok_->encode(text, BosMode::Off), c["plain"].get<std::vector<int32_t>>()) << "'" << text << "'";
    EXPECT_EQ(tok_->decode(def), c["decode_default"].get<std::string>()) << "'" << text << "'";
  }
}

TEST_P(GgufTokenizerCase, StressText) {
  const std::string text = read_file(fixtures_dir() + "/tokenizer/stress.txt");
  const json& e = ref()["texts"]["stress"];
  const auto want = read_ids_zst(gguf_fixtures_dir() + "/" + e["ids"].get<std::string>());
  ASSERT_EQ(int64_t(want.size()), e["count"].get<int64_t>());
  const auto ids = tok_->encode(text, BosMode::Off);
  EXPECT_EQ(ids, want);
  EXPECT_EQ(tok_->decode(ids) == text, e["decode_roundtrip"].get<bool>());
}

// The small GGUF files: read_gguf_tokenizer_data() gives what the gguf package read, and
// load_tokenizer() on the file gives the tokenizer built from that data.

inline std::string gguf_case_test_name(const ::testing::TestParamInfo<std::string>& info) {
  std::string n = info.param;
  std::replace(n.begin(), n.end(), '-', '_');
  return n;
}

}  // namespace lowbit::test
