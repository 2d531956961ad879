#include "formats/tokenizer.h"

#include "core/error.h"
#include "core/mapped_file.h"
#include "formats/text_datasets.h"
#include "test_util.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <sentencepiece_processor.h>

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

// A minimal Metaspace BPE tokenizer.json: vocabulary a, b, c, ab, abc, ▁, ▁a and byte fallback
// for the newline byte.
json tiny() {
  return json::parse(R"({
    "added_tokens": [{"id": 9, "content": "<s>", "special": true}],
    "pre_tokenizer": {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first", "split": false},
    "model": {"type": "BPE", "byte_fallback": true,
              "vocab": {"a": 0, "b": 1, "c": 2, "ab": 3, "abc": 4, "\u2581": 5, "\u2581a": 6, "<0x0A>": 7, "bc": 8,
                        "<s>": 9},
              "merges": [["a", "b"], ["ab", "c"], ["\u2581", "a"], ["b", "c"]]},
    "decoder": {"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
        {"type": "ByteFallback"}, {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
    "post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
        {"Sequence": {"id": "A", "type_id": 0}}], "special_tokens": {"<s>": {"id": "<s>", "ids": [9], "tokens": ["<s>"]}}}
  })");
}

TEST(HfTokenizer, MergeOrderByRank) {
  auto t = load_hf_tokenizer_json(tiny().dump(), "tiny");
  // "▁abc": merges by rank: (a,b) rank 0 first, then (ab,c) rank 1; (▁,a) never applies since
  // 'a' is consumed first.
  EXPECT_EQ(t->encode("abc", BosMode::Off), (std::vector<int32_t>{5, 4}));
  EXPECT_EQ(t->encode("abc"), (std::vector<int32_t>{9, 5, 4}));
  EXPECT_EQ(t->encode("abc", BosMode::On), (std::vector<int32_t>{9, 5, 4}));
  EXPECT_EQ(t->encode("a\nbc", BosMode::Off), (std::vector<int32_t>{6, 7, 8}));  // newline by byte fallback
  EXPECT_EQ(t->decode(t->encode("a\nbc", BosMode::Off)), "a\nbc");
  // After an added token the text does not start at offset 0: no U+2581 is prepended, and
  // "abc" merges (a,b) then (ab,c).
  EXPECT_EQ(t->encode("<s>abc", BosMode::Off), (std::vector<int32_t>{9, 4}));
  EXPECT_TRUE(t->adds_bos_by_default());
  EXPECT_EQ(t->bos_id(), 9);
  expect_error([&] { t->decode(std::vector<int32_t>{42}); }, "cannot decode token id 42");
  expect_error([&] { t->encode("\xff"); }, "not valid UTF-8");
}

