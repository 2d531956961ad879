// Perplexity under GPTQ's protocol against transformers on the trained testbed-44m checkpoint
// (tests/fixtures/ppl/testbed-44m.json, written by scripts/make_model_fixtures.py --ppl-model),
// and GPTQ's C4 window sampler against CPython.
#include "core/error.h"
#include "eval/datasets.h"
#include "eval/perplexity.h"
#include "formats/checkpoint.h"
#include "model/llama_model.h"
#include "model/testbed.h"
#include "test_util.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <zlib.h>

#include <cmath>

namespace lowbit {
namespace {

using json = nlohmann::json;

// The windows and the first windows' NLLs (the full runs are in PerplexityFull, label slow).
TEST(Perplexity, Testbed44mFirstWindowsMatchTransformers) {
  LOWBIT_REQUIRE_PATH(test::models_dir() + "/testbed-44m");
  LOWBIT_REQUIRE_PATH(test::data_dir() + "/wikitext2/wiki.test.raw");
  for (const char* name : {"wikitext2", "ptb", "ptb-new"}) {
    const json& ref = reference()[name];
    const TextSet set = resolve_eval_set(name, test::data_dir());
    auto windows = eval_windows(set, *testbed().tok, 2048, BosMode::Default);
    EXPECT_EQ(int64_t(windows.size()), ref["windows"].get<int64_t>()) << name;
    EXPECT_EQ(std::vector<int32_t>(windows[0].begin(), windows[0].begin() + 8),
              ref["first_ids"].get<std::vector<int32_t>>())
        << name;
    windows.resize(2);
    PerplexityResult r = perplexity(*testbed().model, windows);
    for (size_t i = 0; i < windows.size(); ++i) {
      // A window's mean NLL is a mean of 2047 fp32 log-softmax values; the two
      // implementations agree to ~1e-6 nats, 1e-4 leaves room for summation order.
      EXPECT_NEAR(r.window_nll[i], ref["window_nll"][i].get<double>(), 1e-4) << name << " window " << i;
    }
  }
}

// GPTQ's get_c4 draw, on documents of known token counts (a byte-level tokenizer without
// merges: one token per byte), against the (document, start) pairs CPython draws with the same
// code (scripts/print_python_random.py).
TEST(Perplexity, C4WindowSamplerMatchesCPython) {
  test::TempDir dir;
  std::filesystem::create_directories(dir.path / "c4");
  const std::string gz = dir / "c4/c4-validation.00000-of-00008.json.gz";
  std::vector<std::string> docs;
  gzFile f = gzopen(gz.c_str(), "wb");
  for (int i = 0; i < 50; ++i) {
    std::string d;
    const int len = 100 + (37 * i) % 400;
    for (int k = 0; k < len; ++k) d += char('a' + (i * 7 + k) % 26);
    docs.push_back(d);
    const std::string line = json({{"text", d}, {"url", "u"}}).dump() + "\n";
    gzwrite(f, line.data(), unsigned(line.size()));
  }
  gzclose(f);
  json vocab = json::object();
  // GPT-2 byte alphabet: printable ASCII maps to itself, which is all these documents use.
  for (int b = 0; b < 256; ++b) {
    uint32_t cp = (b >= '!' && b <= '~') || (b >= 0xa1 && b <= 0xac) || b >= 0xae ? uint32_t(b) : 0;
    if (!cp) {
      int n = 0;
      for (int c = 0; c < b; ++c)
        if (!((c >= '!' && c <= '~') || (c >= 0xa1 && c <= 0xac) || c >= 0xae)) ++n;
      cp = 256 + uint32_t(n);
    }
    std::string key;
    if (cp < 0x80) key += char(cp);
    else if (cp < 0x800) key += {char(0xc0 | (cp >> 6)), char(0x80 | (cp & 0x3f))};
    vocab[key] = b;
  }
  json tj = {{"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}},
             {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", json::array()}}}};
  auto tok = load_hf_tokenizer_json(tj.dump(), "bytes");
  // The test uses 8 windows of 256 by drawing with seqlen 256; eval_windows draws 256 windows,
  // of which the first 8 are compared.
  auto windows = eval_windows(resolve_eval_set("c4", dir.path.string()), *tok, 256, BosMode::Off);
  ASSERT_EQ(windows.size(), 256u);
  const std::pair<int, int> cpython[] = {{48, 13}, {16, 32}, {31, 103}, {19, 122}, {37, 3}, {32, 35}, {18, 17}, {48, 3}};
  for (size_t w = 0; w < 8; ++w) {
    const auto [doc, start] = cpython[w];
    std::vector<int32_t> want;
    for (int k = 0; k < 256; ++k) want.push_back(int32_t(static_cast<unsigned char>(docs[size_t(doc)][size_t(start + k)])));
    EXPECT_EQ(windows[w], want) << "window " << w;
  }
}

TEST(Perplexity, MissingDataIsAClearError) {
  test::TempDir dir;
  try {
    resolve_eval_set("c4", dir.path.string());
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("c4/c4-validation.00000-of-00008.json.gz"), std::string::npos) << e.what();
  }
  EXPECT_THROW(resolve_eval_set("wikitext2", dir.path.string()), Error);
  EXPECT_THROW(resolve_eval_set("no-such-set", dir.path.string()), Error);
  std::filesystem::create_directories(dir.path / "wikitext2");
  test::spit(dir / "wikitext2/wiki.test.raw", "not the canonical file\n");
  try {
    resolve_eval_set("wikitext2", dir.path.string());
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("not the canonical file's"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace lowbit
