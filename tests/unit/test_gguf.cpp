// GGUF reader, ggml dequantization and LLaMA-from-GGUF.
//  - Dequantization of every type lowbit reads against gguf-py's NumPy dequantizers, bit for bit
//    (tests/fixtures/gguf/quants.safetensors, scripts/make_gguf_fixtures.py).
//  - The reader against a file gguf-py's GGUFWriter wrote (reader.gguf + reader.json: every
//    metadata value type, nested arrays, alignment 64, one tensor of each type), every truncation
//    of it, and hand-made corrupt files, each a lowbit::Error with a clear message.
//  - A random-weight LLaMA-3-style model converted to GGUF (scripts/make_gguf_mini_fixtures.py):
//    weights, llama3 RoPE parameters and logits against its Hugging Face checkpoint.
//  - SmolLM2-135M-Instruct (Q4_1) when available: config, weights and logits against transformers
//    (smollm2_q4_1.safetensors, scripts/make_gguf_model_fixture.py).
#include "core/error.h"
#include "formats/checkpoint.h"
#include "formats/ggml_quants.h"
#include "formats/gguf.h"
#include "formats/gguf_llama.h"
#include "formats/safetensors.h"
#include "model/llama_model.h"
#include "test_util.h"

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstring>

namespace lowbit {
namespace {

using test::fixtures_dir;
using json = nlohmann::json;

std::string fixture(const std::string& name) { return fixtures_dir() + "/gguf/" + name; }

const std::vector<std::string> kReadable = {"F32",  "F16",  "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1",
                                            "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"};

uint32_t type_id(const std::string& name) {
  for (uint32_t id = 0; id < 64; ++id)
    if (ggml_type_name(id) == name) return id;
  ADD_FAILURE() << "no ggml type " << name;
  return 0;
}

// Bitwise equality of float arrays, reporting the first difference.
void expect_same_bits(const float* got, const float* want, int64_t n, const std::string& what) {
  for (int64_t i = 0; i < n; ++i) {
    uint32_t a, b;
    std::memcpy(&a, got + i, 4);
    std::memcpy(&b, want + i, 4);
    if (a != b) {
      ADD_FAILURE() << what << ": element " << i << " is " << got[i] << " (0x" << std::hex << a << "), expected "
                    << want[i] << " (0x" << b << ")" << std::dec;
      return;
    }
  }
}

TEST(GgmlQuants, DequantizeMatchesGgufPyBitForBit) {
  auto f = SafetensorsFile::open(fixture("quants.safetensors"));
  for (const std::string& name : kReadable) {
    SCOPED_TRACE(name);
    Tensor blocks = f->tensor(name + ".blocks");
    Tensor expected = f->tensor(name + ".expected");
    ASSERT_EQ(blocks.dtype(), DType::U8);
    std::vector<float> got(size_t(expected.numel()));
    ggml_dequantize(type_id(name), blocks.data_as<uint8_t>(), got.data(), expected.numel(), "tensor '" + name + "'");
    const GgmlTypeTraits* tr = ggml_type_traits(type_id(name));
    ASSERT_NE(tr, nullptr);
    EXPECT_EQ(blocks.numel(), expected.numel() / tr->block_size * tr->type_size);
    expect_same_bits(got.data(), expected.data_as<float>(), expected.numel(), name);
  }
}

TEST(GgmlQuants, UnreadableTypesAreNamed) {
  std::vector<uint8_t> src(66 * 2);
  std::vector<float> dst(512);
  try {
    ggml_dequantize(uint32_t(GgmlType::IQ2_XXS), src.data(), dst.data(), 512, "tensor 'x'");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "tensor 'x' has ggml type IQ2_XXS (16), which lowbit cannot read");
  }
  EXPECT_THROW(ggml_dequantize(77, src.data(), dst.data(), 32, "tensor 'x'"), Error);
  EXPECT_THROW(ggml_dequantize(uint32_t(GgmlType::Q4_0), src.data(), dst.data(), 31, "tensor 'x'"), Error);
}

// ---- The reader against gguf-py's writer.

TEST(GgufReader, ReadsWhatGgufPyWrote) {
  const json desc = json::parse(test::slurp(fixture("reader.json")));
  auto f = GgufFile::open(fixture("reader.gguf"));
  EXPECT_EQ(f->version(), desc["version"].get<uint32_t>());
  EXPECT_EQ(f->alignment(), desc["alignment"].get<uint32_t>());
  EXPECT_EQ(f->data_offset() % 64, 0u);
  EXPECT_EQ(f->get_string("general.architecture"), desc["architecture"].get<std::string>());
  for (const auto& s : desc["scalars"]) {
    const std::string key = s["key"], type = s["type"];
    SCOPED_TRACE(key);
    ASSERT_TRUE(f->has(key));
    if (type == "STRING") {
      EXPECT_EQ(f->get_string(key), s["value"].get<std::string>());
    } else if (type == "BOOL") {
      EXPECT_EQ(f->get_bool(key), s["value"].get<bool>());
    } else if (type == "FLOAT32" || type == "FLOAT64") {
      EXPECT_EQ(f->get_float(key), s["value"].get<double>());  // both exactly representable
    } else if (type == "UINT64") {
      EXPECT_EQ(f->find(key)->u, s["value"].get<uint64_t>());
      EXPECT_THROW(f->get_int(key), Error);  // above INT64_MAX
    } else {
      EXPECT_EQ(f->get_int(key), s["value"].get<int64_t>());
      EXPECT_EQ(f->get_float(key), double(s["value"].get<int64_t>()));
    }
  }
  for (const auto& a : desc["arrays"]) {
    const std::string key = a["key"], type = a["type"];
    SCOPED_TRACE(key);
    if (type == "STRING") {
      EXPECT_EQ(f->get_strings(key), a["value"].get<std::vector<std::string>>());
      EXPECT_THROW(f->get_ints(key), Error);
    } else if (type == "FLOAT32" || type == "FLOAT64") {
      EXPECT_EQ(f->get_floats(key), a["value"].get<std::vector<double>>());
      EXPECT_THROW(f->get_ints(key), Error);
    } else if (type == "BOOL") {
      const GgufValue* v = f->find(key);
      ASSERT_EQ(v->count, a["value"].size());
      for (size_t k = 0; k < v->count; ++k) EXPECT_EQ(v->int_at(k) != 0, a["value"][k].get<bool>());
    } else {
      EXPECT_EQ(f->get_ints(key), a["value"].get<std::vector<int64_t>>());
      EXPECT_THROW(f->get_strings(key), Error);
    }
  }
  const GgufValue* nested = f->find(desc["nested"]["key"]);
  ASSERT_NE(nested, nullptr);
  ASSERT_EQ(nested->elem_type, GgufValueType::ARRAY);
  ASSERT_EQ(nested->items.size(), desc["nested"]["value"].size());
  for (size_t k = 0; k < nested->items.size(); ++k) {
    const auto want = desc["nested"]["value"][k].get<std::vector<int64_t>>();
    ASSERT_EQ(nested->items[k].count, want.size());
    for (size_t j = 0; j < want.size(); ++j) EXPECT_EQ(nested->items[k].int_at(j), want[j]);
  }
  // Absent keys and wrong types.
  EXPECT_FALSE(f->get_int("no.such.key").has_value());
  EXPECT_THROW(f->get_strings("no.such.key"), Error);
  EXPECT_THROW(f->get_int("test.string"), Error);
  EXPECT_THROW(f->get_string("test.u32"), Error);

  // Tensors: names, dims, types, and their dequantized values.
  auto q = SafetensorsFile::open(fixture("quants.safetensors"));
  ASSERT_EQ(f->tensors().size(), desc["tensors"].size());
  for (const auto& t : desc["tensors"]) {
    SCOPED_TRACE(t["name"].get<std::string>());
    const GgufTensorInfo* info = f->find_tensor(t["name"]);
    ASSERT_NE(info, nullptr);
    EXPECT_EQ(info->ne, t["ne"].get<std::vector<int64_t>>());
    EXPECT_EQ(info->type, t["type"].get<uint32_t>());
    EXPECT_EQ(info->offset % 64, 0u);
    const std::string type(ggml_type_name(info->type));
    Tensor expected = q->tensor(type + ".expected");
    EXPECT_EQ(info->shape(), expected.shape());
    std::vector<float> got(size_t(info->numel()));
    f->dequantize(*info, got.data());
    expect_same_bits(got.data(), expected.data_as<float>(), expected.numel(), type);
  }
}

std::string error_of(const std::string& bytes, const std::string& what = "x.gguf") {
  try {
    GgufFile::parse(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), what);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(GgufReader, VersionTwoReadsTheSame) {
  std::string bytes = test::slurp(fixture("reader.gguf"));
  bytes[4] = 2;  // v2 and v3 share the layout (v3 added big-endian files)
  auto f = GgufFile::parse(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), "v2.gguf");
  EXPECT_EQ(f->version(), 2u);
  EXPECT_EQ(f->tensors().size(), 13u);
}

TEST(GgufReader, EveryTruncationIsAnError) {
  const std::string bytes = test::slurp(fixture("reader.gguf"));
  auto full = GgufFile::open(fixture("reader.gguf"));
  uint64_t end = full->data_offset();
  for (const auto& t : full->tensors()) end = std::max(end, full->data_offset() + t.offset + t.nbytes);
  for (size_t n = 0; n < bytes.size(); ++n) {
    const std::string msg = error_of(bytes.substr(0, n));
    if (n < end) {
      ASSERT_FALSE(msg.empty()) << "a prefix of " << n << " bytes parsed";
      ASSERT_NE(msg.find("'x.gguf'"), std::string::npos) << msg;
    } else {
      ASSERT_TRUE(msg.empty()) << "the trailing padding is optional: " << msg;
    }
  }
}

// ---- Hand-made files.

// Writes a GGUF image field by field.
class Builder {
 public:
  uint32_t version = 3;
  std::string magic = "GGUF";
  Builder& kv_raw(const std::string& key, uint32_t type, const std::string& value) {
    kv_ += str(key) + u32(type) + value;
    ++n_kv_;
    return *this;
  }
  Builder& kv_u32(const std::string& key, uint32_t v) { return kv_raw(key, 4, u32(v)); }
  Builder& kv_f32(const std::string& key, float v) {
    std::string b(4, '\0');
    std::memcpy(b.data(), &v, 4);
    return kv_raw(key, 6, b);
  }
  Builder& kv_str(const std::string& key, const std::string& v) { return kv_raw(key, 8, str(v)); }
  Builder& tensor(const std::string& name, std::vector<uint64_t> ne, uint32_t type, uint64_t offset) {
    std::string t = str(name) + u32(uint32_t(ne.size()));
    for (uint64_t d : ne) t += u64(d);
    ti_ += t + u32(type) + u64(offset);
    ++n_t_;
    return *this;
  }
  Builder& data(const std::string& d) {
    data_ += d;
    return *this;
  }
  uint64_t data_size() const { return data_.size(); }
  std::string bytes(uint32_t alignment = 32) const {
    std::string b = magic + u32(version) + u64(n_t_) + u64(n_kv_) + kv_ + ti_;
    b.append((alignment - b.size() % alignment) % alignment, '\0');
    return b + data_;
  }

