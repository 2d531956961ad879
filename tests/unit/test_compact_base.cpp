// The GPU training base's compact layout (train/compact_base.h) on the CPU: its scalar expansion
// gives LlamaModel::block_weights' fp32 weights bit for bit (the weights the CPU trains over) for
// QLoRA's NF4 + DQ base, IR-QLoRA's ICQ base, RTN int bases of 4 and 8 bits, an unquantized bf16
// base, and a block replaced in memory; the nibble packing is the checkpoint packer's
// (pack_codes); and the byte count of a built base is gpu_model_bytes()' formula.
#include "formats/checkpoint.h"
#include "formats/llama_config.h"
#include "model/llama_model.h"
#include "quant/lowbit_checkpoint.h"
#include "quant/method.h"
#include "quant/quantize.h"
#include "quant/quantized_in_memory.h"
#include "quant/quantized_linear.h"
#include "test_util.h"
#include "train/compact_base.h"
#include "train/lora.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cstring>
#include <memory>

namespace lowbit {
namespace {

using train::CompactKind;

// A random bf16 GQA model: rows and columns that are not multiples of 64 (flat blocks cross
// rows), q and o of 256 x 192, k and v of 64 x 192, gate/up/down 200 x 192.
std::string random_config(const test::TempDir& dir) {
  const nlohmann::json cfg = {{"architectures", {"LlamaForCausalLM"}},
                              {"model_type", "llama"},
                              {"hidden_act", "silu"},
                              {"hidden_size", 192},
                              {"intermediate_size", 200},
                              {"num_attention_heads", 8},
                              {"num_key_value_heads", 2},
                              {"head_dim", 32},
                              {"num_hidden_layers", 2},
                              {"vocab_size", 300},
                              {"max_position_embeddings", 256},
                              {"rms_norm_eps", 1e-5},
                              {"rope_theta", 10000.0},
                              {"tie_word_embeddings", true},
                              {"bos_token_id", 1},
                              {"eos_token_id", 2}};
  test::spit((dir.path / "config.json").string(), cfg.dump());
  return "random:" + dir.path.string();
}

std::unique_ptr<LlamaModel> quantized(const std::string& path, const std::string& spec) {
  Checkpoint source = open_checkpoint(path);
  LlamaModel work(source);
  auto method = make_method(spec);
  QuantizedModel qm = quantize_model(work, *method, nullptr, {});
  auto m = std::make_unique<LlamaModel>(quantized_checkpoint_in_memory(source, std::move(qm), {{"path", path}}));
  install_quantized_forward(*m);
  return m;
}

// Every linear's expansion against block_weights, bit for bit; returns the base.
train::CompactBase expect_exact(const LlamaModel& model, CompactKind kind) {
  const train::CompactBase base = train::make_compact_base(model);
  const LlamaConfig& c = model.config();
  EXPECT_EQ(base.layers.size(), size_t(c.num_hidden_layers));
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    auto w = model.block_weights(l);
    for (LinearKind k : kAllLinears) {
      const train::CompactLinear& cl = base.layers[size_t(l)][size_t(k)];
      EXPECT_EQ(cl.kind, kind) << l << " " << linear_name(k);
      const Tensor& want = (*w)[k];
      EXPECT_EQ(want.dtype(), DType::F32);
      std::vector<float> got(size_t(cl.numel()));
      train::expand_compact_linear(cl, got.data());
      EXPECT_EQ(int64_t(got.size()), want.numel());
      if (int64_t(got.size()) != want.numel() || want.dtype() != DType::F32) continue;
      EXPECT_EQ(std::memcmp(got.data(), want.data(), got.size() * 4), 0)
          << "layer " << l << " " << linear_name(k) << ": the expansion differs from block_weights";
    }
  }
  return base;
}

// The byte count of a base built from `model` is the formula's for its layout, in the fp32 mode
// and the bf16 mode (bf16 head, a bf16 scratch of one block's linears).
void expect_bytes(const train::CompactBase& base, const LlamaConfig& c, const train::CompactLayout& l) {
  for (train::ComputePrecision p : {train::ComputePrecision::Fp32, train::ComputePrecision::Bf16}) {
    SCOPED_TRACE(train::compute_precision_name(p));
    const train::GpuModelBytes got = base.bytes(c, p), want = train::gpu_model_bytes(c, l, p);
    EXPECT_EQ(got.linears, want.linears);
    EXPECT_EQ(got.norms, want.norms);
    EXPECT_EQ(got.head, want.head);
    EXPECT_EQ(got.scratch, want.scratch);
    EXPECT_EQ(got.resident, 0);
    EXPECT_EQ(got.total(), want.total());
  }
  // A resident bf16 base (base_residency.h): every block's seven linears in bf16, no compact
  // linears, no scratch; ignored in the fp32 mode.
  const train::GpuModelBytes r = base.bytes(c, train::ComputePrecision::Bf16, true),
                             rw = train::gpu_model_bytes(c, l, train::ComputePrecision::Bf16, true);
  EXPECT_EQ(r.linears, 0);
  EXPECT_EQ(r.scratch, 0);
  EXPECT_EQ(r.resident, 2 * c.num_hidden_layers * train::resident_block_elements(c));
  EXPECT_EQ(r.head, 2 * c.vocab_size * c.hidden_size);
  EXPECT_EQ(r.total(), rw.total());
  EXPECT_EQ(r.resident, rw.resident);
  EXPECT_EQ(base.bytes(c, train::ComputePrecision::Fp32, true).total(), base.bytes(c).total());
  EXPECT_EQ(train::gpu_model_bytes(c, l, train::ComputePrecision::Fp32, true).total(),
            train::gpu_model_bytes(c, l).total());
}

TEST(CompactBase, Nf4DoubleQuantIsExact) {
  test::TempDir dir;
  auto model = quantized(random_config(dir), "nf4:dq=1");
  const auto base = expect_exact(*model, CompactKind::Codebook);
  const train::CompactLinear& q = base.layers[0][size_t(LinearKind::Q)];
  EXPECT_EQ(q.code_bits, 4);
  EXPECT_EQ(q.round_to, DType::BF16) << "a bf16 model's NF4 weights are rounded to bf16";
  // Nibbles in element order are the checkpoint's LSB-first packing for even row lengths.
  const QuantizedLinear ql = dynamic_cast<const QuantizedWeightSource&>(*model->checkpoint().weights)
                                 .quantized(linear_weight_name(0, LinearKind::Q));
  EXPECT_EQ(q.codes, pack_codes(ql.codes, ql.rows, ql.cols, 4));
  train::CompactLayout l;
  l.kind = CompactKind::Codebook;
  expect_bytes(base, model->config(), l);
  // 4 bits and one fp32 scale per 64 weights: 4.5 bits a weight (and a 16-value codebook).
  EXPECT_EQ(q.bytes(), q.numel() / 2 + 4 * ((q.numel() + 63) / 64) + 64);
}

TEST(CompactBase, IcqIsExact) {
  test::TempDir dir;
  auto model = quantized(random_config(dir), "icq:tau_range=0.1,tau_n=100,dq=1");
  const auto base = expect_exact(*model, CompactKind::Codebook);
  EXPECT_FALSE(base.layers[1][size_t(LinearKind::Down)].tau.empty());
  train::CompactLayout l;
  l.kind = CompactKind::Codebook;
  l.tau = true;
  expect_bytes(base, model->config(), l);
}

TEST(CompactBase, IntCodesAreExact) {
  test::TempDir dir;
  const std::string path = random_config(dir);
  {
    auto model = quantized(path, "rtn:w=4,g=64");
    const auto base = expect_exact(*model, CompactKind::Int);
    train::CompactLayout l;
    l.kind = CompactKind::Int;
    l.flat_groups = false;
    expect_bytes(base, model->config(), l);
  }
  {
    auto model = quantized(path, "rtn:w=8,g=32");
    const auto base = expect_exact(*model, CompactKind::Int);
    EXPECT_EQ(base.layers[0][0].code_bits, 8);
    train::CompactLayout l;
    l.kind = CompactKind::Int;
    l.code_bits = l.bits = 8;
    l.group_size = 32;
    l.flat_groups = false;
    expect_bytes(base, model->config(), l);
  }
}

// A quantized checkpoint read back from disk (what `lowbit finetune --method lora:...` trains
// over): its linears come compact from the file's codes (3-bit codes in nibbles here).
TEST(CompactBase, CheckpointOnDiskIsExact) {
  test::TempDir dir;
  const std::string path = random_config(dir);
  Checkpoint source = open_checkpoint(path);
  LlamaModel work(source);
  auto method = make_method("rtn:w=3,g=32");
  QuantizedModel qm = quantize_model(work, *method, nullptr, {});
  const std::string out = (dir.path / "q").string();
  write_quantized_checkpoint(out, work, qm, nlohmann::json::object(), false);
  auto model = load_model(out);
  ASSERT_FALSE(model->checkpoint().quantization.is_null());
  const auto base = expect_exact(*model, CompactKind::Int);
  EXPECT_EQ(base.layers[1][size_t(LinearKind::K)].code_bits, 4);
  train::CompactLayout l;
  l.kind = CompactKind::Int;
  l.bits = 3;
  l.group_size = 32;
  l.flat_groups = false;
  expect_bytes(base, model->config(), l);
}

TEST(CompactBase, UnquantizedBf16StaysSixteenBit) {
  test::TempDir dir;
  LlamaModel model(open_checkpoint(random_config(dir)));
  const auto base = expect_exact(model, CompactKind::Half16);
  train::CompactLayout l;
  l.kind = CompactKind::Half16;
  expect_bytes(base, model.config(), l);
}

// A block whose weights were replaced in memory is read from block_weights (fp32), not from the
// checkpoint's codes.
TEST(CompactBase, ReplacedBlockIsReadAsF32) {
  test::TempDir dir;
  auto model = quantized(random_config(dir), "nf4:dq=1");
  auto w = std::make_shared<BlockWeights>(clone_block_weights(*model->block_weights(1)));
  (*w)[LinearKind::Up].mutable_data_as<float>()[5] += 1.0f;
  model->set_block_weights(1, w);
  const train::CompactBase base = train::make_compact_base(*model);
  EXPECT_EQ(base.layers[0][0].kind, CompactKind::Codebook);
  const train::CompactLinear& up = base.layers[1][size_t(LinearKind::Up)];
  ASSERT_EQ(up.kind, CompactKind::F32);
  EXPECT_EQ(up.f32[5], (*w)[LinearKind::Up].data_as<float>()[5]);
}

// The LLaMA-3-8B shapes (bench/configs/llama3-8b.json) with QLoRA's base: 4.5 bits a weight for
// the linears, the fp32 head, one fp32 scratch of the largest linear (14336 x 4096).
TEST(CompactBase, EightBillionShapes) {
  const LlamaConfig c = load_llama_config(std::string(LOWBIT_SOURCE_DIR) + "/bench/configs/llama3-8b.json");
  train::CompactLayout l;
  l.kind = CompactKind::Codebook;
  const train::GpuModelBytes b = train::gpu_model_bytes(c, l);
  int64_t weights = 0;
  for (LinearKind k : kAllLinears) weights += linear_out_features(c, k) * linear_in_features(c, k);
  weights *= c.num_hidden_layers;
  EXPECT_EQ(b.linears, weights / 2 + 4 * (weights / 64) + 7 * 64 * c.num_hidden_layers);
  EXPECT_EQ(b.head, 4 * c.vocab_size * c.hidden_size);
  EXPECT_EQ(b.scratch, 4 * c.intermediate_size * c.hidden_size);
  std::printf("LLaMA-3-8B QLoRA base on the GPU: linears %.2f GiB, head %.2f GiB, scratch %.2f GiB, total %.2f GiB\n",
              double(b.linears) / (1 << 30), double(b.head) / (1 << 30), double(b.scratch) / (1 << 30),
              double(b.total()) / (1 << 30));
  // The bf16 mode: the head in bf16, a bf16 scratch of one block's seven linears.
  const train::GpuModelBytes h = train::gpu_model_bytes(c, l, train::ComputePrecision::Bf16);
  EXPECT_EQ(h.linears, b.linears);
  EXPECT_EQ(h.head, 2 * c.vocab_size * c.hidden_size);
  EXPECT_EQ(h.scratch, 2 * weights / c.num_hidden_layers);
  std::printf("in the bf16 mode: head %.2f GiB, scratch %.2f GiB, total %.2f GiB\n", double(h.head) / (1 << 30),
              double(h.scratch) / (1 << 30), double(h.total()) / (1 << 30));
  // With a resident base: 2 bytes a weight (a block's 218,103,808 weights are a multiple of 128).
  const train::GpuModelBytes r = train::gpu_model_bytes(c, l, train::ComputePrecision::Bf16, true);
  EXPECT_EQ(train::resident_block_elements(c), weights / c.num_hidden_layers);
  EXPECT_EQ(r.resident, 2 * weights);
  EXPECT_EQ(r.linears + r.scratch, 0);
  EXPECT_EQ(r.total(), r.resident + h.head + h.norms);
  std::printf("with a resident bf16 base: base %.2f GiB, total %.2f GiB\n", double(r.resident) / (1 << 30),
              double(r.total()) / (1 << 30));
}

// A resident block rounds up to 128 elements (each block 256-byte aligned).
TEST(CompactBase, ResidentBlocksAreAligned) {
  const LlamaConfig c = load_llama_config(std::string(LOWBIT_SOURCE_DIR) + "/bench/configs/llama3-tiny.json");
  int64_t n = 0;
  for (LinearKind k : kAllLinears) n += linear_out_features(c, k) * linear_in_features(c, k);
  EXPECT_EQ(train::resident_block_elements(c) % 128, 0);
  EXPECT_GE(train::resident_block_elements(c), n);
  EXPECT_LT(train::resident_block_elements(c), n + 128);
}

// The step's buffers at LLaMA-3-8B's shapes, sequence 512, batch 1: the block checkpoints
// (32 x 512 x 4096 fp32, 256 MiB), the logits chunk (256 MiB at most), the [N, F] intermediates;
// the bf16 mode's operands add to them; more tokens, more bytes.
TEST(CompactBase, StepBytes) {
  const LlamaConfig c = load_llama_config(std::string(LOWBIT_SOURCE_DIR) + "/bench/configs/llama3-8b.json");
  const int64_t fp32 = train::gpu_step_bytes(c, 1, 512), bf16 = train::gpu_step_bytes(c, 1, 512, train::ComputePrecision::Bf16);
  const int64_t MiB = int64_t(1) << 20;
  EXPECT_GT(fp32, 256 * MiB + 6 * 4 * 512 * c.intermediate_size);
  EXPECT_LT(fp32, 2048 * MiB);
  EXPECT_GT(bf16, fp32);
  EXPECT_GT(train::gpu_step_bytes(c, 2, 512), fp32);
  std::printf("LLaMA-3-8B step buffers at 1 x 512 tokens: %.2f GiB (fp32), %.2f GiB (bf16)\n", double(fp32) / (1 << 30),
              double(bf16) / (1 << 30));
}

// The adapters' GPU bytes against the adapters lora.h builds: A, B, their gradients and the
// gradients' step sums (3 x the parameters; 5 with AdamW's moments held on the device), the
// forward's [N, r] product and two IEC gradient slots per adapted linear (and in the bf16 mode A
// and B in bf16).
TEST(CompactBase, AdapterBytesCountTheAdapters) {
  const LlamaConfig c = load_llama_config(std::string(LOWBIT_SOURCE_DIR) + "/bench/configs/llama3-tiny.json");
  train::LoraConfig cfg;
  cfg.r = 64;
  for (bool all : {true, false}) {
    if (!all) cfg.targets = {true, false, true, false, false, false, false};  // q_proj, v_proj
    const int64_t linears = all ? 7 : 2, tokens = 512;
    const int64_t params = train::LoraAdapters::zeros(c, cfg).num_parameters();
    EXPECT_EQ(train::gpu_adapter_bytes(c, cfg.r, cfg.targets, tokens),
              4 * (3 * params + c.num_hidden_layers * linears * (tokens * cfg.r + 2)));
    // Held on the device (AdamW's two moments) in the bf16 mode (A and B in bf16 besides).
    EXPECT_EQ(train::gpu_adapter_bytes(c, cfg.r, cfg.targets, tokens, train::ComputePrecision::Bf16, true),
              4 * (5 * params + c.num_hidden_layers * linears * (tokens * cfg.r + 2)) + 2 * params);
  }
}

}  // namespace
}  // namespace lowbit
