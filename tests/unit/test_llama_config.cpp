#include "formats/llama_config.h"

#include "core/error.h"
#include "test_util.h"

#include <gtest/gtest.h>

namespace lowbit {
namespace {

const char* kBase = R"({"architectures":["LlamaForCausalLM"],"model_type":"llama","hidden_size":256,
 "intermediate_size":512,"num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,
 "vocab_size":1000,"rms_norm_eps":1e-5,"rope_theta":500000.0,"max_position_embeddings":4096,
 "bos_token_id":1,"eos_token_id":[2,3],"torch_dtype":"bfloat16"})";

void expect_error(const std::string& json, const std::string& needle) {
  try {
    parse_llama_config(json, "config.json");
    ADD_FAILURE() << "no error; expected one mentioning '" << needle << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << "message: " << e.what();
  }
}

std::string with(const std::string& extra) {
  std::string s = kBase;
  s.pop_back();
  return s + "," + extra + "}";
}

std::string without(const std::string& key) {
  std::string s = kBase;
  const size_t p = s.find("\"" + key + "\"");
  const size_t e = s.find(',', p);
  return s.erase(p, e - p + 1);
}

TEST(LlamaConfig, Basic) {
  LlamaConfig c = parse_llama_config(kBase, "config.json");
  EXPECT_EQ(c.hidden_size, 256);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.num_key_value_heads, 2);
  EXPECT_EQ(c.eos_token_ids, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(c.rope_theta, 500000.0);
  EXPECT_EQ(c.rope_scaling.type, RopeScaling::Type::None);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_EQ(c.torch_dtype, "bfloat16");
  // embed + lm_head + 2 x (q,k,v,o, gate,up,down, 2 norms) + final norm
  const int64_t per_layer = 256 * 256 + 2 * 256 * 128 + 256 * 256 + 3 * 256 * 512 + 2 * 256;
  EXPECT_EQ(c.parameter_count(), 2 * 1000 * 256 + 2 * per_layer + 256);
}

TEST(LlamaConfig, Llama3RopeScaling) {
  LlamaConfig c = parse_llama_config(with(R"("rope_scaling":{"factor":32.0,"high_freq_factor":4.0,
    "low_freq_factor":1.0,"original_max_position_embeddings":8192,"rope_type":"llama3"})"), "c");
  EXPECT_EQ(c.rope_scaling.type, RopeScaling::Type::Llama3);
  EXPECT_EQ(c.rope_scaling.factor, 32.0);
  EXPECT_EQ(c.rope_scaling.original_max_position_embeddings, 8192);
}

TEST(LlamaConfig, RopeParametersOfTransformers5) {
  LlamaConfig c = parse_llama_config(
      with(R"("rope_parameters":{"rope_theta":10000.0,"rope_type":"linear","factor":2.0})"), "c");
  EXPECT_EQ(c.rope_theta, 10000.0);
  EXPECT_EQ(c.rope_scaling.type, RopeScaling::Type::Linear);
  EXPECT_EQ(c.rope_scaling.factor, 2.0);
}

TEST(LlamaConfig, ExplicitHeadDimAndDefaults) {
  LlamaConfig c = parse_llama_config(with(R"("head_dim":32)"), "c");
  EXPECT_EQ(c.head_dim, 32);
  LlamaConfig d = parse_llama_config(without("num_key_value_heads"), "c");
  EXPECT_EQ(d.num_key_value_heads, 4);
}

TEST(LlamaConfig, MissingFieldsAreNamed) {
  for (const char* k : {"hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size"})
    expect_error(without(k), std::string("missing required field '") + k + "'");
}

TEST(LlamaConfig, BadInputs) {
  expect_error("{not json", "not valid JSON");
  expect_error(R"({"model_type":"gpt2","hidden_size":1})", "not a LLaMA model");
  expect_error(with(R"("rope_scaling":{"rope_type":"yarn","factor":2.0})"), "unsupported rope type 'yarn'");
  expect_error(with(R"("rope_scaling":{"rope_type":"llama3","factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0})"),
               "original_max_position_embeddings");
  expect_error(with(R"("attention_bias":true)"), "attention_bias");
  expect_error(with(R"("hidden_act":"gelu")"), "hidden_act");
  std::string s = kBase;
  s.replace(s.find("\"num_key_value_heads\":2"), 23, "\"num_key_value_heads\":3");
  expect_error(s, "not a multiple of num_key_value_heads");
}

TEST(LlamaConfig, RealConfigs) {
  const std::string dir = test::models_dir() + "/configs";
  LOWBIT_REQUIRE_PATH(dir);
  LlamaConfig c = load_llama_config(dir + "/Llama-3.2-1B-finetune-bnb8.config.json");
  EXPECT_EQ(c.hidden_size, 2048);
  EXPECT_EQ(c.num_hidden_layers, 16);
  EXPECT_EQ(c.num_key_value_heads, 8);
  EXPECT_EQ(c.vocab_size, 128256);
  EXPECT_EQ(c.rope_scaling.type, RopeScaling::Type::Llama3);
  EXPECT_TRUE(c.tie_word_embeddings);
  LlamaConfig d = load_llama_config(dir + "/Llama-3.2-3B-Instruct.config.json");
  EXPECT_EQ(d.hidden_size, 3072);
  EXPECT_EQ(d.head_dim, 128);
  EXPECT_EQ(d.eos_token_ids.size(), 3u);
}

}  // namespace
}  // namespace lowbit
