// LLaVA-NeXT's LLaMA-3 prompt and its tokenization with image tokens, against Meta-Llama-3's chat
// template rendered by transformers and the LLaMA-3 tokenizer (scripts/make_llava_prompt_fixture.py).
#include "core/error.h"
#include "formats/tokenizer.h"
#include "model/llava_prompt.h"
#include "test_util.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

using namespace lowbit;
using lowbit::test::fixtures_dir;

namespace {

nlohmann::json cases() {
  return nlohmann::json::parse(lowbit::test::slurp(fixtures_dir() + "/llava_next/prompts.json"));
}

}  // namespace

TEST(LlavaPrompt, MatchesTheChatTemplate) {
  const auto j = cases();
  EXPECT_EQ(j["system"].get<std::string>(), kLlavaLlama3System);
  for (const auto& c : j["cases"]) {
    SCOPED_TRACE(c["question"].get<std::string>());
    EXPECT_EQ(llava_llama3_prompt(c["question"].get<std::string>(), c["n_images"].get<int64_t>()),
              c["prompt"].get<std::string>());
  }
}

TEST(LlavaPrompt, TokenizesWithImageTokens) {
  const std::string dir = lowbit::test::models_dir() + "/tokenizers/llama3";
  LOWBIT_REQUIRE_PATH(dir + "/tokenizer.json");
  const auto tok = load_tokenizer(dir);
  const auto j = cases();
  const int32_t image_id = j["image_token_id"].get<int32_t>();
  for (const auto& c : j["cases"]) {
    SCOPED_TRACE(c["question"].get<std::string>());
    const auto counts = c["counts"].get<std::vector<int64_t>>();
    EXPECT_EQ(tokenize_with_images(*tok, c["prompt"].get<std::string>(), counts, image_id),
              c["ids"].get<std::vector<int32_t>>());
  }
  const std::string two = llava_llama3_prompt("q", 2);
  const std::vector<int64_t> one{5};
  EXPECT_THROW(tokenize_with_images(*tok, two, one, image_id), lowbit::Error);
  const std::vector<int64_t> three{1, 1, 1};
  EXPECT_THROW(tokenize_with_images(*tok, two, three, image_id), lowbit::Error);
}
