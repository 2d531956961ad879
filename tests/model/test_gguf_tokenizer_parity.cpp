// Token ids of the tokenizer built from GGUF metadata identical to transformers' GGUF tokenizer
// on WikiText2 test and PTB test as lowbit assembles them (fixtures written by
// scripts/make_gguf_tokenizer_fixtures.py), and decode(encode(x)) == x as transformers has it.
// The per-case checks of gguf_tokenizer_cases.h for the LLaMA-3 cases, whose vocabulary is
// rebuilt from the shared tokenizer.json. With SmolLM2's GGUF fetched (scripts/fetch-smollm2.sh), its tokenizer is also read from the
// file itself, through load_tokenizer().
#include "core/hash.h"
#include "core/mapped_file.h"
#include "formats/gguf.h"
#include "formats/text_datasets.h"
#include "formats/tokenizer_gguf.h"
#include "gguf_tokenizer_cases.h"
#include "gguf_tokenizer_fixtures.h"
#include "test_util.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <map>

namespace lowbit {
namespace {

using json = nlohmann::json;

const std::map<std::string, std::string>& texts() {
  static std::map<std::string, std::string> t = [] {
    std::map<std::string, std::string> t;
    const std::string d = test::data_dir();
    t["wikitext2"] = join(wikitext_rows(read_file(d + "/wikitext2/wiki.test.raw")), "\n\n");
    t["ptb"] = join(ptb_rows(read_file(d + "/ptb/ptb.test.txt")), "\n\n");
    return t;
  }();
  return t;
}

class GgufTokenizerParity : public ::testing::TestWithParam<std::string> {};

TEST_P(GgufTokenizerParity, WholeTexts) {
  LOWBIT_REQUIRE_PATH(test::data_dir() + "/wikitext2/wiki.test.raw");
  if (test::gguf_case_needs_models(GetParam()))
    LOWBIT_REQUIRE_PATH(test::models_dir() + "/tokenizers/llama3/tokenizer.json");
  auto tok = load_gguf_tokenizer(test::gguf_case_data(GetParam()), GetParam());
  const json& c = test::gguf_manifest()["cases"][GetParam()];
  for (const auto& [name, text] : texts()) {
    const json& e = c["texts"][name];
    const auto ids = tok->encode(text, BosMode::Off);
    EXPECT_EQ(int64_t(ids.size()), e["count"].get<int64_t>()) << GetParam() << " " << name;
    EXPECT_EQ(sha256_hex({reinterpret_cast<const char*>(ids.data()), ids.size() * 4}), e["sha256"].get<std::string>())
        << GetParam() << " " << name;
    EXPECT_EQ(tok->decode(ids) == text, e["decode_roundtrip"].get<bool>()) << GetParam() << " " << name;
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, GgufTokenizerParity,
                         ::testing::Values("smollm2", "llama2", "llama3", "llama3-default", "smollm2-tiny", "llama2-tiny",
                                           "llama2-renamed"),
                         test::gguf_case_test_name);

using test::GgufTokenizerCase;
INSTANTIATE_TEST_SUITE_P(Fixtures, GgufTokenizerCase, ::testing::Values("llama3", "llama3-default"),
                         test::gguf_case_test_name);

// read_gguf_tokenizer_data() gives what the gguf package's reader read from the same file, and
// load_tokenizer() on the .gguf encodes as transformers does.
TEST(GgufTokenizerFile, SmolLM2) {
  const std::string path = test::smollm2_gguf_path();
  LOWBIT_REQUIRE_PATH(path);
  LOWBIT_REQUIRE_PATH(test::data_dir() + "/wikitext2/wiki.test.raw");
  const GgufTokenizerData got = read_gguf_tokenizer_data(*GgufFile::open(path));
  const GgufTokenizerData want = test::gguf_case_data("smollm2");
  test::expect_same_data(got, want);

  auto tok = load_tokenizer(path);
  EXPECT_EQ(tok->kind(), "gguf-bpe-bytelevel (smollm)");
  const json& e = test::gguf_manifest()["cases"]["smollm2"]["texts"]["wikitext2"];
  const auto ids = tok->encode(texts().at("wikitext2"), BosMode::Off);
  EXPECT_EQ(sha256_hex({reinterpret_cast<const char*>(ids.data()), ids.size() * 4}), e["sha256"].get<std::string>());
  EXPECT_EQ(tok->encode("Hello world"), tok->encode("Hello world", BosMode::Off));  // add_bos_token false
}

}  // namespace
}  // namespace lowbit
