// The tokenizer built from GGUF metadata against transformers' GGUF tokenizer
// (AutoTokenizer.from_pretrained(dir, gguf_file=...)), on the fixtures of
// scripts/make_gguf_tokenizer_fixtures.py that need nothing else (SmolLM2's and LLaMA-2's data,
// the small GGUF files; the LLaMA-3 cases, rebuilt from the shared tokenizer.json, run with the
// model tests); and bad metadata.
#include "formats/tokenizer_gguf.h"

#include "core/error.h"
#include "core/hash.h"
#include "formats/gguf.h"
#include "gguf_tokenizer_cases.h"
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

using test::GgufTokenizerCase;

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
                         test::gguf_case_test_name);
INSTANTIATE_TEST_SUITE_P(Fixtures, GgufTokenizerCase,
                         ::testing::Values("smollm2", "llama2", "smollm2-tiny", "llama2-tiny", "llama2-renamed"),
                         test::gguf_case_test_name);

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