  static std::string u32(uint32_t v) { return std::string(reinterpret_cast<const char*>(&v), 4); }
  static std::string u64(uint64_t v) { return std::string(reinterpret_cast<const char*>(&v), 8); }
  static std::string str(const std::string& s) { return u64(s.size()) + s; }

 private:
  std::string kv_, ti_, data_;
  uint64_t n_kv_ = 0, n_t_ = 0;
};

void expect_error(const std::string& bytes, const std::string& part) {
  const std::string msg = error_of(bytes);
  EXPECT_NE(msg.find(part), std::string::npos) << "message: '" << msg << "' lacks '" << part << "'";
  EXPECT_NE(msg.find("'x.gguf'"), std::string::npos) << msg;
}

TEST(GgufReader, CorruptFilesAreErrors) {
  const std::string floats(64, '\0');  // 16 F32 values
  Builder ok;
  ok.kv_str("general.architecture", "llama").tensor("t", {16}, 0, 0).data(floats);
  ASSERT_EQ(error_of(ok.bytes()), "");

  Builder m = ok;
  m.magic = "GGUX";
  expect_error(m.bytes(), "not a GGUF file");
  expect_error("GGU", "too short for the GGUF magic");
  Builder v1 = ok;
  v1.version = 1;
  expect_error(v1.bytes(), "GGUF version 1 is not supported");
  Builder v4 = ok;
  v4.version = 4;
  expect_error(v4.bytes(), "GGUF version 4 is not supported");
  Builder be = ok;
  be.version = 0x03000000;
  expect_error(be.bytes(), "big-endian");
  expect_error(ok.bytes().substr(0, 12), "the tensor count (8 bytes at offset 8) runs past the end of the file (12 bytes)");
  expect_error(ok.bytes().substr(0, 30), "metadata count 1 cannot fit in the 6 bytes left in the file");
  // The key's bytes cut short, then a string value cut short.
  expect_error(ok.bytes().substr(0, 24 + 8 + 5), "string length 20 at offset 24 runs past the end of the file (37 bytes)");
  expect_error(Builder().kv_str("k", "value").bytes().substr(0, 24 + 9 + 4 + 8 + 2),
               "metadata 'k': string length 5 at offset 37 runs past the end");
  expect_error(Builder().kv_raw("k", 8, Builder::u64(1000000000000ull) + "abc").bytes(),
               "string length 1000000000000 at offset");
  expect_error(Builder().kv_raw("k", 13, Builder::u32(0)).bytes(), "metadata 'k' has unknown value type 13");
  expect_error(Builder().kv_raw("k", 9, Builder::u32(42) + Builder::u64(1)).bytes(), "array has unknown element type 42");
  expect_error(Builder().kv_raw("k", 9, Builder::u32(4) + Builder::u64(1ull << 61)).bytes(),
               "array of 2305843009213693952 u32 (4 bytes each)");
  expect_error(Builder().kv_raw("k", 9, Builder::u32(8) + Builder::u64(1ull << 40)).bytes(),
               "array of 1099511627776 string");
  {
    std::string nest;  // arrays of arrays, 9 deep
    for (int i = 0; i < 9; ++i) nest += Builder::u32(9) + Builder::u64(1);
    expect_error(Builder().kv_raw("k", 9, nest + Builder::u32(4) + Builder::u64(0)).bytes(), "nested deeper than 8");
  }
  expect_error(Builder().kv_raw("k", 7, "\x02").bytes(), "bool byte 2");
  expect_error(Builder().kv_u32("k", 1).kv_u32("k", 2).bytes(), "metadata key 'k' appears twice");
  expect_error(Builder().kv_u32("general.alignment", 48).bytes(), "general.alignment 48 is not a power of two");
  expect_error(Builder().kv_f32("general.alignment", 32).bytes(), "general.alignment must be a u32");
  {
    std::string b = ok.bytes();
    std::memcpy(b.data() + 16, "\xff\xff\xff\xff\xff\xff\xff\x0f", 8);  // metadata count
    expect_error(b, "metadata count 1152921504606846975 cannot fit");
    b = ok.bytes();
    std::memcpy(b.data() + 8, "\xff\xff\xff\xff\xff\xff\xff\x0f", 8);  // tensor count
    expect_error(b, "tensor count 1152921504606846975 cannot fit");
  }

  // Tensor infos.
  Builder past;
  past.tensor("blk.3.attn_q.weight", {16}, 0, 32).data(floats);
  expect_error(past.bytes(), "tensor 'blk.3.attn_q.weight' data [128, 192) runs past the end of the file (160 bytes)");
  Builder far;
  far.tensor("t", {16}, 0, 0xffffffffffffffe0ull).data(floats);
  expect_error(far.bytes(), "tensor 't' data [");
  Builder misaligned;
  misaligned.tensor("t", {4}, 0, 8).data(floats);
  expect_error(misaligned.bytes(), "tensor 't' has data offset 8, not a multiple of the alignment 32");
  Builder dims5;
  dims5.tensor("t", {1, 1, 1, 1, 16}, 0, 0).data(floats);
  expect_error(dims5.bytes(), "tensor 't' has 5 dimensions; GGUF allows 1 to 4");
  Builder dims0;
  dims0.tensor("t", {}, 0, 0).data(floats);
  expect_error(dims0.bytes(), "tensor 't' has 0 dimensions");
  Builder overflow;
  overflow.tensor("t", {1ull << 32, 1ull << 32}, 0, 0).data(floats);
  expect_error(overflow.bytes(), "tensor 't' has dimensions whose product overflows");
  Builder huge;
  huge.tensor("t", {1ull << 40, 1ull << 21}, 0, 0).data(floats);  // 2^61 elements * 4 bytes
  expect_error(huge.bytes(), "tensor 't' has a byte size that overflows");
  Builder unknown_type;
  unknown_type.tensor("t", {16}, 99, 0).data(floats);
  expect_error(unknown_type.bytes(), "tensor 't' has ggml type id 99, which ggml does not define");
  Builder partial_block;
  partial_block.tensor("t", {16}, 2, 0).data(floats);
  expect_error(partial_block.bytes(), "tensor 't' has 16 columns, not a multiple of the 32-element blocks of ggml type Q4_0");
  Builder dup;
  dup.tensor("t", {8}, 0, 0).tensor("t", {8}, 0, 32).data(floats);
  expect_error(dup.bytes(), "tensor name 't' appears twice");
  Builder overlap;
  overlap.tensor("a", {16}, 0, 0).tensor("b", {8}, 0, 32).data(floats);
  expect_error(overlap.bytes(), "tensor 'a' data [");
  expect_error(overlap.bytes(), "overlaps tensor 'b'");

  // A type the reader knows but lowbit cannot dequantize: the file opens, the tensor is refused.
  Builder iq;
  iq.tensor("blk.0.ffn_up.weight", {256}, 16, 0).data(std::string(66, '\0'));
  auto bytes = iq.bytes();
  auto f = GgufFile::parse(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), "x.gguf");
  std::vector<float> out(256);
  try {
    f->dequantize(f->tensors()[0], out.data());
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "'x.gguf': tensor 'blk.0.ffn_up.weight' has ggml type IQ2_XXS (16), which lowbit cannot read");
  }
}

