// The tokenizer built from GGUF metadata against transformers' GGUF tokenizer
// (AutoTokenizer.from_pretrained(dir, gguf_file=...)), on the fixtures of
// scripts/make_gguf_tokenizer_fixtures.py: the merges and added tokens it builds, short texts
// with and without special tokens, the Unicode stress text, decoding; and bad metadata.
#include "formats/tokenizer_gguf.h"

#include "core/error.h"
#include "core/hash.h"
#include "formats/gguf.h"
#include "gguf_tokenizer_fixtures.h"
#include "test_util.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <functional>

namespace lowbit {
namespace {

using json = nlohmann::json;

void expect_error(const std::function<void()>& f, const std::string& needle) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one mentioning '" << needle << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << "message: " << e.what();
  }
}

class GgufTokenizerCase : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (test::gguf_case_needs_models(GetParam()))
      LOWBIT_REQUIRE_PATH(test::models_dir() + "/tokenizers/llama3/tokenizer.json");
    data_ = test::gguf_case_data(GetParam());
    tok_ = load_gguf_tokenizer(data_, GetParam());
  }
  const json& ref() const { return test::gguf_manifest()["cases"][GetParam()]; }
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
  const std::string text = read_file(test::fixtures_dir() + "/tokenizer/stress.txt");
  const json& e = ref()["texts"]["stress"];
  const auto want = test::read_ids_zst(test::gguf_fixtures_dir() + "/" + e["ids"].get<std::string>());
  ASSERT_EQ(int64_t(want.size()), e["count"].get<int64_t>());
  const auto ids = tok_->encode(text, BosMode::Off);
  EXPECT_EQ(ids, want);
  EXPECT_EQ(tok_->decode(ids) == text, e["decode_roundtrip"].get<bool>());
}

// The small GGUF files: read_gguf_tokenizer_data() gives what the gguf package read, and
// load_tokenizer() on the file gives the tokenizer built from that data.
class GgufTokenizerFile : public GgufTokenizerCase {};

TEST_P(GgufTokenizerFile, ReadFromFile) {
  ASSERT_FALSE(ref()["gguf"].is_null()) << "no GGUF file committed for " << GetParam();
  const std::string path = test::gguf_fixtures_dir() + "/" + ref()["gguf"].get<std::string>();
  test::expect_same_data(read_gguf_tokenizer_data(*GgufFile::open(path)), data_);
  auto t = load_tokenizer(path);
  EXPECT_EQ(t->kind(), tok_->kind());
  const std::string text = read_file(test::fixtures_dir() + "/tokenizer/stress.txt");
  EXPECT_EQ(t->encode(text), tok_->encode(text));
}

INSTANTIATE_TEST_SUITE_P(Fixtures, GgufTokenizerFile, ::testing::Values("smollm2-tiny", "llama2-tiny"),
                         [](const auto& info) {
                           std::string n = info.param;
                           std::replace(n.begin(), n.end(), '-', '_');
                           return n;
                         });

INSTANTIATE_TEST_SUITE_P(Fixtures, GgufTokenizerCase,
                         ::testing::Values("smollm2", "llama2", "llama3", "llama3-default", "smollm2-tiny",
                                           "llama2-tiny"),
                         [](const auto& info) {
                           std::string n = info.param;
                           std::replace(n.begin(), n.end(), '-', '_');
                           return n;
                         });

// A small byte-level vocabulary: the 256 byte tokens, "ab", a control token and a user-defined
// one.
GgufTokenizerData tiny_gpt2() {
  GgufTokenizerData d;
  d.architecture = "llama";
  d.model = "gpt2";
  d.pre = "default";
  uint32_t next = 256;
  for (int b = 0; b < 256; ++b) {
    // GPT-2's byte spelling, as GGUF files hold it
    const bool direct = (b >= '!' && b <= '~') || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
    const uint32_t cp = direct ? uint32_t(b) : next++;
    std::string s;
    if (cp < 0x80) s += char(cp);
    else if (cp < 0x800) s += {char(0xc0 | (cp >> 6)), char(0x80 | (cp & 0x3f))};
    d.tokens.push_back(s);
  }
  d.tokens.push_back("ab");
  d.tokens.push_back("<|end|>");
  d.tokens.push_back("<think>");
  d.token_type.assign(d.tokens.size(), 1);
  d.token_type[257] = 3;
  d.token_type[258] = 4;
  d.merges = {"a b"};
  d.eos_id = 257;
  return d;
}

