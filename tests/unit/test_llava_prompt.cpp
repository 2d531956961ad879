// LLaVA-NeXT's LLaMA-3 prompt and its tokenization with image tokens, against Meta-Llama-3's chat
// template rendered by transformers and the LLaMA-3 tokenizer (scripts/make_llava_prompt_fixture.py).
#include "core/error.h"
#include "formats/tokenizer.h"
#include "model/llava_next.h"
#include "model/llava_prompt.h"
#include "test_util.h"

#include <gtest/gtest.h>
#include <filesystem>
#include <nlohmann/json.hpp>

using namespace lowbit;
using lowbit::test::fixtures_dir;

namespace {

nlohmann::json cases() {
  return nlohmann::json::parse(lowbit::test::read_zst(fixtures_dir() + "/llava_next/prompts.json.zst"));
}

// The LLaMA-3 tokenizer of ../shared (loaded once), or null when absent.
const Tokenizer* llama3() {
  static const std::unique_ptr<Tokenizer> tok = [] {
    const std::string dir = lowbit::test::models_dir() + "/tokenizers/llama3";
    return std::filesystem::exists(dir + "/tokenizer.json") ? load_tokenizer(dir) : nullptr;
  }();
  return tok.get();
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
  LOWBIT_REQUIRE_PATH(lowbit::test::models_dir() + "/tokenizers/llama3/tokenizer.json");
  const Tokenizer* tok = llama3();
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

// The whole path as llava-hf's processor runs it: image token counts from the image sizes (336-px
// tiles, LLaVA-Next-8B's pinpoints) and the prompt tokenized around them, against transformers'
// LlavaNextProcessor with "<image>" as an added token.
TEST(LlavaPrompt, MatchesLlavaNextProcessor) {
  LOWBIT_REQUIRE_PATH(lowbit::test::models_dir() + "/tokenizers/llama3/tokenizer.json");
  const Tokenizer* tok = llama3();
  const auto j = cases();
  LlavaNextConfig real;
  real.pinpoints = {{336, 672}, {672, 336}, {672, 672}, {1008, 336}, {336, 1008}};
  ASSERT_EQ(real.vision.image_size, 336);
  ASSERT_EQ(real.vision.patch_size, 14);
  for (const auto& c : j["processor_cases"]) {
    std::vector<int64_t> counts;
    for (const auto& hw : c["sizes"])
      counts.push_back(llava_next_image_token_count(real, hw[0].get<int64_t>(), hw[1].get<int64_t>()));
    SCOPED_TRACE(c["sizes"].dump());
    EXPECT_EQ(tokenize_with_images(*tok, c["prompt"].get<std::string>(), counts, j["image_token_id"].get<int32_t>()),
              c["ids"].get<std::vector<int32_t>>());
  }
}