// ---- LLaMA from GGUF: hyper-parameters and tensor names.

// A 1-layer llama GGUF with F32 tensors of the right shapes (values zero): hidden 8, 2 heads
// (head size 4), 1 kv head, FFN 16, vocab 12.
Builder tiny_llama(const std::string& arch = "llama", const std::string& drop = "") {
  Builder b;
  b.kv_str("general.architecture", arch);
  const std::pair<const char*, uint32_t> keys[] = {
      {"block_count", 1}, {"embedding_length", 8}, {"feed_forward_length", 16}, {"attention.head_count", 2},
      {"attention.head_count_kv", 1}, {"context_length", 64}, {"vocab_size", 12}, {"rope.dimension_count", 4}};
  for (const auto& [k, v] : keys)
    if (drop != k) b.kv_u32(arch + "." + k, v);
  if (drop != "attention.layer_norm_rms_epsilon") b.kv_f32(arch + ".attention.layer_norm_rms_epsilon", 1e-5f);
  b.kv_f32(arch + ".rope.freq_base", 500000.0f);
  const std::pair<const char*, std::vector<uint64_t>> tensors[] = {
      {"token_embd.weight", {8, 12}},     {"blk.0.attn_norm.weight", {8}},    {"blk.0.attn_q.weight", {8, 8}},
      {"blk.0.attn_k.weight", {8, 4}},    {"blk.0.attn_v.weight", {8, 4}},    {"blk.0.attn_output.weight", {8, 8}},
      {"blk.0.ffn_norm.weight", {8}},     {"blk.0.ffn_gate.weight", {8, 16}}, {"blk.0.ffn_up.weight", {8, 16}},
      {"blk.0.ffn_down.weight", {16, 8}}, {"output_norm.weight", {8}}};
  uint64_t offset = 0;
  for (const auto& [name, ne] : tensors) {
    uint64_t n = 4;
    for (uint64_t d : ne) n *= d;
    b.tensor(name, ne, 0, offset);
    b.data(std::string(n, '\0') + std::string((32 - n % 32) % 32, '\0'));
    offset += (n + 31) / 32 * 32;
  }
  return b;
}

