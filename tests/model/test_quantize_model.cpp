// Whole-model quantization on stories260K: the block-by-block driver, quantized checkpoints
// written and read back, and evaluation of the result.
#include "calib/calib_data.h"
#include "core/error.h"
#include "eval/perplexity.h"
#include "formats/safetensors.h"
#include "quant/quantize.h"
#include "test_util.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>

namespace lowbit {
namespace {

std::string stories() { return test::models_dir() + "/stories260K/stories260K.bin"; }

std::vector<std::vector<int32_t>> eval_windows_of(const Tokenizer& tok, const std::string& path, int64_t T, int64_t n) {
  std::vector<int32_t> ids = tok.encode(test::slurp(path), BosMode::Default);
  std::vector<std::vector<int32_t>> w;
  for (int64_t i = 0; i < n && (i + 1) * T <= int64_t(ids.size()); ++i) w.emplace_back(ids.begin() + i * T, ids.begin() + (i + 1) * T);
  return w;
}

struct QuantRun {
  QuantizedModel qm;
  int64_t linear_reports = 0;
};

QuantRun quantize(LlamaModel& model, const std::string& spec, const Calibration* calib) {
  auto method = make_method(spec);
  QuantRun r;
  DriverCallbacks cb;
  cb.on_linear = [&](int64_t, const LinearReport& rep) {
    ++r.linear_reports;
    EXPECT_GE(rep.weight_rel_err, 0.0);
    if (method->spec().method() == "gptq") {  // the methods that hold a Hessian report the output error
      EXPECT_GE(rep.output_rel_err, 0.0) << linear_name(rep.kind);
    }
  };
  r.qm = quantize_model(model, *method, calib, cb);
  return r;
}

// The writable block a quantization method edits is the caller's own: whether the block comes
// from the cache, from an fp32 checkpoint's tensors or from a conversion, rewriting it leaves what
// the model reads unchanged.
TEST(LlamaModel, WritableBlockWeightsAreTheCallersOwn) {
  for (const char* name : {"llama3-mini-f32", "llama3-mini-bf16"})
    for (const bool cache : {true, false}) {
      const std::string dir = test::fixtures_dir() + "/models/" + name;
      LOWBIT_REQUIRE_PATH(dir + "/config.json");
      LlamaModel model(open_checkpoint(dir));
      model.set_block_cache(cache);
      const BlockWeights before = clone_block_weights(*model.block_weights(1));
      BlockWeights w = model.writable_block_weights(1);
      std::vector<Tensor*> tensors{&w.input_norm, &w.post_norm};
      for (LinearKind k : kAllLinears) tensors.push_back(&w[k]);
      for (Tensor* t : tensors) {
        ASSERT_TRUE(t->writable()) << name;
        float* v = t->mutable_data_as<float>();
        for (int64_t i = 0; i < t->numel(); ++i) v[i] = -2.0f * v[i] + 1.0f;
      }
      const std::shared_ptr<const BlockWeights> after = model.block_weights(1);
      const auto same = [](const Tensor& a, const Tensor& b) {
        return a.nbytes() == b.nbytes() && std::memcmp(a.data(), b.data(), size_t(a.nbytes())) == 0;
      };
      EXPECT_TRUE(same(after->input_norm, before.input_norm)) << name << " cache " << cache;
      EXPECT_TRUE(same(after->post_norm, before.post_norm)) << name << " cache " << cache;
      for (LinearKind k : kAllLinears) EXPECT_TRUE(same((*after)[k], before[k])) << name << " " << linear_name(k);
    }
}

// Loading a block into the last block's tensors (`reuse`) gives the values a fresh load gives, in
// the reused memory; a tensor something else still holds, or of another shape, is not written.
TEST(LlamaModel, WritableBlockWeightsReuseOnlyTensorsNothingElseHolds) {
  for (const char* name : {"llama3-mini-f32", "llama3-mini-bf16"}) {
    const std::string dir = test::fixtures_dir() + "/models/" + name;
    LOWBIT_REQUIRE_PATH(dir + "/config.json");
    LlamaModel model(open_checkpoint(dir));
    model.set_block_cache(false);
    const BlockWeights fresh = model.writable_block_weights(1);
    BlockWeights spare = model.writable_block_weights(0);
    const Tensor held = spare[LinearKind::Down];  // shares its storage: not to be overwritten
    const std::vector<float> held_before(held.data_as<float>(), held.data_as<float>() + held.numel());
    spare[LinearKind::Up] = Tensor::empty(DType::F32, {3, 5});  // another shape: not reused
    const void* q_mem = spare[LinearKind::Q].data();
    const void* norm_mem = spare.input_norm.data();
    const BlockWeights w = model.writable_block_weights(1, std::move(spare));
    EXPECT_EQ(w[LinearKind::Q].data(), q_mem) << name;
    EXPECT_EQ(w.input_norm.data(), norm_mem) << name;
    EXPECT_NE(w[LinearKind::Down].data(), held.data()) << name;
    EXPECT_EQ(std::memcmp(held.data(), held_before.data(), held_before.size() * sizeof(float)), 0) << name;
    const auto same = [](const Tensor& a, const Tensor& b) {
      return a.shape() == b.shape() && a.dtype() == b.dtype() &&
             std::memcmp(a.data(), b.data(), size_t(a.nbytes())) == 0;
    };
    EXPECT_TRUE(same(w.input_norm, fresh.input_norm)) << name;
    EXPECT_TRUE(same(w.post_norm, fresh.post_norm)) << name;
    for (LinearKind k : kAllLinears) {
      EXPECT_TRUE(same(w[k], fresh[k])) << name << " " << linear_name(k);
      EXPECT_TRUE(w[k].writable() && w[k].sole_owner()) << name << " " << linear_name(k);
    }
  }
}

TEST(QuantizeModel, CheckpointRoundTripsAndEvaluatesLikeTheInMemoryModel) {
  LOWBIT_REQUIRE_PATH(stories());
  LOWBIT_REQUIRE_PATH(test::data_dir() + "/ptb/ptb.valid.txt");
  test::TempDir dir;
  for (const std::string spec : {"rtn:w=4,g=32", "nf4:dq=1", "gptq:w=3,g=32,act_order=1"}) {
    LlamaModel model(open_checkpoint(stories()));
    auto tok = load_tokenizer(model.checkpoint().tokenizer_path);
    const Calibration calib = make_calibration(resolve_calibration_set("ptb", test::data_dir()), *tok, 8, 128, 0,
                                               BosMode::Default);
    QuantRun run = quantize(model, spec, &calib);
    EXPECT_EQ(run.linear_reports, 7 * model.config().num_hidden_layers) << spec;
    const std::string out = dir / ("q-" + std::to_string(run.qm.blocks.size()) + spec.substr(0, 3));
    write_quantized_checkpoint(out, model, run.qm, nlohmann::json::object(), false);
    Checkpoint ck = open_model(out);
    ASSERT_FALSE(ck.quantization.is_null()) << spec;
    EXPECT_EQ(ck.quantization["method"]["spec"], spec);
    EXPECT_EQ(ck.quantization["calibration"].is_null(), !make_method(spec)->needs_calibration());
    // Every linear reads back as the method's dequantized weight; everything else as the source.
    for (int64_t i = 0; i < model.config().num_hidden_layers; ++i)
      for (LinearKind k : kAllLinears) {
        const Tensor got = ck.weights->get(linear_weight_name(i, k)).to_f32();
        const Tensor want = run.qm.blocks[size_t(i)].linear[size_t(k)]->dequantize_f32();
        ASSERT_EQ(got.numel(), want.numel());
        EXPECT_EQ(std::memcmp(got.data(), want.data(), size_t(got.nbytes())), 0) << spec << " layer " << i << " "
                                                                                  << linear_name(k);
      }
    const Tensor e0 = ck.weights->get("model.embed_tokens.weight");
    const Tensor e1 = model.checkpoint().weights->get("model.embed_tokens.weight");
    EXPECT_EQ(std::memcmp(e0.data(), e1.data(), size_t(e0.nbytes())), 0);
    // The loaded checkpoint evaluates exactly like the model the driver left in memory (whose
    // blocks are gone; rebuild them from the results).
    LlamaModel loaded(std::move(ck));
    LlamaModel mem(open_checkpoint(stories()));
    for (int64_t i = 0; i < mem.config().num_hidden_layers; ++i) {
      auto w = std::make_shared<BlockWeights>(clone_block_weights(*mem.block_weights(i)));
      for (LinearKind k : kAllLinears) (*w)[k] = run.qm.blocks[size_t(i)].linear[size_t(k)]->dequantize_f32();
      mem.set_block_weights(i, w);
    }
    const auto windows = eval_windows_of(*tok, test::data_dir() + "/ptb/ptb.valid.txt", 256, 4);
    const PerplexityResult a = perplexity(loaded, windows), b = perplexity(mem, windows);
    EXPECT_EQ(a.ppl, b.ppl) << spec;
    LlamaModel base(open_checkpoint(stories()));
    const PerplexityResult c = perplexity(base, windows);
    std::printf("%-28s ppl %.4f (16-bit %.4f)\n", spec.c_str(), a.ppl, c.ppl);
    EXPECT_TRUE(std::isfinite(a.ppl));
    EXPECT_NE(a.ppl, c.ppl) << spec;
  }
}

// A weight-activation checkpoint quantizes activations whenever it is evaluated.
TEST(QuantizeModel, SmoothQuantCheckpointQuantizesActivations) {
  LOWBIT_REQUIRE_PATH(stories());
  LOWBIT_REQUIRE_PATH(test::data_dir() + "/ptb/ptb.valid.txt");
  test::TempDir dir;
  LlamaModel model(open_checkpoint(stories()));
  auto tok = load_tokenizer(model.checkpoint().tokenizer_path);
  const Calibration calib = make_calibration(resolve_calibration_set("ptb", test::data_dir()), *tok, 8, 128, 0,
                                             BosMode::Default);
  for (const std::string act : {"per_token", "per_tensor_static"}) {
    LlamaModel m(open_checkpoint(stories()));
    QuantRun run = quantize(m, "smoothquant:w=8,a=4,act=" + act, &calib);
    const std::string out = dir / ("sq-" + act);
    write_quantized_checkpoint(out, m, run.qm, nlohmann::json::object(), false);
    auto loaded = load_model(out);
    ASSERT_NE(loaded->forward_hooks(), nullptr) << act;
    EXPECT_EQ(loaded->checkpoint().quantization["activation"]["bits"], 4);
    const auto windows = eval_windows_of(*tok, test::data_dir() + "/ptb/ptb.valid.txt", 256, 2);
    const double with_act = perplexity(*loaded, windows).ppl;
    loaded->set_forward_hooks(nullptr);
    const double weights_only = perplexity(*loaded, windows).ppl;
    std::printf("smoothquant w8a4 %s: ppl %.3f (weights alone %.3f)\n", act.c_str(), with_act, weights_only);
    EXPECT_GT(with_act, weights_only) << act;
  }
}

TEST(QuantizeModel, ExistingOutputIsAnErrorAndNothingPartialIsLeft) {
  LOWBIT_REQUIRE_PATH(stories());
  test::TempDir dir;
  LlamaModel model(open_checkpoint(stories()));
  QuantRun run = quantize(model, "rtn:w=8,g=-1", nullptr);
  const std::string out = dir / "q";
  std::filesystem::create_directories(out);
  EXPECT_THROW(write_quantized_checkpoint(out, model, run.qm, nlohmann::json::object(), false), Error);
  write_quantized_checkpoint(out, model, run.qm, nlohmann::json::object(), true);
  for (const auto& e : std::filesystem::directory_iterator(dir.path))
    EXPECT_EQ(e.path().filename().string().find(".partial"), std::string::npos) << e.path();
  EXPECT_FALSE(open_model(out).quantization.is_null());
}

TEST(QuantizeModel, CalibratedMethodWithoutDataIsAnError) {
  LOWBIT_REQUIRE_PATH(stories());
  LlamaModel model(open_checkpoint(stories()));
  auto m = make_method("gptq:w=4");
  EXPECT_THROW(quantize_model(model, *m, nullptr, {}), Error);
}

TEST(Calibration, MissingWikitextTrainIsAClearError) {
  test::TempDir dir;
  try {
    resolve_calibration_set("wikitext2", dir.path.string());
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("wikitext2/wiki.train.raw"), std::string::npos) << e.what();
  }
  EXPECT_THROW(resolve_calibration_set("c4", dir.path.string()), Error);
  EXPECT_THROW(resolve_calibration_set("no-such-set", dir.path.string()), Error);
}

// Calibration windows are GPTQ's: randint(0, n - seqlen - 1) starts from random.seed(seed).
TEST(Calibration, WindowsFollowPythonRandom) {
  LOWBIT_REQUIRE_PATH(stories());
  LOWBIT_REQUIRE_PATH(test::data_dir() + "/ptb/ptb.train.txt");
  auto tok = load_tokenizer(test::models_dir() + "/stories260K/tok512.bin");
  const CalibrationSet set = resolve_calibration_set("ptb", test::data_dir());
  const Calibration a = make_calibration(set, *tok, 4, 64, 0, BosMode::Default);
  const Calibration b = make_calibration(set, *tok, 4, 64, 0, BosMode::Default);
  const Calibration c = make_calibration(set, *tok, 4, 64, 1, BosMode::Default);
  EXPECT_EQ(a.windows, b.windows);
  EXPECT_NE(a.windows, c.windows);
  EXPECT_EQ(a.identity()["nsamples"], 4);
  EXPECT_EQ(a.identity()["seed"], 0);
}

}  // namespace
}  // namespace lowbit
