// The whole-model backward against transformers' autograd, and LoRA against PEFT, on the tiny
// random LLaMA-3-style model of tests/fixtures/train (GQA, llama3 RoPE scaling past its original
// context, untied LM head), one batch of two 70-token sequences with prompt and padding tokens
// excluded from the loss. Fixtures: scripts/make_train_fixtures.py.
#include "formats/checkpoint.h"
#include "quant/method.h"
#include "quant/quantize.h"
#include "quant/quantized_in_memory.h"
#include "formats/safetensors.h"
#include "test_util.h"
#include "train_fixture.h"
#include "core/error.h"
#include "train/adapter_io.h"
#include "train/llama_backward.h"
#include "train/trainer.h"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <cstdio>
#include <limits>

namespace lowbit {
namespace {

using test::fixture_batch;
using test::float_vector;
std::string dir() { return test::train_fixtures_dir(); }
std::vector<float> vec(const SafetensorsFile& f, const std::string& name) { return float_vector(f, name); }

double g_worst = 0;  // the largest error seen by rel_err, reported by each test

// max |a - b| / max |b|: the relative error of a whole gradient tensor (which must not be zero).
double rel_err(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double m = 0, s = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    m = std::max(m, double(std::fabs(a[i] - b[i])));
    s = std::max(s, double(std::fabs(b[i])));
  }
  EXPECT_GT(s, 0) << "a zero reference gradient checks nothing";
  g_worst = std::max(g_worst, m / s);
  return m / s;
}

// Prints the worst relative error of the test (for the record; the assertions are above).
struct ReportWorst {
  ReportWorst() { g_worst = 0; }
  ~ReportWorst() {
    ::testing::Test::RecordProperty("max_rel_err", std::to_string(g_worst));
    std::printf("max relative error against the reference: %.3g\n", g_worst);
  }
};

// fp32 on both sides with different summation orders through two blocks; the observed relative
// errors are ~1e-6. The issue's bar for whole-model gradients is 1e-4.
constexpr double kTol = 1e-4;

TEST(TrainParity, WholeModelGradientsMatchTransformers) {
  ReportWorst report;
  auto ref = SafetensorsFile::open(dir() + "/tiny_grads.safetensors");
  LlamaModel model(open_checkpoint(dir() + "/tiny-llama3"));
  const train::Batch batch = fixture_batch(*ref);
  train::BaseGrads g = train::BaseGrads::zeros(model.config());
  const train::StepResult r = train::forward_backward(model, nullptr, batch, {}, nullptr, &g);
  EXPECT_NEAR(r.mean_loss(), vec(*ref, "loss")[0], 1e-4 * vec(*ref, "loss")[0]);
  EXPECT_EQ(r.num_targets, batch.num_targets());
  EXPECT_LT(rel_err(g.embed, vec(*ref, "grad.model.embed_tokens.weight")), kTol);
  EXPECT_LT(rel_err(g.lm_head, vec(*ref, "grad.lm_head.weight")), kTol);
  EXPECT_LT(rel_err(g.final_norm, vec(*ref, "grad.model.norm.weight")), kTol);
  for (int64_t l = 0; l < model.config().num_hidden_layers; ++l) {
    const std::string p = "grad.model.layers." + std::to_string(l) + ".";
    const auto& b = g.blocks[size_t(l)];
    EXPECT_LT(rel_err(b.input_norm, vec(*ref, p + "input_layernorm.weight")), kTol) << l;
    EXPECT_LT(rel_err(b.post_norm, vec(*ref, p + "post_attention_layernorm.weight")), kTol) << l;
    for (LinearKind k : kAllLinears) {
      const std::string name = "grad." + linear_weight_name(l, k);
      EXPECT_LT(rel_err(b.linear[size_t(k)], vec(*ref, name)), kTol) << name;
    }
  }
  // The loss alone agrees with the forward_backward's.
  EXPECT_DOUBLE_EQ(train::forward_loss(model, nullptr, batch).loss_sum, r.loss_sum);
}

class LoraParity : public ::testing::TestWithParam<std::string> {};

TEST_P(LoraParity, LossAndAdapterGradientsMatchPeft) {
  const std::string c = GetParam();
  ReportWorst report;
  auto ref = SafetensorsFile::open(dir() + "/tiny_lora.safetensors");
  auto batch_f = SafetensorsFile::open(dir() + "/tiny_grads.safetensors");
  LlamaModel model(open_checkpoint(dir() + "/tiny-llama3"));
  train::LoraConfig cfg;
  if (c == "all") {
    cfg.r = 4;
    cfg.alpha = 8;
  } else {
    cfg.r = 2;
    cfg.alpha = 4;
    cfg.targets = {true, false, true, false, false, false, false};
  }
  train::LoraAdapters lora = train::LoraAdapters::zeros(model.config(), cfg);
  int loaded = 0;
  lora.for_each([&](const std::string& key, std::vector<float>& v) {
    v = vec(*ref, c + "." + key);
    ++loaded;
  });
  EXPECT_EQ(loaded, 2 * model.config().num_hidden_layers * (c == "all" ? 7 : 2));
  train::LoraAdapters grads = lora.zeros_like();
  const train::Batch batch = fixture_batch(*batch_f);
  const train::StepResult r = train::forward_backward(model, &lora, batch, {}, &grads, nullptr);
  const double want = vec(*ref, c + ".loss")[0];
  EXPECT_NEAR(r.mean_loss(), want, 1e-5 * want);
  grads.for_each([&](const std::string& key, const std::vector<float>& v) {
    EXPECT_LT(rel_err(v, vec(*ref, c + ".grad." + key)), kTol) << key;
  });
}

INSTANTIATE_TEST_SUITE_P(Fixtures, LoraParity, ::testing::Values("all", "qv"));

TEST(Lora, PeftInitIsKaimingUniformAndZeroB) {
  LlamaModel model(open_checkpoint(dir() + "/tiny-llama3"));
  train::LoraConfig cfg;
  cfg.r = 8;
  const auto a = train::LoraAdapters::peft_init(model.config(), cfg, 7);
  // torch.nn.init.kaiming_uniform_(a=sqrt(5)) on A [r, in] is U(-1/sqrt(in), 1/sqrt(in)): all
  // values inside the bound, their variance bound^2 / 3, B all zero.
  a.for_each([&](const std::string& key, const std::vector<float>& v) {
    if (key.find("lora_B") != std::string::npos) {
      for (float x : v) ASSERT_EQ(x, 0.0f) << key;
      return;
    }
    const bool down = key.find("down_proj") != std::string::npos;
    const double bound = 1.0 / std::sqrt(double(down ? model.config().intermediate_size : model.config().hidden_size));
    double ss = 0;
    for (float x : v) {
      ASSERT_LE(std::fabs(x), bound) << key;
      ss += double(x) * x;
    }
    EXPECT_NEAR(ss / double(v.size()), bound * bound / 3, 0.15 * bound * bound / 3) << key;
  });
  // A zero B leaves the model's loss unchanged.
  auto batch_f = SafetensorsFile::open(dir() + "/tiny_grads.safetensors");
  const train::Batch batch = fixture_batch(*batch_f);
  EXPECT_NEAR(train::forward_loss(model, &a, batch).loss_sum, train::forward_loss(model, nullptr, batch).loss_sum,
              1e-9);
}

// Eight optimizer steps against torch's AdamW + transformers' warmup schedule + clip_grad_norm_
// + PEFT, from the same initial adapters on the same batches (tiny_train.safetensors).
TEST(TrainParity, EightStepsMatchTorchAdamW) {
  auto ref = SafetensorsFile::open(dir() + "/tiny_train.safetensors");
  LlamaModel model(open_checkpoint(dir() + "/tiny-llama3"));
  train::LoraConfig cfg;
  cfg.r = 4;
  cfg.alpha = 8;
  train::LoraAdapters init = train::LoraAdapters::zeros(model.config(), cfg);
  init.for_each([&](const std::string& key, std::vector<float>& v) { v = vec(*ref, "train.init." + key); });
  train::TrainOptions opt;
  opt.adamw.lr = 1e-2;
  opt.adamw.weight_decay = 0.01;
  opt.warmup_ratio = 0.2;
  opt.max_grad_norm = 0.3;
  opt.total_steps = 8;
  train::LoraTrainer trainer(model, std::move(init), opt);
  const Tensor loss = ref->tensor("train.loss"), norm = ref->tensor("train.grad_norm"), lr = ref->tensor("train.lr");
  double worst_loss = 0;
  for (int64_t s = 0; s < loss.dim(0); ++s) {
    const std::vector<train::Batch> mbs = test::fixture_step_batches(*ref, s);
    const train::StepStats st = trainer.step(mbs);
    const double want = loss.data_as<double>()[s];
    worst_loss = std::max(worst_loss, std::fabs(st.loss - want) / want);
    // The issue's bar for a loss curve is 1e-3; fp32 differences observed are ~1e-7.
    EXPECT_NEAR(st.loss, want, 1e-5 * want) << "step " << s;
    EXPECT_NEAR(st.grad_norm, norm.data_as<double>()[s], 1e-4 * norm.data_as<double>()[s]) << "step " << s;
    EXPECT_DOUBLE_EQ(st.lr, lr.data_as<double>()[s]) << "step " << s;
  }
  std::printf("max relative loss error over %lld steps: %.3g\n", (long long)loss.dim(0), worst_loss);
  ReportWorst report;
  trainer.adapters().for_each([&](const std::string& key, const std::vector<float>& v) {
    // Adam normalizes each update, so fp32 noise in a small gradient moves a weight by up to
    // ~lr; 1e-3 of the tensor's largest value is well above that after eight steps at lr 1e-2.
    EXPECT_LT(rel_err(v, vec(*ref, "train.final." + key)), 1e-3) << key;
  });
}

// QLoRA's frozen base: lowbit's nf4:dq=1 against bitsandbytes' own quantize_4bit with double
// quantization on every linear of the tiny model, then LoRA over lowbit's base against PEFT over
// bitsandbytes' base.
//
// The two bases are not bit for bit equal on bitsandbytes 0.50.2's CPU path (what this fixture
// ran): its absmax offset is an fp32 mean (lowbit's: fp64, rounded), and in a few blocks its 8-bit
// absmax code differs from lowbit's by one step of the dynamic map, so those blocks' weights
// differ by ~1% of their absmax (observed: 61,568 of 92,160 weights bit for bit, the others at
// most 1.4e-3 apart on weights of magnitude ~0.3). The NF4 codes agree. The test bounds the
// weight difference by 2e-3 and the adapters' gradients, which see that difference through the
// whole model, by 3e-3 relative (observed 1.1e-3).
TEST(TrainParity, QloraBaseMatchesBitsandbytesAndPeft) {
  auto ref = SafetensorsFile::open(dir() + "/tiny_qlora.safetensors");
  auto batch_f = SafetensorsFile::open(dir() + "/tiny_grads.safetensors");
  Checkpoint source = open_checkpoint(dir() + "/tiny-llama3");
  LlamaModel work(source);
  auto method = make_method("nf4:dq=1");
  QuantizedModel qm = quantize_model(work, *method, nullptr, {});
  LlamaModel model(quantized_checkpoint_in_memory(source, std::move(qm), {{"path", "tiny-llama3"}}));
  int64_t total = 0, exact = 0;
  double worst = 0;
  for (int64_t l = 0; l < model.config().num_hidden_layers; ++l) {
    auto w = model.block_weights(l);
    for (LinearKind k : kAllLinears) {
      const auto want = vec(*ref, "bnb." + linear_weight_name(l, k));
      const float* got = (*w)[k].data_as<float>();
      ASSERT_EQ((*w)[k].numel(), int64_t(want.size()));
      for (size_t i = 0; i < want.size(); ++i) {
        exact += got[i] == want[i];
        worst = std::max(worst, double(std::fabs(got[i] - want[i])));
      }
      total += int64_t(want.size());
    }
  }
  std::printf("NF4 + double quantization: %lld of %lld dequantized weights equal bitsandbytes' bit for bit "
              "(max |difference| %.3g)\n", (long long)exact, (long long)total, worst);
  EXPECT_LT(worst, 2e-3);
  ReportWorst report;
  train::LoraConfig cfg;
  cfg.r = 4;
  cfg.alpha = 8;
  train::LoraAdapters lora = train::LoraAdapters::zeros(model.config(), cfg);
  lora.for_each([&](const std::string& key, std::vector<float>& v) { v = vec(*ref, "qlora." + key); });
  train::LoraAdapters grads = lora.zeros_like();
  const train::Batch batch = fixture_batch(*batch_f);
  const double loss = train::forward_backward(model, &lora, batch, {}, &grads, nullptr).mean_loss();
  const double want = vec(*ref, "qlora.loss")[0];
  EXPECT_NEAR(loss, want, 1e-4 * want);
  std::printf("QLoRA loss %.7f, PEFT over bitsandbytes' base %.7f\n", loss, want);
  grads.for_each([&](const std::string& key, const std::vector<float>& v) {
    EXPECT_LT(rel_err(v, vec(*ref, "qlora.grad." + key)), 3e-3) << key;
  });
}

// LoRA dropout has no autograd reference (torch's masks are not reproducible here); its gradient
// is checked by central differences of the same loss with the same masks (forward_backward with
// no gradient buffers draws them from the same seed).
TEST(TrainParity, LoraDropoutGradientsMatchFiniteDifferences) {
  auto batch_f = SafetensorsFile::open(dir() + "/tiny_grads.safetensors");
  LlamaModel model(open_checkpoint(dir() + "/tiny-llama3"));
  train::LoraConfig cfg;
  cfg.r = 2;
  cfg.alpha = 4;
  cfg.dropout = 0.3;
  train::LoraAdapters lora = train::LoraAdapters::peft_init(model.config(), cfg, 11);
  uint32_t st = 1;
  lora.for_each([&](const std::string& key, std::vector<float>& v) {
    if (key.find("lora_B") == std::string::npos) return;
    for (float& x : v) x = 0.05f * (float((st = st * 1664525u + 1013904223u) >> 8) / float(1 << 24) - 0.5f);
  });
  const train::Batch batch = fixture_batch(*batch_f);
  train::StepOptions so;
  so.dropout_seed = 99;
  train::LoraAdapters g = lora.zeros_like();
  train::forward_backward(model, &lora, batch, so, &g, nullptr);
  auto loss = [&] { return train::forward_backward(model, &lora, batch, so, nullptr, nullptr).mean_loss(); };
  // Dropout changes the loss (the masks are on).
  EXPECT_GT(std::fabs(loss() - train::forward_loss(model, &lora, batch).mean_loss()), 1e-6);
  double worst = 0;
  int checked = 0;
  for (auto [layer, kind] : std::vector<std::pair<int, LinearKind>>{{0, LinearKind::Q}, {1, LinearKind::Down},
                                                                    {0, LinearKind::Gate}}) {
    train::LoraLinear& p = lora.layers[size_t(layer)][size_t(kind)];
    const train::LoraLinear& gp = g.layers[size_t(layer)][size_t(kind)];
    for (auto* pair : {&p.a, &p.b}) {
      const std::vector<float>& gv = pair == &p.a ? gp.a : gp.b;
      for (size_t i = 0; i < pair->size(); i += pair->size() / 5) {
        const float keep = (*pair)[i];
        const double h = 1e-2;
        (*pair)[i] = float(keep + h);
        const double lp = loss();
        (*pair)[i] = float(keep - h);
        const double lm = loss();
        (*pair)[i] = keep;
        const double fd = (lp - lm) / (2 * h);
        // fp32 losses of ~10 differ by ~1e-6 between evaluations: ~1e-4 in a quotient at h = 1e-2.
        worst = std::max(worst, std::fabs(fd - gv[i]) / std::max(1e-2, std::fabs(double(gv[i]))));
        ++checked;
      }
    }
  }
  EXPECT_GT(checked, 20);
  EXPECT_LT(worst, 2e-2);
  std::printf("LoRA dropout: worst relative finite-difference error %.3g over %d entries\n", worst, checked);
}

// A non-finite loss stops the step with a message, and the adapters stay those of the last step.
TEST(TrainParity, NonFiniteLossStopsWithoutUpdating) {
  auto batch_f = SafetensorsFile::open(dir() + "/tiny_grads.safetensors");
  LlamaModel model(open_checkpoint(dir() + "/tiny-llama3"));
  train::LoraConfig cfg;
  cfg.r = 2;
  train::LoraAdapters lora = train::LoraAdapters::peft_init(model.config(), cfg, 1);
  lora.layers[1][size_t(LinearKind::V)].b[0] = std::numeric_limits<float>::infinity();
  const train::LoraAdapters before = lora;
  train::TrainOptions opt;
  opt.total_steps = 4;
  train::LoraTrainer trainer(model, std::move(lora), opt);
  const std::vector<train::Batch> micro{fixture_batch(*batch_f)};
  try {
    trainer.step(micro);
    ADD_FAILURE() << "no error on a non-finite loss";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("training step 1: the loss is"), std::string::npos) << e.what();
  }
  EXPECT_EQ(trainer.steps_done(), 0);
  EXPECT_EQ(trainer.adapters().layers[0][0].a, before.layers[0][0].a);
}

