// Alpaca instruction data: tokenization against qlora.py's DataCollatorForCausalLM run with
// transformers' LLaMA-3 tokenizer (tests/fixtures/train/alpaca_llama3.safetensors, written by
// scripts/make_train_fixtures.py), batches, splits, and malformed files.
#include "core/error.h"
#include "formats/safetensors.h"
#include "test_util.h"
#include "train/instruct_data.h"

#include <gtest/gtest.h>

#include <set>

namespace lowbit {
namespace {

std::vector<int32_t> ints(const SafetensorsFile& f, const std::string& name) {
  const Tensor t = f.tensor(name);
  return std::vector<int32_t>(t.data_as<int32_t>(), t.data_as<int32_t>() + t.numel());
}

TEST(InstructData, TokenizesAsQloraDoes) {
  const std::string tok_dir = test::models_dir() + "/tokenizers/llama3";
  const std::string data = test::data_dir() + "/alpaca/alpaca_5000.json";
  LOWBIT_REQUIRE_PATH(tok_dir);
  LOWBIT_REQUIRE_PATH(data);
  auto tok = load_tokenizer(tok_dir);
  const auto records = train::read_alpaca_json(data);
  ASSERT_EQ(records.size(), 5000u);
  auto ref = SafetensorsFile::open(test::fixtures_dir() + "/train/alpaca_llama3.safetensors");
  for (auto [smax, tmax] : std::vector<std::pair<int64_t, int64_t>>{{384, 128}, {48, 16}}) {
    const std::string k = "l" + std::to_string(smax) + ".";
    const auto ids = ints(*ref, k + "ids"), slen = ints(*ref, k + "source_len"), len = ints(*ref, k + "len");
    size_t off = 0;
    int truncated = 0;
    std::vector<train::InstructExample> exs;
    for (size_t i = 0; i < len.size(); ++i) {
      const auto ex = tokenize_example(*tok, records[i], {smax, tmax});
      const std::vector<int32_t> want(ids.begin() + long(off), ids.begin() + long(off) + len[i]);
      EXPECT_EQ(ex.tokens, want) << "record " << i << " at limits " << smax << "/" << tmax;
      EXPECT_EQ(ex.source_len, slen[i]) << "record " << i;
      truncated += ex.source_truncated || ex.target_truncated;
      off += size_t(len[i]);
      exs.push_back(ex);
    }
    if (smax == 48) EXPECT_GT(truncated, 10);  // the tight limits do truncate
    // A batch of the first four: right-padded, a target wherever the next token is the output's.
    std::vector<const train::InstructExample*> ptrs{&exs[0], &exs[1], &exs[2], &exs[3]};
    const train::Batch b = train::make_batch(ptrs, 0);
    int64_t want_targets = 0;
    for (const auto* e : ptrs) want_targets += int64_t(e->tokens.size()) - e->source_len;
    EXPECT_EQ(b.num_targets(), want_targets);
    for (int64_t i = 0; i < b.B; ++i)
      for (int64_t t = 0; t < b.T; ++t) {
        const int32_t tg = b.targets[size_t(i * b.T + t)];
        const auto& e = *ptrs[size_t(i)];
        if (t + 1 >= e.source_len && t + 1 < int64_t(e.tokens.size()))
          EXPECT_EQ(tg, e.tokens[size_t(t + 1)]);
        else
          EXPECT_EQ(tg, -100);
      }
  }
}

TEST(InstructData, MalformedFilesNameFileAndRecord) {
  test::TempDir tmp;
  auto expect_error = [&](const std::string& body, const std::string& needle) {
    const std::string p = tmp / "bad.json";
    test::spit(p, body);
    try {
      train::read_alpaca_json(p);
      ADD_FAILURE() << "no error for " << body;
    } catch (const Error& e) {
      const std::string m = e.what();
      EXPECT_NE(m.find(p), std::string::npos) << m;
      EXPECT_NE(m.find(needle), std::string::npos) << m;
    }
  };
  expect_error(R"([{"instruction": "a", "output": "b"}, {"instruction": "c"}])", "record 1 has no \"output\"");
  expect_error(R"([{"instruction": "a", "input": 3, "output": "b"}])", "record 0's \"input\" is a number");
  expect_error(R"([{"instruction": "a", "output": "b"}, 7])", "record 1 is a number");
  expect_error(R"({"instruction": "a"})", "expected a JSON array");
  expect_error(R"([{"instruction": "a", "output": )", "not valid JSON");
  expect_error("[]", "holds no records");
  EXPECT_THROW(train::read_alpaca_json(tmp / "missing.json"), Error);
  // A missing or null input is an empty one: the no-input template.
  test::spit(tmp / "ok.json", R"([{"instruction": "Say hi.", "output": "Hi."}, {"instruction": "x", "input": null, "output": "y"}])");
  const auto r = train::read_alpaca_json(tmp / "ok.json");
  ASSERT_EQ(r.size(), 2u);
  EXPECT_EQ(train::alpaca_prompt(r[0]),
            "Below is an instruction that describes a task. Write a response that appropriately completes the "
            "request.\n\n### Instruction:\nSay hi.\n\n### Response: ");
}

TEST(InstructData, SplitAndEpochOrderAreSeededPartitions) {
  const auto s = train::split_indices(100, 10, 42);
  EXPECT_EQ(s.held_out.size(), 10u);
  EXPECT_EQ(s.train.size(), 90u);
  std::set<int64_t> all(s.train.begin(), s.train.end());
  all.insert(s.held_out.begin(), s.held_out.end());
  EXPECT_EQ(all.size(), 100u);
  EXPECT_EQ(train::split_indices(100, 10, 42).held_out, s.held_out);
  EXPECT_NE(train::split_indices(100, 10, 43).held_out, s.held_out);
  const auto o0 = train::epoch_order(s.train, 7, 0), o1 = train::epoch_order(s.train, 7, 1);
  EXPECT_EQ(train::epoch_order(s.train, 7, 0), o0);
  EXPECT_NE(o0, o1);
  EXPECT_EQ(std::set<int64_t>(o0.begin(), o0.end()), std::set<int64_t>(s.train.begin(), s.train.end()));
  EXPECT_THROW(train::split_indices(10, 10, 0), Error);
}

}  // namespace
}  // namespace lowbit