TEST(HfTokenizerCorrupt, Errors) {
  expect_error([] { load_hf_tokenizer_json("{\"model\": ", "t.json"); }, "not valid JSON");
  {
    json j = tiny();
    j["model"].erase("merges");
    expect_error([&] { load_hf_tokenizer_json(j.dump(), "t.json"); }, "no 'merges' array");
  }
  {
    json j = tiny();
    j["model"]["merges"].push_back(json::array({"x", "y"}));
    expect_error([&] { load_hf_tokenizer_json(j.dump(), "t.json"); }, "not in the vocabulary");
  }
  {
    json j = tiny();
    j["model"]["merges"].push_back(json::array({"c", "a"}));
    expect_error([&] { load_hf_tokenizer_json(j.dump(), "t.json"); }, "makes 'ca'");
  }
  {
    json j = tiny();
    j["model"]["merges"].push_back("a b c");
    expect_error([&] { load_hf_tokenizer_json(j.dump(), "t.json"); }, "not two tokens");
  }
  {
    json j = tiny();
    j["model"]["type"] = "WordPiece";
    expect_error([&] { load_hf_tokenizer_json(j.dump(), "t.json"); }, "model type 'WordPiece'");
  }
  {
    json j = tiny();
    j["normalizer"] = {{"type", "NFKC"}};
    expect_error([&] { load_hf_tokenizer_json(j.dump(), "t.json"); }, "normalizer 'NFKC'");
  }
  {
    json j = tiny();
    j["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"Regex", "(unclosed"}}}, {"behavior", "Isolated"}};
    expect_error([&] { load_hf_tokenizer_json(j.dump(), "t.json"); }, "cannot compile regex");
  }
  {
    json j = tiny();
    j["model"]["vocab"]["a"] = "zero";
    expect_error([&] { load_hf_tokenizer_json(j.dump(), "t.json"); }, "non-integer id");
  }
  {
    json j = tiny();
    j["post_processor"]["single"][0]["SpecialToken"]["id"] = "<x>";
    expect_error([&] { load_hf_tokenizer_json(j.dump(), "t.json"); }, "does not define");
  }
  // A Strip decoder's counts: a float too large for an int (found by fuzz_tokenizer_json), a
  // negative one.
  for (const json& bad : {json(8.8e82), json(-1), json(2.5)}) {
    json j = tiny();
    j["decoder"]["decoders"][3]["stop"] = bad;
    expect_error([&] { load_hf_tokenizer_json(j.dump(), "t.json"); }, "Strip decoder's 'stop' is");
  }
  expect_error([] { load_hf_tokenizer_json("[1,2]", "t.json"); }, "not a JSON object");
}

TEST(Tokenizer, LoadErrors) {
  test::TempDir dir;
  expect_error([&] { load_tokenizer(dir.path.string()); }, "no tokenizer found");
  test::spit(dir / "tokenizer.model", "not a protobuf at all");
  expect_error([&] { load_tokenizer(dir / "tokenizer.model"); }, "not a SentencePiece model");
  test::spit(dir / "tok.bin", std::string("\x10\x00\x00\x00" "\x00\x00\x80\x3f" "\x05\x00\x00\x00" "ab", 14));
  expect_error([&] { load_llama2c_tokenizer(dir / "tok.bin"); }, "runs past the end");
  test::spit(dir / "tok2.bin", std::string("\x10\x00\x00\x00" "\x00\x00\x80\x3f" "\xff\x00\x00\x00", 12));
  expect_error([&] { load_llama2c_tokenizer(dir / "tok2.bin"); }, "has length 255");
  test::spit(dir / "tok3.bin", std::string("\x10\x00\x00\x00\x00\x00", 6));
  expect_error([&] { load_llama2c_tokenizer(dir / "tok3.bin"); }, "truncated");
}

TEST(Tokenizer, Llama3BosVariants) {
  const std::string d = test::models_dir() + "/tokenizers/llama3";
  LOWBIT_REQUIRE_PATH(d);
  auto plain = load_tokenizer(d);
  auto bos = load_tokenizer(d + "/bos-template");
  EXPECT_FALSE(plain->adds_bos_by_default());
  EXPECT_TRUE(bos->adds_bos_by_default());
  const auto off = plain->encode("Hello world", BosMode::Off);
  EXPECT_EQ(plain->encode("Hello world"), off);
  auto with = off;
  with.insert(with.begin(), 128000);
  EXPECT_EQ(plain->encode("Hello world", BosMode::On), with);
  EXPECT_EQ(bos->encode("Hello world"), with);
  EXPECT_EQ(bos->encode("Hello world", BosMode::Off), off);
  EXPECT_EQ(plain->vocab_size(), 128256);
  EXPECT_EQ(plain->special_tokens().size(), 256u);
}

// llama2.c's tokenizer.bin is an export of LLaMA-2's tokenizer.model; on single-spaced text
// run.c's encoder and the sentencepiece library agree.
TEST(Tokenizer, Llama2cAgreesWithSentencePieceOnPlainText) {
  const std::string d = test::models_dir() + "/tokenizers/llama2";
  LOWBIT_REQUIRE_PATH(d + "/tokenizer.bin");
  LOWBIT_REQUIRE_PATH(test::data_dir() + "/ptb/ptb.test.txt");
  auto l2c = load_llama2c_tokenizer(d + "/tokenizer.bin");
  sentencepiece::SentencePieceProcessor sp;
  ASSERT_TRUE(sp.Load(d + "/tokenizer.model").ok());
  EXPECT_EQ(l2c->vocab_size(), sp.GetPieceSize());
  auto rows = ptb_rows(read_file(test::data_dir() + "/ptb/ptb.test.txt"));
  rows.resize(400);
  rows.push_back("Once upon a time, there was a little girl named Lily.");
  rows.push_back("Caf\xc3\xa9 na\xc3\xafve \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x98\x80 x");
  for (const auto& r : rows) {
    if (r.empty()) continue;
    std::vector<int> want;
    ASSERT_TRUE(sp.Encode(r, &want).ok());
    EXPECT_EQ(l2c->encode(r, BosMode::Off), std::vector<int32_t>(want.begin(), want.end())) << r;
    EXPECT_EQ(l2c->decode(l2c->encode(r)), r);
  }
  EXPECT_EQ(l2c->encode("hi")[0], 1);  // BOS by default
}

TEST(Tokenizer, Stories260kTokenizer) {
  const std::string p = test::models_dir() + "/stories260K/tok512.bin";
  LOWBIT_REQUIRE_PATH(p);
  auto t = load_tokenizer(p);
  EXPECT_EQ(t->vocab_size(), 512);
  const std::string s = "Once upon a time, there was a little girl named Lily.";
  EXPECT_EQ(t->decode(t->encode(s)), s);
}

// run.c's encode() written out as run.c does it (rescan the whole sequence for the best merge
// after every merge), against lowbit's heap-ordered encoder, on text with whitespace runs,
// newlines and characters outside the 512-token vocabulary.
TEST(Tokenizer, Llama2cEncoderMatchesRunCMergeLoop) {
  const std::string p = test::models_dir() + "/stories260K/tok512.bin";
  LOWBIT_REQUIRE_PATH(p);
  LOWBIT_REQUIRE_PATH(test::data_dir() + "/ptb/ptb.valid.txt");
  // The vocabulary, read independently of the loader.
  const std::string bytes = test::slurp(p);
  std::vector<std::string> pieces;
  std::vector<float> scores;
  for (size_t pos = 4; pos < bytes.size();) {
    float sc;
    int32_t len;
    std::memcpy(&sc, bytes.data() + pos, 4);
    std::memcpy(&len, bytes.data() + pos + 4, 4);
    pieces.emplace_back(bytes.substr(pos + 8, size_t(len)));
    scores.push_back(sc);
    pos += 8 + size_t(len);
  }
  auto lookup = [&](const std::string& x) -> int {
    for (size_t i = 0; i < pieces.size(); ++i)
      if (pieces[i] == x) return int(i);
    return -1;
  };
  auto run_c = [&](const std::string& text) {
    std::vector<int> t = {lookup(" ")};
    for (size_t i = 0; i < text.size();) {
      const unsigned char c0 = static_cast<unsigned char>(text[i]);
      const size_t len = c0 < 0x80 ? 1 : c0 < 0xe0 ? 2 : c0 < 0xf0 ? 3 : 4;
      const std::string ch = text.substr(i, len);
      i += len;
      if (int id = lookup(ch); id >= 0) t.push_back(id);
      else
        for (unsigned char b : ch) t.push_back(int(b) + 3);
    }
    while (true) {
      float best = -1e10f;
      int best_id = -1, best_i = -1;
      for (size_t i = 0; i + 1 < t.size(); ++i) {
        const int id = lookup(pieces[size_t(t[i])] + pieces[size_t(t[i + 1])]);
        if (id != -1 && scores[size_t(id)] > best) {
          best = scores[size_t(id)];
          best_id = id;
          best_i = int(i);
        }
      }
      if (best_i == -1) break;
      t[size_t(best_i)] = best_id;
      t.erase(t.begin() + best_i + 1);
    }
    return std::vector<int32_t>(t.begin(), t.end());
  };
  auto tok = load_tokenizer(p);
  const std::string ptb = read_file(test::data_dir() + "/ptb/ptb.valid.txt").substr(0, 3000);
  for (const std::string& text : {ptb, std::string("a  b   c\n\n  d\te"), std::string("Caf\xc3\xa9 \xe6\x97\xa5 !!")})
    EXPECT_EQ(tok->encode(text, BosMode::Off), run_c(text)) << text.substr(0, 80);
}

}  // namespace
}  // namespace lowbit
