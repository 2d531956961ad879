// DB-LLM's training on the tiny LLaMA-3 fixture model (tests/fixtures/train/tiny-llama3): the fdb
// student before training is the 2-bit RTN model (logits equal), the group parameters' gradient
// through the whole model agrees with central finite differences of the DAD loss, and a few
// steps of DAD lower the KL divergence from the teacher on the windows trained on.
#include "calib/calib_data.h"
#include "core/error.h"
#include "formats/checkpoint.h"
#include "quant/formats/fdb_format.h"
#include "quant/method.h"
#include "quant/quantize.h"
#include "quant/quantized_in_memory.h"
#include "fdb_fixture.h"
#include "test_util.h"
#include "train/fdb_train.h"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>

namespace lowbit {
namespace {

std::string tiny() { return test::fdb_tiny_model(); }

using test::fdb_init;
using test::random_batch;

TEST(FdbTrain, UntrainedStudentIsTheRtnModel) {
  const Checkpoint source = open_checkpoint(tiny());
  LlamaModel work(source);
  auto rtn = make_method("rtn:w=2,g=16");
  LlamaModel rtn_model(quantized_checkpoint_in_memory(source, quantize_model(work, *rtn, nullptr, {}), {}));
  LlamaModel teacher(open_checkpoint(tiny())), student(open_checkpoint(tiny()));
  train::FdbTrainer t(student, teacher, fdb_init("dbllm:g=16"), {});
  const train::Batch b = random_batch(1, 24, teacher.config().vocab_size, 1);
  const Tensor a = rtn_model.forward(b.tokens), s = student.forward(b.tokens);
  ASSERT_EQ(a.numel(), s.numel());
  EXPECT_EQ(std::memcmp(a.data(), s.data(), size_t(a.nbytes())), 0);
}

// The DAD loss with the teacher-entropy weight (which does not depend on the student, so the
// finite difference sees the same function the gradient is of). fp32 forward: a central
// difference with a step of 2% of the parameter agrees to a few percent on the largest
// gradients (observed below 1%); the bound is 5%.
TEST(FdbTrain, GroupGradientMatchesFiniteDifferences) {
  LlamaModel teacher(open_checkpoint(tiny())), student(open_checkpoint(tiny()));
  train::FdbLinears q = fdb_init("dbllm:g=16");
  test::set_fdb_linears(student, q);
  const int64_t V = teacher.config().vocab_size;
  const train::Batch b = random_batch(2, 16, V, 2);
  std::vector<float> tl;
  for (int64_t s = 0; s < b.B; ++s) {
    const Tensor t = teacher.forward(std::span<const int32_t>(b.tokens.data() + s * b.T, size_t(b.T)));
    tl.insert(tl.end(), t.data_as<float>(), t.data_as<float>() + t.numel());
  }
  train::DadOptions dad;
  dad.weight = train::DadWeight::Teacher;
  auto loss_of = [&](train::BaseGrads* g) {
    train::StepOptions so;
    so.logits_loss = [&](int64_t r0, int64_t rows, int64_t Vv, float* z) {
      return train::dad_loss_backward(tl.data() + r0 * Vv, z, rows, Vv, dad, 1.0 / double(b.B * b.T)).loss;
    };
    return train::forward_backward(student, nullptr, b, so, nullptr, g).loss_sum;
  };
  train::BaseGrads g = train::BaseGrads::linears_only(teacher.config());
  loss_of(&g);
  int checked = 0;
  for (auto [l, k] : {std::pair{0, LinearKind::Q}, std::pair{1, LinearKind::Down}, std::pair{1, LinearKind::V}}) {
    QuantizedLinear& lin = q[size_t(l)][size_t(k)];
    std::vector<float> da(size_t(lin.extras.at("fdb.alpha").numel()));
    train::fdb_group_grad(lin, g.blocks[size_t(l)].linear[size_t(k)].data(), da.data());
    // The parameter with the largest gradient, for each of alpha1, alpha2, beta.
    for (int j = 0; j < 3; ++j) {
      size_t best = size_t(j);
      for (size_t i = size_t(j); i < da.size(); i += 3)
        if (std::fabs(da[i]) > std::fabs(da[best])) best = i;
      float* a = fdb_alpha(lin);
      const float orig = a[best];
      const float h = 0.02f * std::max(std::fabs(orig), 1e-3f);
      a[best] = orig + h;
      test::set_fdb_linears(student, q);
      const double lp = loss_of(nullptr);
      a[best] = orig - h;
      test::set_fdb_linears(student, q);
      const double lm = loss_of(nullptr);
      a[best] = orig;
      test::set_fdb_linears(student, q);
      const double fd = (lp - lm) / (2.0 * double(h));
      EXPECT_NEAR(da[best], fd, 0.05 * std::fabs(fd)) << "layer " << l << " " << linear_name(k) << " param " << best;
      ++checked;
    }
  }
  EXPECT_EQ(checked, 9);
}

TEST(FdbTrain, DistillationLowersTheKl) {
  for (bool latent : {false, true}) {
    SCOPED_TRACE(latent ? "latent" : "scales");
    LlamaModel teacher(open_checkpoint(tiny())), student(open_checkpoint(tiny()));
    train::FdbTrainOptions opt;
    opt.adamw.lr = 1e-3;
    opt.latent = latent;
    opt.latent_lr_scale = 0.1;
    opt.total_steps = 20;
    train::FdbTrainer t(student, teacher, fdb_init("dbllm:g=16"), opt);
    const int64_t V = teacher.config().vocab_size;
    // Trained and measured on the same windows: the test is of the optimization, not of
    // generalization (the fixture model's weights are random).
    const train::Batch eval = random_batch(2, 32, V, 3);
    const double before = t.eval_kl(eval);
    for (int s = 0; s < 20; ++s) {
      std::vector<train::Batch> micro = {eval};
      const train::FdbStepStats st = t.step(micro);
      EXPECT_TRUE(std::isfinite(st.loss) && st.grad_norm > 0);
    }
    const double after = t.eval_kl(eval);
    EXPECT_LT(after, 0.9 * before) << before << " -> " << after;
    std::printf("%s: KL %.4f -> %.4f\n", latent ? "latent" : "scales", before, after);
    for (const auto& layer : t.linears())
      for (const QuantizedLinear& q : layer) EXPECT_NO_THROW(q.validate("trained"));
  }
}

// Two trainers made from the same linears (whose tensors share storage when copied) train
// independently: the second one's steps equal a lone trainer's, and the caller's linears stay as
// they were.
TEST(FdbTrain, TrainersOwnTheirParameters) {
  LlamaModel teacher(open_checkpoint(tiny())), s1(open_checkpoint(tiny())), s2(open_checkpoint(tiny())),
      s3(open_checkpoint(tiny()));
  train::FdbTrainOptions opt;
  opt.adamw.lr = 1e-3;
  opt.total_steps = 2;
  const train::FdbLinears q = fdb_init("dbllm:g=16");
  const std::vector<float> before(q[0][0].extras.at("fdb.alpha").data_as<float>(),
                                  q[0][0].extras.at("fdb.alpha").data_as<float>() +
                                      q[0][0].extras.at("fdb.alpha").numel());
  train::FdbTrainer a(s1, teacher, q, opt), b(s2, teacher, q, opt);
  const std::vector<train::Batch> micro = {random_batch(1, 24, teacher.config().vocab_size, 5)};
  std::vector<train::FdbStepStats> lone;
  {
    train::FdbTrainer c(s3, teacher, q, opt);
    for (int s = 0; s < 2; ++s) lone.push_back(c.step(micro));
  }
  for (int s = 0; s < 2; ++s) {
    a.step(micro);
    const train::FdbStepStats st = b.step(micro);
    EXPECT_EQ(st.loss, lone[size_t(s)].loss) << "step " << s;
    EXPECT_EQ(st.grad_norm, lone[size_t(s)].grad_norm) << "step " << s;
  }
  const Tensor& now = q[0][0].extras.at("fdb.alpha");
  EXPECT_TRUE(std::equal(before.begin(), before.end(), now.data_as<float>()));
}

// init=gptq: the fdb weights dequantize to GPTQ's 2-bit weights bit for bit, block after block
// (GPTQ calibrates each block on the previous blocks' quantized outputs, which are the same).
TEST(FdbTrain, GptqInitEqualsGptq) {
  Calibration calib;
  calib.nsamples = 4;
  calib.seqlen = 32;
  std::mt19937 gen(7);
  LlamaModel a(open_checkpoint(tiny())), b(open_checkpoint(tiny()));
  for (int i = 0; i < 4; ++i) {
    std::vector<int32_t> w;
    for (int t = 0; t < 32; ++t) w.push_back(int32_t(gen() % uint32_t(a.config().vocab_size)));
    calib.windows.push_back(w);
  }
  auto gptq = make_method("gptq:w=2,g=16");
  auto fdb = make_method("dbllm:g=16,init=gptq");
  ASSERT_TRUE(fdb->needs_calibration());
  const QuantizedModel qa = quantize_model(a, *gptq, &calib, {}), qb = quantize_model(b, *fdb, &calib, {});
  for (size_t l = 0; l < qa.blocks.size(); ++l)
    for (LinearKind k : kAllLinears) {
      const QuantizedLinear& x = *qa.blocks[l].linear[size_t(k)];
      const QuantizedLinear& y = *qb.blocks[l].linear[size_t(k)];
      ASSERT_EQ(y.format, &kFdbFormat);
      const Tensor dx = x.dequantize_f32(), dy = y.dequantize_f32();
      EXPECT_EQ(std::memcmp(dx.data(), dy.data(), size_t(dx.nbytes())), 0) << l << " " << linear_name(k);
    }
}

TEST(FdbTrain, BadInputIsRefused) {
  LlamaModel teacher(open_checkpoint(tiny())), student(open_checkpoint(tiny()));
  train::FdbLinears q = fdb_init("dbllm:g=16");
  train::FdbLinears fewer(q.begin(), q.begin() + 1);
  EXPECT_THROW(train::FdbTrainer(student, teacher, fewer, {}), Error);
  train::FdbLinears not_fdb = q;
  LlamaModel work(open_checkpoint(tiny()));
  auto rtn = make_method("rtn:w=2,g=16");
  not_fdb[0][0] = *quantize_model(work, *rtn, nullptr, {}).blocks[0].linear[0];
  EXPECT_THROW(train::FdbTrainer(student, teacher, not_fdb, {}), Error);
  train::FdbTrainer t(student, teacher, q, {});
  EXPECT_THROW(t.step({}), Error);
  // A GPU that is not there (or a build without CUDA) is refused by name before any work.
  train::FdbTrainOptions gpu;
  gpu.device = parse_device("cuda:99");
  try {
    train::FdbTrainer g(student, teacher, q, gpu);
    ADD_FAILURE() << "no lowbit::Error for cuda:99";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cuda:99"), std::string::npos) << e.what();
  }
  // The CPU computes in fp32 only: the GPU's precisions are refused naming the device. A CPU
  // trainer's steps carry no phase timing.
  for (train::ComputePrecision p : {train::ComputePrecision::Tf32, train::ComputePrecision::Bf16}) {
    train::FdbTrainOptions o;
    o.compute = p;
    EXPECT_EQ(test::error_text([&] { train::FdbTrainer x(student, teacher, q, o); }),
              fmt::format("--compute {} on device cpu: the CPU trains in fp32 only (tf32 and bf16 are GPU modes)",
                          train::compute_precision_name(p)));
  }
  const std::vector<train::Batch> micro = {random_batch(1, 8, teacher.config().vocab_size, 3)};
  EXPECT_TRUE(t.step(micro).phases.empty());
}

}  // namespace
}  // namespace lowbit