// An adapter written by PEFT's save_pretrained, read by lowbit: merged logits and the unmerged
// loss equal PEFT's on the same model.
TEST(PeftAdapter, ReadsPeftFilesMergedAndUnmerged) {
  auto ref = SafetensorsFile::open(dir() + "/tiny_peft.safetensors");
  auto batch_f = SafetensorsFile::open(dir() + "/tiny_grads.safetensors");
  LlamaModel model(open_checkpoint(dir() + "/tiny-llama3"));
  const train::LoraAdapters a = train::load_peft_adapter(dir() + "/peft-adapter", model.config());
  EXPECT_EQ(a.config.r, 3);
  EXPECT_DOUBLE_EQ(a.config.alpha, 6);
  EXPECT_EQ(a.config.targets, (std::array<bool, 7>{true, false, true, false, false, false, true}));
  const train::Batch batch = fixture_batch(*batch_f);
  const double want_loss = vec(*ref, "loss")[0];
  EXPECT_NEAR(train::forward_loss(model, &a, batch).mean_loss(), want_loss, 1e-5 * want_loss);
  train::merge_adapters(model, a);
  const double worst = test::max_first_sequence_logit_difference(model, batch, vec(*ref, "logits"));
  // fp32 logits of magnitude ~10 (see test_logit_parity: ~5e-5 observed there).
  EXPECT_LT(worst, 1e-3);
  std::printf("max |logit difference| merged: %.3g\n", worst);
  EXPECT_NEAR(train::forward_loss(model, nullptr, batch).mean_loss(), want_loss, 1e-5 * want_loss);
}