TEST(GgufTokenizer, TinyByteLevel) {
  auto t = load_gguf_tokenizer(tiny_gpt2(), "tiny.gguf");
  EXPECT_EQ(t->encode("abc", BosMode::Off), (std::vector<int32_t>{256, 'c'}));
  EXPECT_EQ(t->encode("ab<|end|>x<think>"), (std::vector<int32_t>{256, 257, 'x', 258}));
  EXPECT_FALSE(t->adds_bos_by_default());
  EXPECT_EQ(t->eos_id(), 257);
  EXPECT_EQ(t->decode(std::vector<int32_t>{256, ' ', 257}), "ab <|end|>");
}

TEST(GgufTokenizer, BadMetadata) {
  {
    auto d = tiny_gpt2();
    d.model = "bert";
    expect_error([&] { load_gguf_tokenizer(d, "m.gguf"); }, "tokenizer.ggml.model 'bert' is not supported (supported: gpt2, llama)");
  }
  {
    auto d = tiny_gpt2();
    d.pre = "qwen2";
    expect_error([&] { load_gguf_tokenizer(d, "m.gguf"); }, "tokenizer.ggml.pre 'qwen2' is not supported for model gpt2");
    expect_error([&] { load_gguf_tokenizer(d, "m.gguf"); }, "llama-bpe");
  }
  {
    auto d = tiny_gpt2();
    d.token_type.pop_back();
    expect_error([&] { load_gguf_tokenizer(d, "m.gguf"); }, "token_type has 258 entries but tokenizer.ggml.tokens has 259");
  }
  {
    auto d = tiny_gpt2();
    d.eos_id = 1000;
    expect_error([&] { load_gguf_tokenizer(d, "m.gguf"); }, "eos_token_id is 1000, outside the vocabulary (size 259)");
  }
  {
    auto d = tiny_gpt2();
    d.merges = {"a c"};
    expect_error([&] { load_gguf_tokenizer(d, "m.gguf"); }, "makes 'ac'");
  }
  {
    auto d = tiny_gpt2();
    d.merges.clear();
    expect_error([&] { load_gguf_tokenizer(d, "m.gguf"); }, "tokenizer.ggml.merges is missing");
  }
  {
    auto d = tiny_gpt2();
    d.tokens[5] = "\xff";
    expect_error([&] { load_gguf_tokenizer(d, "m.gguf"); }, "tokenizer.ggml.tokens[5] is not valid UTF-8");
  }
  {
    auto d = tiny_gpt2();
    d.tokens.clear();
    expect_error([&] { load_gguf_tokenizer(d, "m.gguf"); }, "tokenizer.ggml.tokens is empty or missing");
  }
  {
    auto d = tiny_gpt2();
    d.model = "llama";
    d.pre = "llama-bpe";
    expect_error([&] { load_gguf_tokenizer(d, "m.gguf"); }, "tokenizer.ggml.pre 'llama-bpe' is not supported for model llama");
  }
  {
    auto d = tiny_gpt2();
    d.model = "llama";
    d.merges.clear();
    expect_error([&] { load_gguf_tokenizer(d, "m.gguf"); }, "tokenizer.ggml.scores is missing");
  }
  {
    auto d = tiny_gpt2();
    d.model = "llama";
    d.architecture = "gemma2";
    expect_error([&] { load_gguf_tokenizer(d, "m.gguf"); }, "architecture 'gemma2' is not supported");
  }
}

TEST(GgufTokenizer, FileWithoutTokenizer) {
  const std::string path = test::fixtures_dir() + "/gguf/reader.gguf";  // metadata and tensors only
  expect_error([&] { load_tokenizer(path); }, "no tokenizer.ggml.model: the file holds no tokenizer");
  expect_error([&] { load_tokenizer(path); }, "reader.gguf");
}

}  // namespace
}  // namespace lowbit
