// IR-QLoRA's training path (LoRA + the Information Elastic Connection's two scalars per linear)
// against PyTorch + PEFT with the official IRQLoraLinear4bit forward on the tiny random LLaMA of
// tests/fixtures/train: gradients of A, B, a_s and b_s of every linear, three AdamW steps, an
// adapter written by PEFT's save_pretrained evaluated merged and unmerged, checkpoints and
// refusals. Fixtures: scripts/make_irqlora_train_fixtures.py.
#include "core/error.h"
#include "formats/checkpoint.h"
#include "formats/safetensors.h"
#include "test_util.h"
#include "train_fixture.h"
#include "train/adapter_io.h"
#include "train/llama_backward.h"
#include "train/train_checkpoint.h"
#include "train/trainer.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>

namespace lowbit {
namespace {

using test::fixture_batch;
using test::float_vector;
std::string dir() { return test::train_fixtures_dir(); }
std::vector<float> vec(const SafetensorsFile& f, const std::string& name) { return float_vector(f, name); }

// max |a - b| / max |b| over a tensor (a scalar: its relative error).
double rel_err(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double m = 0, s = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    m = std::max(m, double(std::fabs(a[i] - b[i])));
    s = std::max(s, double(std::fabs(b[i])));
  }
  EXPECT_GT(s, 0) << "a zero reference checks nothing";
  return m / s;
}

train::LoraConfig irqlora_config() {
  train::LoraConfig cfg;
  cfg.r = 4;
  cfg.alpha = 8;
  cfg.iec = true;
  return cfg;
}

// Loads the fixture's tensors "<prefix><key>" into adapters of the fixture's config; returns how
// many tensors were read.
int load_into(train::LoraAdapters& a, const SafetensorsFile& f, const std::string& prefix) {
  int n = 0;
  a.for_each([&](const std::string& key, std::vector<float>& v) {
    v = vec(f, prefix + key);
    ++n;
  });
  return n;
}

TEST(IrqloraParity, LossAndGradientsOfAllFourParametersMatchPeftWithIec) {
  auto ref = SafetensorsFile::open(dir() + "/tiny_irqlora.safetensors");
  auto batch_f = SafetensorsFile::open(dir() + "/tiny_grads.safetensors");
  LlamaModel model(open_checkpoint(dir() + "/tiny-llama3"));
  train::LoraAdapters lora = train::LoraAdapters::zeros(model.config(), irqlora_config());
  EXPECT_EQ(load_into(lora, *ref, "grad."), 4 * 7 * model.config().num_hidden_layers);
  train::LoraAdapters grads = lora.zeros_like();
  const train::Batch batch = fixture_batch(*batch_f);
  const train::StepResult r = train::forward_backward(model, &lora, batch, {}, &grads, nullptr);
  const double want = vec(*ref, "grad.loss")[0];
  EXPECT_NEAR(r.mean_loss(), want, 1e-5 * want);
  double worst = 0;
  int scalars = 0;
  grads.for_each([&](const std::string& key, const std::vector<float>& v) {
    const double e = rel_err(v, vec(*ref, "grad.grad." + key));
    worst = std::max(worst, e);
    scalars += v.size() == 1;
    // fp32 on both sides, different summation orders through two blocks (observed ~1e-6; the
    // whole-model bar of the LoRA tests is 1e-4).
    EXPECT_LT(e, 1e-4) << key;
  });
  EXPECT_EQ(scalars, 2 * 7 * model.config().num_hidden_layers);
  std::printf("max relative gradient error (A, B, a_s, b_s): %.3g\n", worst);
  // The loss alone (forward only) agrees.
  EXPECT_NEAR(train::forward_loss(model, &lora, batch).mean_loss(), r.mean_loss(), 1e-12 * want);
}

// Three optimizer steps from IR-QLoRA's init (B = 0, a_s = b_s = 0) against torch's AdamW with
// the warmup schedule, clipping and two accumulated micro-batches (tiny_irqlora.safetensors).
TEST(IrqloraParity, ThreeStepsMatchTorchAdamW) {
  auto ref = SafetensorsFile::open(dir() + "/tiny_irqlora.safetensors");
  LlamaModel model(open_checkpoint(dir() + "/tiny-llama3"));
  train::LoraAdapters init = train::LoraAdapters::zeros(model.config(), irqlora_config());
  load_into(init, *ref, "train.init.");
  init.for_each([&](const std::string& key, const std::vector<float>& v) {
    if (key.ends_with("_scale")) {
      EXPECT_EQ(v, std::vector<float>{0.0f}) << key;  // IR-QLoRA's init
    }
  });
  train::TrainOptions opt;
  opt.adamw.lr = 1e-2;
  opt.adamw.weight_decay = 0.01;
  opt.warmup_ratio = 0.34;
  opt.max_grad_norm = 0.3;
  const Tensor loss = ref->tensor("train.loss"), norm = ref->tensor("train.grad_norm"), lr = ref->tensor("train.lr");
  opt.total_steps = loss.dim(0);
  train::LoraTrainer trainer(model, std::move(init), opt);
  for (int64_t s = 0; s < loss.dim(0); ++s) {
    const std::vector<train::Batch> mbs = test::fixture_step_batches(*ref, s);
    if (s + 1 == loss.dim(0)) {
      // The last step's gradients (before clipping), from the adapters the first steps made.
      train::LoraAdapters g = trainer.adapters().zeros_like();
      train::StepOptions so;
      int64_t targets = 0;
      for (const auto& b : mbs) targets += b.num_targets();
      so.loss_scale = 1.0 / double(targets);
      for (const auto& b : mbs) train::forward_backward(model, &trainer.adapters(), b, so, &g, nullptr);
      g.for_each([&](const std::string& key, const std::vector<float>& v) {
        // Two Adam steps amplify fp32 noise in small gradients; observed ~1e-5.
        EXPECT_LT(rel_err(v, vec(*ref, "train.grad." + key)), 1e-3) << key;
      });
    }
    const train::StepStats st = trainer.step(mbs);
    const double want = loss.data_as<double>()[s];
    EXPECT_NEAR(st.loss, want, 1e-5 * want) << "step " << s;
    EXPECT_NEAR(st.grad_norm, norm.data_as<double>()[s], 1e-4 * norm.data_as<double>()[s]) << "step " << s;
    EXPECT_DOUBLE_EQ(st.lr, lr.data_as<double>()[s]) << "step " << s;
  }
  double worst = 0;
  trainer.adapters().for_each([&](const std::string& key, const std::vector<float>& v) {
    const double e = rel_err(v, vec(*ref, "train.final." + key));
    worst = std::max(worst, e);
    // Adam normalizes each update: fp32 noise in a small gradient moves a weight by up to ~lr.
    EXPECT_LT(e, 1e-3) << key;
  });
  std::printf("max relative error of the trained parameters: %.3g\n", worst);
}

// An IR-QLoRA adapter written by PEFT's save_pretrained (the scalars under the official
// parameter names): read with IEC on, the unmerged loss and the merged logits equal the
// reference's.
TEST(IrqloraParity, PeftWrittenAdapterMergedAndUnmerged) {
  auto ref = SafetensorsFile::open(dir() + "/tiny_irqlora_logits.safetensors");
  auto grads_f = SafetensorsFile::open(dir() + "/tiny_irqlora.safetensors");
  auto batch_f = SafetensorsFile::open(dir() + "/tiny_grads.safetensors");
  LlamaModel model(open_checkpoint(dir() + "/tiny-llama3"));
  const train::LoraAdapters a = train::load_peft_adapter(dir() + "/irqlora-adapter", model.config());
  EXPECT_TRUE(a.config.iec);
  EXPECT_EQ(a.config.r, 4);
  EXPECT_NE(a.layers[1][size_t(LinearKind::Down)].b_scale[0], 0.0f);
  const train::Batch batch = fixture_batch(*batch_f);
  const double want_loss = vec(*grads_f, "grad.loss")[0];
  EXPECT_NEAR(train::forward_loss(model, &a, batch).mean_loss(), want_loss, 1e-5 * want_loss);
  train::merge_adapters(model, a);
  const double worst = test::max_first_sequence_logit_difference(model, batch, vec(*ref, "logits"));
  EXPECT_LT(worst, 1e-3);  // fp32 logits of magnitude ~10, as the plain LoRA adapter test
  std::printf("max |logit difference| merged: %.3g\n", worst);
  EXPECT_NEAR(train::forward_loss(model, nullptr, batch).mean_loss(), want_loss, 1e-5 * want_loss);
}

// The scalars and their AdamW moments survive an adapter and a checkpoint round trip.
TEST(Irqlora, AdapterAndCheckpointKeepTheScalars) {
  LlamaModel model(open_checkpoint(dir() + "/tiny-llama3"));
  train::LoraAdapters a = train::LoraAdapters::peft_init(model.config(), irqlora_config(), 5);
  float x = 0.01f;
  a.for_each([&](const std::string&, std::vector<float>& v) {
    for (float& f : v) f += (x += 0.001f);
  });
  train::AdamWState st = train::AdamWState::zeros_like(a);
  st.step = 7;
  st.m.for_each([&](const std::string&, std::vector<float>& v) {
    for (float& f : v) f = (x += 0.002f);
  });
  test::TempDir tmp;
  const nlohmann::json run = {{"model", "tiny"}, {"method", "irqlora"}};
  train::save_train_checkpoint(tmp / "ck", a, st, run, nlohmann::json::array());
  auto ck = train::load_train_checkpoint(tmp / "ck", model.config(), run);
  ASSERT_TRUE(ck.has_value());
  EXPECT_TRUE(ck->params.config.iec);
  EXPECT_EQ(ck->state.step, 7);
  int n = 0;
  ck->params.for_each([&](const std::string& key, const std::vector<float>& v) {
    a.for_each([&](const std::string& k2, const std::vector<float>& w) {
      if (k2 == key) {
        EXPECT_EQ(v, w) << key;
        n += key.ends_with("_scale");
      }
    });
  });
  EXPECT_EQ(n, 2 * 7 * 2);
  ck->state.m.for_each([&](const std::string& key, const std::vector<float>& v) {
    st.m.for_each([&](const std::string& k2, const std::vector<float>& w) {
      if (k2 == key) {
        EXPECT_EQ(v, w) << key;
      }
    });
  });
  // Plain LoRA adapters have no scalars and read back without IEC.
  train::LoraConfig plain = irqlora_config();
  plain.iec = false;
  train::save_peft_adapter(tmp / "plain", train::LoraAdapters::zeros(model.config(), plain), "x");
  EXPECT_FALSE(train::load_peft_adapter(tmp / "plain", model.config()).config.iec);
}

// With LoRA dropout (the A path reads the dropped-out input, the group means the input itself):
// the gradients of A, B and both scalars, and through them the input gradients of the later
// blocks, against central finite differences of lowbit's own loss with the same masks.
TEST(Irqlora, DropoutGradientsMatchFiniteDifferences) {
  auto batch_f = SafetensorsFile::open(dir() + "/tiny_grads.safetensors");
  LlamaModel model(open_checkpoint(dir() + "/tiny-llama3"));
  train::LoraConfig cfg = irqlora_config();
  cfg.dropout = 0.3;
  train::LoraAdapters lora = train::LoraAdapters::peft_init(model.config(), cfg, 13);
  uint32_t st = 1;
  auto rnd = [&] { return float((st = st * 1664525u + 1013904223u) >> 8) / float(1 << 24) - 0.5f; };
  lora.for_each([&](const std::string& key, std::vector<float>& v) {
    if (key.find("lora_A") != std::string::npos) return;
    for (float& x : v) x = (key.ends_with("_scale") ? 1.0f : 0.05f) * rnd();
  });
  const train::Batch batch = fixture_batch(*batch_f);
  train::StepOptions so;
  so.dropout_seed = 77;
  train::LoraAdapters g = lora.zeros_like();
  train::forward_backward(model, &lora, batch, so, &g, nullptr);
  auto loss = [&] { return train::forward_backward(model, &lora, batch, so, nullptr, nullptr).mean_loss(); };
  EXPECT_GT(std::fabs(loss() - train::forward_loss(model, &lora, batch).mean_loss()), 1e-6);  // masks on
  double worst = 0;
  int checked = 0;
  for (auto [layer, kind] : std::vector<std::pair<int, LinearKind>>{{0, LinearKind::Q}, {0, LinearKind::Gate},
                                                                    {1, LinearKind::Down}, {1, LinearKind::V}}) {
    train::LoraLinear& p = lora.layers[size_t(layer)][size_t(kind)];
    const train::LoraLinear& gp = g.layers[size_t(layer)][size_t(kind)];
    for (auto [param, grad] : std::vector<std::pair<std::vector<float>*, const std::vector<float>*>>{
             {&p.a, &gp.a}, {&p.b, &gp.b}, {&p.a_scale, &gp.a_scale}, {&p.b_scale, &gp.b_scale}}) {
      for (size_t i = 0; i < param->size(); i += std::max<size_t>(1, param->size() / 4)) {
        const float keep = (*param)[i];
        const double h = 1e-2;
        (*param)[i] = float(keep + h);
        const double lp = loss();
        (*param)[i] = float(keep - h);
        const double lm = loss();
        (*param)[i] = keep;
        const double fd = (lp - lm) / (2 * h);
        // fp32 losses of ~10 differ by ~1e-6 between evaluations: ~1e-4 in a quotient at h = 1e-2.
        worst = std::max(worst, std::fabs(fd - (*grad)[i]) / std::max(1e-2, std::fabs(double((*grad)[i]))));
        ++checked;
      }
    }
  }
  EXPECT_GT(checked, 30);
  EXPECT_LT(worst, 2e-2);
  std::printf("%d finite differences, worst relative error %.3g\n", checked, worst);
}

TEST(Irqlora, RankThatDoesNotDivideALinearIsRefused) {
  LlamaModel model(open_checkpoint(dir() + "/tiny-llama3"));
  train::LoraConfig cfg = irqlora_config();
  cfg.r = 3;  // hidden 64
  try {
    train::LoraAdapters::zeros(model.config(), cfg);
    ADD_FAILURE() << "IEC accepted with r = 3 on 64 features";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("r = 3 does not divide q_proj's input (64) and output (64)"),
              std::string::npos)
        << e.what();
  }
  cfg.iec = false;
  EXPECT_NO_THROW(train::LoraAdapters::zeros(model.config(), cfg));  // plain LoRA takes any rank
}

}  // namespace
}  // namespace lowbit