std::string write_temp(const std::string& name, const std::string& bytes) {
  const std::string p = (std::filesystem::temp_directory_path() / ("lowbit_test_gguf_" + name)).string();
  test::spit(p, bytes);
  return p;
}

TEST(GgufLlama, TinyModelOpensUnderHuggingFaceNames) {
  const std::string p = write_temp("tiny.gguf", tiny_llama().bytes());
  Checkpoint ck = open_checkpoint(p);
  EXPECT_EQ(ck.format, "gguf");
  EXPECT_EQ(ck.tokenizer_path, p);
  EXPECT_EQ(ck.config.num_hidden_layers, 1);
  EXPECT_EQ(ck.config.head_dim, 4);
  EXPECT_EQ(ck.config.num_key_value_heads, 1);
  EXPECT_EQ(ck.config.rope_theta, 500000.0);
  EXPECT_TRUE(ck.config.tie_word_embeddings);
  EXPECT_EQ(ck.weights->info("model.layers.0.mlp.down_proj.weight")->shape, (std::vector<int64_t>{8, 16}));
  EXPECT_EQ(ck.weights->get("model.layers.0.self_attn.k_proj.weight").shape(), (std::vector<int64_t>{4, 8}));
  std::filesystem::remove(p);
}

TEST(GgufLlama, BadModelsAreErrors) {
  auto error = [](const std::string& name, const std::string& bytes) -> std::string {
    const std::string p = write_temp(name, bytes);
    std::string msg;
    try {
      open_checkpoint(p);
    } catch (const Error& e) {
      msg = e.what();
    }
    std::filesystem::remove(p);
    return msg;
  };
  EXPECT_NE(error("qwen.gguf", tiny_llama("qwen2").bytes()).find("general.architecture is 'qwen2'; lowbit reads only 'llama'"),
            std::string::npos);
  for (const char* key : {"block_count", "embedding_length", "feed_forward_length", "attention.head_count",
                          "context_length", "attention.layer_norm_rms_epsilon"}) {
    const std::string msg = error("missing.gguf", tiny_llama("llama", key).bytes());
    EXPECT_NE(msg.find(std::string("missing required metadata 'llama.") + key + "'"), std::string::npos) << msg;
  }
  Builder moe = tiny_llama();
  moe.kv_u32("llama.expert_count", 8);
  EXPECT_NE(error("moe.gguf", moe.bytes()).find("a mixture-of-experts model (llama.expert_count = 8)"), std::string::npos);
  auto with_tensor = [](const std::string& name) {
    Builder b = tiny_llama();
    b.tensor(name, {8}, 0, b.data_size()).data(std::string(32, '\0'));
    return b.bytes();
  };
  EXPECT_NE(error("extra.gguf", with_tensor("blk.0.attn_q.bias")).find("tensor 'blk.0.attn_q.bias' is not part of a LLaMA model"),
            std::string::npos);
  EXPECT_NE(error("block.gguf", with_tensor("blk.7.attn_norm.weight")).find("belongs to block 7, but llama.block_count is 1"),
            std::string::npos);
  // An overstated block count costs nothing before the missing block is named (the mapping is
  // linear in the tensors present, not in llama.block_count).
  Builder overstated = tiny_llama("llama", "block_count");
  overstated.kv_u32("llama.block_count", 4000000000u);
  const std::string msg = error("overstated.gguf", overstated.bytes());
  EXPECT_NE(msg.find("model.layers.1."), std::string::npos) << msg;
  Builder wrong_shape = tiny_llama();
  wrong_shape.kv_u32("llama.attention.key_length", 8);
  EXPECT_NE(error("shape.gguf", wrong_shape.bytes()).find("llama.rope.dimension_count 4 differs from the head size 8"),
            std::string::npos);
}

