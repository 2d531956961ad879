#include "formats/checkpoint.h"

#include "core/error.h"
#include "core/mapped_file.h"
#include "formats/safetensors.h"
#include "test_util.h"

#include <gtest/gtest.h>

#include <cstring>

namespace lowbit {
namespace {

void expect_error(const std::function<void()>& f, const std::string& needle) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one mentioning '" << needle << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << "message: " << e.what();
  }
}

int64_t total_params(const WeightSource& w) {
  int64_t n = 0;
  for (const auto& name : w.names()) {
    int64_t k = 1;
    for (int64_t d : w.info(name)->shape) k *= d;
    n += k;
  }
  return n;
}

TEST(Checkpoint, Testbed44m) {
  const std::string p = test::models_dir() + "/testbed-44m";
  LOWBIT_REQUIRE_PATH(p);
  Checkpoint ck = open_checkpoint(p);
  EXPECT_EQ(ck.format, "hf-safetensors");
  EXPECT_EQ(ck.config.hidden_size, 512);
  EXPECT_EQ(ck.config.num_key_value_heads, 2);
  EXPECT_EQ(ck.config.rope_theta, 500000.0);
  EXPECT_TRUE(ck.config.tie_word_embeddings);
  // The model README: 43,655,680 parameters.
  EXPECT_EQ(total_params(*ck.weights), 43655680);
  EXPECT_EQ(ck.config.parameter_count(), 43655680);
  Tensor q = ck.weights->get("model.layers.0.self_attn.q_proj.weight");
  EXPECT_EQ(q.dtype(), DType::BF16);
  EXPECT_EQ(q.shape(), (std::vector<int64_t>{512, 512}));
  EXPECT_TRUE(ck.tokenizer_path.ends_with("tokenizer.model"));
}

TEST(Checkpoint, Stories260kLlama2c) {
  const std::string p = test::models_dir() + "/stories260K/stories260K.bin";
  LOWBIT_REQUIRE_PATH(p);
  Checkpoint ck = open_checkpoint(p);
  EXPECT_EQ(ck.format, "llama2c-v0");
  const LlamaConfig& c = ck.config;
  EXPECT_EQ(c.hidden_size, 64);
  EXPECT_EQ(c.intermediate_size, 172);
  EXPECT_EQ(c.num_hidden_layers, 5);
  EXPECT_EQ(c.num_attention_heads, 8);
  EXPECT_EQ(c.num_key_value_heads, 4);
  EXPECT_EQ(c.vocab_size, 512);
  EXPECT_EQ(c.max_position_embeddings, 512);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(total_params(*ck.weights), 260032);  // SOURCE.txt
  EXPECT_TRUE(ck.tokenizer_path.ends_with("tok512.bin"));

  // q/k rows are reordered from run.c's adjacent-pair RoPE to transformers' half-split layout:
  // row h*d + j*(d/2) + i comes from file row h*d + 2i + j.
  auto f = MappedFile::open(p);
  const float* wq0 = reinterpret_cast<const float*>(f->data() + 28) + 512 * 64 + 5 * 64;  // after emb, rms_att
  Tensor q = ck.weights->get("model.layers.0.self_attn.q_proj.weight");
  const int64_t d = 8, half = 4;
  for (int64_t h = 0; h < 8; ++h)
    for (int64_t j = 0; j < 2; ++j)
      for (int64_t i = 0; i < half; ++i)
        ASSERT_EQ(std::memcmp(q.data_as<float>() + (h * d + j * half + i) * 64, wq0 + (h * d + 2 * i + j) * 64, 64 * 4), 0);
  // v is untouched: a read-only view into the mapped file.
  Tensor v = ck.weights->get("model.layers.0.self_attn.v_proj.weight");
  const float* wv0 = wq0 + 5 * 64 * 64 + 5 * 32 * 64;
  EXPECT_EQ(std::memcmp(v.data(), wv0, 32 * 64 * 4), 0);
  EXPECT_FALSE(v.writable());
}

TEST(CheckpointCorrupt, TruncatedLlama2c) {
  const std::string p = test::models_dir() + "/stories260K/stories260K.bin";
  LOWBIT_REQUIRE_PATH(p);
  test::TempDir dir;
  std::string bytes = test::slurp(p);
  test::spit(dir / "m.bin", bytes.substr(0, bytes.size() - 100));
  expect_error([&] { open_checkpoint(dir / "m.bin"); }, "header implies 1056540 bytes, file has 1056440");
  bytes[0] = bytes[1] = bytes[2] = bytes[3] = '\xff';  // dim = -1
  test::spit(dir / "m.bin", bytes);
  expect_error([&] { open_checkpoint(dir / "m.bin"); }, "header field dim");
}

// A tiny HF directory: config + safetensors written by lowbit's writer.
void write_tiny_hf(const std::string& dir, bool wrong_shape, bool drop_norm) {
  test::spit(dir + "/config.json", R"({"architectures":["LlamaForCausalLM"],"hidden_size":8,
    "intermediate_size":16,"num_hidden_layers":1,"num_attention_heads":2,"num_key_value_heads":1,
    "vocab_size":10,"tie_word_embeddings":false})");
  LlamaConfig c = load_llama_config(dir + "/config.json");
  SafetensorsWriter w;
  for (auto [name, shape] : expected_llama_tensors(c)) {
    if (drop_norm && name == "model.norm.weight") continue;
    if (wrong_shape && name.ends_with("k_proj.weight")) shape = {8, 8};
    w.add(name, Tensor::empty(DType::F16, shape));
  }
  w.write(dir + "/model.safetensors");
}

TEST(CheckpointCorrupt, HfDirectories) {
  test::TempDir dir;
  const std::string d = dir.path.string();
  write_tiny_hf(d, false, false);
  Checkpoint ck = open_checkpoint(d);
  EXPECT_FALSE(ck.config.tie_word_embeddings);
  EXPECT_TRUE(ck.weights->has("lm_head.weight"));

  write_tiny_hf(d, true, false);
  expect_error([&] { open_checkpoint(d); },
               "tensor 'model.layers.0.self_attn.k_proj.weight' has wrong shape: got [8, 8], expected [4, 8]");
  write_tiny_hf(d, false, true);
  expect_error([&] { open_checkpoint(d); }, "missing tensor 'model.norm.weight'");

  std::filesystem::remove(d + "/model.safetensors");
  expect_error([&] { open_checkpoint(d); }, "no weights");
  expect_error([&] { open_checkpoint(d + "/nope"); }, "does not exist");
}

}  // namespace
}  // namespace lowbit