TEST(PeftAdapter, WriteReadRoundTripAndRefusals) {
  LlamaModel model(open_checkpoint(dir() + "/tiny-llama3"));
  train::LoraConfig cfg;
  cfg.r = 5;
  cfg.alpha = 10;
  cfg.targets = {false, true, false, true, true, false, false};
  train::LoraAdapters a = train::LoraAdapters::peft_init(model.config(), cfg, 3);
  float x = 0.01f;
  a.for_each([&](const std::string&, std::vector<float>& v) {
    for (float& f : v) f += (x += 0.001f);
  });
  test::TempDir tmp;
  train::save_peft_adapter(tmp / "ad", a, "tiny-llama3");
  const train::LoraAdapters b = train::load_peft_adapter(tmp / "ad", model.config());
  EXPECT_EQ(b.config.r, 5);
  EXPECT_EQ(b.config.targets, cfg.targets);
  int n = 0;
  b.for_each([&](const std::string& key, const std::vector<float>& v) {
    a.for_each([&](const std::string& k2, const std::vector<float>& w) {
      if (k2 == key) {
        EXPECT_EQ(v, w) << key;
        ++n;
      }
    });
  });
  EXPECT_EQ(n, 2 * 2 * 3);
  // Another base model (hidden 128, not 64): refused, naming the tensor and both shapes.
  LlamaModel other(open_checkpoint(test::fixtures_dir() + "/models/llama3-mini-f32"));
  try {
    train::load_peft_adapter(tmp / "ad", other.config());
    ADD_FAILURE() << "adapter accepted on another base";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("k_proj.lora_A.weight"), std::string::npos) << e.what();
  }
  // A tensor the config does not name: refused.
  train::LoraConfig cfg2 = cfg;
  cfg2.targets[size_t(LinearKind::K)] = false;
  train::save_peft_adapter(tmp / "ad2", train::LoraAdapters::zeros(model.config(), cfg2), "x");
  std::filesystem::copy_file(tmp / "ad/adapter_model.safetensors", tmp / "ad2/adapter_model.safetensors",
                             std::filesystem::copy_options::overwrite_existing);
  EXPECT_THROW(train::load_peft_adapter(tmp / "ad2", model.config()), Error);
  EXPECT_THROW(train::load_peft_adapter(tmp / "none", model.config()), Error);
  // lowbit_adapter.json names the base: another base's weights are refused.
  test::spit(tmp / "ad/lowbit_adapter.json", R"({"base": {"hidden_size": 64, "weights_sha256": "abc"}})");
  EXPECT_THROW(train::check_adapter_base(tmp / "ad", model, "def"), Error);
  EXPECT_NO_THROW(train::check_adapter_base(tmp / "ad", model, "abc"));
}

}  // namespace
}  // namespace lowbit