TEST(GgufLlama, UntiedOutputIsTheLmHead) {
  Builder b = tiny_llama();
  b.tensor("output.weight", {8, 12}, 0, b.data_size()).data(std::string(8 * 12 * 4, '\0'));
  const std::string p = write_temp("untied.gguf", b.bytes());
  Checkpoint ck = open_checkpoint(p);
  EXPECT_FALSE(ck.config.tie_word_embeddings);
  ASSERT_TRUE(ck.weights->has("lm_head.weight"));
  EXPECT_EQ(ck.weights->info("lm_head.weight")->shape, (std::vector<int64_t>{12, 8}));
  std::filesystem::remove(p);
}

// A random-weight LLaMA-3-style model (GQA, llama3 RoPE scaling) converted to GGUF the way
// convert_hf_to_gguf.py does (scripts/make_gguf_mini_fixtures.py, which checks the file with
// transformers' GGUF loader): lowbit must read the Hugging Face checkpoint's exact weights and
// RoPE parameters back, and give transformers' logits.
TEST(GgufLlama, ConvertedMiniModelMatchesItsCheckpoint) {
  const std::string hf_dir = fixtures_dir() + "/models/llama3-mini-bf16";
  const std::string p = write_temp("llama3-mini-bf16.gguf", test::read_zst(fixture("llama3-mini-bf16.gguf.zst")));
  Checkpoint gg = open_checkpoint(p);
  Checkpoint hf = open_checkpoint(hf_dir);
  const LlamaConfig &a = gg.config, &b = hf.config;
  EXPECT_EQ(a.num_hidden_layers, b.num_hidden_layers);
  EXPECT_EQ(a.num_key_value_heads, b.num_key_value_heads);
  EXPECT_EQ(a.head_dim, b.head_dim);
  EXPECT_EQ(a.vocab_size, b.vocab_size);
  EXPECT_EQ(a.tie_word_embeddings, b.tie_word_embeddings);
  EXPECT_FLOAT_EQ(float(a.rms_norm_eps), float(b.rms_norm_eps));  // GGUF stores it as f32
  EXPECT_EQ(a.rope_theta, b.rope_theta);
  EXPECT_EQ(a.rope_scaling.type, RopeScaling::Type::Llama3);
  EXPECT_EQ(a.rope_scaling.factor, b.rope_scaling.factor);
  EXPECT_EQ(a.rope_scaling.low_freq_factor, b.rope_scaling.low_freq_factor);
  EXPECT_EQ(a.rope_scaling.high_freq_factor, b.rope_scaling.high_freq_factor);
  EXPECT_EQ(a.rope_scaling.original_max_position_embeddings, b.rope_scaling.original_max_position_embeddings);
  EXPECT_EQ(gg.weights->names(), hf.weights->names());
  for (const std::string& name : hf.weights->names()) {
    Tensor want = hf.weights->get(name).to_f32();
    Tensor got = gg.weights->get(name);
    ASSERT_EQ(got.shape(), want.shape()) << name;
    expect_same_bits(got.data_as<float>(), want.data_as<float>(), want.numel(), name);
  }
  auto ref = SafetensorsFile::open(hf_dir + "/logits.safetensors");
  const Tensor tokens = ref->tensor("tokens"), want = ref->tensor("logits");
  LlamaModel model(std::move(gg));
  const Tensor logits = model.forward({tokens.data_as<int32_t>(), size_t(tokens.numel())});
  ASSERT_EQ(logits.shape(), want.shape());
  // The tolerance of tests/model/test_logit_parity.cpp on the same model: fp32 on both sides,
  // different summation orders (~5e-5 observed), while a wrong RoPE frequency moves logits by O(1).
  double max_err = 0;
  for (int64_t i = 0; i < want.numel(); ++i)
    max_err = std::max(max_err, double(std::fabs(logits.data_as<float>()[i] - want.data_as<float>()[i])));
  RecordProperty("max_abs_err", std::to_string(max_err));
  EXPECT_LT(max_err, 1e-3);
  std::filesystem::remove(p);
}

// ---- SmolLM2-135M-Instruct Q4_1 against transformers.

std::string smollm2_path() {
  if (const char* p = std::getenv("LOWBIT_SMOLLM2"); p && *p) return p;
  const char* cache = std::getenv("LOWBIT_MODELS_CACHE");
  const char* home = std::getenv("HOME");
  const std::string dir = cache && *cache ? cache : std::string(home ? home : "") + "/.cache/lowbit/models";
  return dir + "/SmolLM2-135M-Instruct.Q4_1.gguf";
}

#define REQUIRE_SMOLLM2(path)                                                                       \
  do {                                                                                              \
    if (!std::filesystem::exists(path))                                                             \
      GTEST_SKIP() << "SmolLM2 GGUF not available: " << (path)                                      \
                   << " (set LOWBIT_SMOLLM2 or run the model fetch script)";                        \
  } while (0)

// Rows [r0, r0+nr) and columns [0, nc) of a [rows, cols] fp32 tensor.
std::vector<float> slice(const Tensor& t, int64_t r0, int64_t nr, int64_t nc) {
  std::vector<float> out;
  const float* p = t.data_as<float>();
  for (int64_t r = r0; r < r0 + nr; ++r) out.insert(out.end(), p + r * t.dim(1), p + r * t.dim(1) + nc);
  return out;
}

TEST(GgufSmolLM2, ConfigAndWeightsMatchTransformers) {
  const std::string path = smollm2_path();
  REQUIRE_SMOLLM2(path);
  auto fx = SafetensorsFile::open(fixture("smollm2_q4_1.safetensors"));
  const json want = json::parse(fx->metadata().at("config"));
  Checkpoint ck = open_checkpoint(path);
  const LlamaConfig& c = ck.config;
  EXPECT_EQ(c.num_hidden_layers, want["num_hidden_layers"].get<int64_t>());
  EXPECT_EQ(c.hidden_size, want["hidden_size"].get<int64_t>());
  EXPECT_EQ(c.intermediate_size, want["intermediate_size"].get<int64_t>());
  EXPECT_EQ(c.num_attention_heads, want["num_attention_heads"].get<int64_t>());
  EXPECT_EQ(c.num_key_value_heads, want["num_key_value_heads"].get<int64_t>());
  EXPECT_EQ(c.vocab_size, want["vocab_size"].get<int64_t>());
  EXPECT_EQ(c.max_position_embeddings, want["max_position_embeddings"].get<int64_t>());
  EXPECT_FLOAT_EQ(float(c.rms_norm_eps), want["rms_norm_eps"].get<float>());
  EXPECT_EQ(c.rope_theta, want["rope_theta"].get<double>());
  EXPECT_EQ(c.rope_scaling.type, RopeScaling::Type::None);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_TRUE(want["lm_head_is_embeddings"].get<bool>());
  EXPECT_FALSE(ck.weights->has("lm_head.weight"));

  // The weights: transformers dequantizes with gguf-py and un-permutes q/k itself; lowbit's must
  // be the same floats exactly.
  auto same = [&](const std::vector<float>& got, const std::string& key) {
    Tensor w = fx->tensor(key);
    ASSERT_EQ(int64_t(got.size()), w.numel()) << key;
    expect_same_bits(got.data(), w.data_as<float>(), w.numel(), key);
  };
  same(slice(ck.weights->get("model.layers.0.self_attn.q_proj.weight"), 0, 64, 128), "q_proj.rows");
  same(slice(ck.weights->get("model.layers.0.self_attn.k_proj.weight"), 64, 64, 128), "k_proj.rows");
  same(slice(ck.weights->get("model.layers.0.self_attn.v_proj.weight"), 0, 8, c.hidden_size), "v_proj.rows");
  same(slice(ck.weights->get("model.layers.29.mlp.down_proj.weight"), 0, 4, c.intermediate_size), "down_proj.rows");
  Tensor ln = ck.weights->get("model.layers.0.input_layernorm.weight");
  same({ln.data_as<float>(), ln.data_as<float>() + ln.numel()}, "input_layernorm");
  Tensor norm = ck.weights->get("model.norm.weight");
  same({norm.data_as<float>(), norm.data_as<float>() + norm.numel()}, "norm");
  Tensor ids = fx->tensor("ids");
  Tensor emb = ck.weights->get("model.embed_tokens.weight");
  std::vector<float> rows;
  for (int64_t i = 0; i < ids.numel(); ++i) {
    const float* r = emb.data_as<float>() + int64_t(ids.data_as<int32_t>()[i]) * c.hidden_size;
    rows.insert(rows.end(), r, r + c.hidden_size);
  }
  same(rows, "embed.rows");
}

TEST(GgufSmolLM2, LogitsMatchTransformers) {
  const std::string path = smollm2_path();
  REQUIRE_SMOLLM2(path);
  auto fx = SafetensorsFile::open(fixture("smollm2_q4_1.safetensors"));
  LlamaModel model(open_checkpoint(path));
  Tensor ids = fx->tensor("ids");
  const int64_t T = ids.numel(), V = model.config().vocab_size;
  Tensor logits = model.forward({ids.data_as<int32_t>(), size_t(T)});
  ASSERT_EQ(logits.shape(), (std::vector<int64_t>{T, V}));
  Tensor head = fx->tensor("logits.head"), last = fx->tensor("logits.last");
  // Same fp32 weights on both sides; only the summation orders of the matmuls, norms and softmax
  // differ. Those differences are ~1e-5 at logits of magnitude ~20 (tests/model/
  // test_logit_parity.cpp measures ~5e-5 on larger models), so 1e-3 leaves a wide margin while
  // any real error (a wrong row permutation, RoPE base or norm) moves logits by O(1).
  double max_err = 0;
  const float* L = logits.data_as<float>();
  for (int64_t t = 0; t < T; ++t)
    for (int64_t v = 0; v < head.dim(1); ++v)
      max_err = std::max(max_err, double(std::fabs(L[t * V + v] - head.data_as<float>()[t * head.dim(1) + v])));
  for (int64_t v = 0; v < V; ++v)
    max_err = std::max(max_err, double(std::fabs(L[(T - 1) * V + v] - last.data_as<float>()[v])));
  RecordProperty("max_abs_err", std::to_string(max_err));
  EXPECT_LT(max_err, 1e-3);
}

}  // namespace
}  // namespace lowbit
