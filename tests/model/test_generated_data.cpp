// DB-LLM's data-free windows (train/generated_data.h) from the tiny LLaMA-3 training fixture
// (vocab 256, BOS 1, EOS 2, context 256): deterministic ids per seed, the greedy tokens equal
// the argmax of the model's own logits (a full forward, not the generator's KV cache), sampled
// tokens follow the inverse CDF of the tempered, top-k restricted softmax, EOS and BOS handled
// as written down, and `run_distill` with data = generated trains and records the data.
#include "core/error.h"
#include "fdb_fixture.h"
#include "formats/checkpoint.h"
#include "model/llama_model.h"
#include "test_util.h"
#include "train/distill.h"
#include "train/generated_data.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

namespace lowbit {
namespace {

using train::GenDataOptions;

std::string tiny() { return test::fdb_tiny_model(); }

const LlamaModel& teacher() {
  static const LlamaModel m(open_checkpoint(tiny()));
  return m;
}

GenDataOptions small(uint64_t seed) {
  GenDataOptions o;
  o.nsamples = 6;
  o.seqlen = 20;
  o.seed = seed;
  return o;
}

// Row t of the full-forward logits of `ids`, as a vector.
std::vector<float> logits_row(const std::vector<int32_t>& ids, int64_t t) {
  const Tensor l = teacher().forward(ids);
  const int64_t V = teacher().config().vocab_size;
  const float* p = l.data_as<float>() + t * V;
  return {p, p + V};
}

TEST(GeneratedData, SameSeedSameIdsOtherSeedOtherIds) {
  const Calibration a = train::generate_distill_data(teacher(), small(7));
  const Calibration b = train::generate_distill_data(teacher(), small(7));
  const Calibration c = train::generate_distill_data(teacher(), small(8));
  ASSERT_EQ(a.windows.size(), 6u);
  for (const auto& w : a.windows) {
    ASSERT_EQ(w.size(), 20u);
    for (int32_t t : w) EXPECT_TRUE(t >= 0 && t < 256) << t;
  }
  EXPECT_EQ(a.windows, b.windows);
  EXPECT_NE(a.windows, c.windows);
  EXPECT_EQ(a.set.name, "generated");
  EXPECT_TRUE(a.set.files.empty());
  EXPECT_EQ(a.nsamples, 6);
  EXPECT_EQ(a.seqlen, 20);
}

// eos = continue: every sequence runs the window's length, so window s is sequence s:
// BOS, the first token, then `greedy` argmax tokens of the model's logits without BOS in
// context (bos = window), checked against a full forward of the same ids.
TEST(GeneratedData, GreedyTokensAreTheArgmax) {
  for (const char* greedy : {"3", "2-4"}) {
    GenDataOptions o = small(3);
    o.eos = "continue";
    o.greedy = greedy;
    const Calibration d = train::generate_distill_data(teacher(), o);
    const auto [lo, hi] = train::parse_gen_greedy(greedy);
    for (int64_t s = 0; s < o.nsamples; ++s) {
      SCOPED_TRACE(std::string(greedy) + " sample " + std::to_string(s));
      const std::vector<int32_t>& w = d.windows[size_t(s)];
      EXPECT_EQ(w[0], 1);  // BOS
      const int64_t n = lo + s % (hi - lo + 1);
      const std::vector<int32_t> ids(w.begin() + 1, w.end());
      for (int64_t t = 0; t < n; ++t) EXPECT_EQ(ids[size_t(t + 1)], train::greedy_token(logits_row(ids, t))) << t;
    }
  }
}

// bos = both: BOS also opens the generation context; sweep: sample s starts with id s.
TEST(GeneratedData, BosInContextAndSweep) {
  GenDataOptions o = small(0);
  o.eos = "continue";
  o.bos = "both";
  o.first = "sweep";
  o.greedy = "4";
  const Calibration d = train::generate_distill_data(teacher(), o);
  for (int64_t s = 0; s < o.nsamples; ++s) {
    const std::vector<int32_t>& w = d.windows[size_t(s)];
    EXPECT_EQ(w[0], 1);
    EXPECT_EQ(w[1], s);
    for (int64_t t = 1; t <= 4; ++t) EXPECT_EQ(w[size_t(t + 1)], train::greedy_token(logits_row(w, t))) << s << " " << t;
  }
  // bos = off: no BOS; sequences of the full window each.
  o.bos = "off";
  const Calibration off = train::generate_distill_data(teacher(), o);
  for (int64_t s = 0; s < o.nsamples; ++s) EXPECT_EQ(off.windows[size_t(s)][0], s);
}

// top_k = 1 samples the argmax (whatever u); top_k = 2 only ever the two largest logits; a
// sampled token of the model is always among the top k at its position.
TEST(GeneratedData, SampledTokensStayInTheTopK) {
  GenDataOptions o = small(11);
  o.eos = "continue";
  o.greedy = "0";
  o.top_k = 1;
  const Calibration g = train::generate_distill_data(teacher(), o);
  for (const auto& w : g.windows) {
    const std::vector<int32_t> ids(w.begin() + 1, w.end());
    const Tensor l = teacher().forward(ids);
    for (size_t t = 0; t + 1 < ids.size(); ++t) {
      const float* row = l.data_as<float>() + t * 256;
      EXPECT_EQ(ids[t + 1], train::greedy_token({row, 256})) << t;
    }
  }
  o.top_k = 3;
  o.temperature = 2.0;
  const Calibration k3 = train::generate_distill_data(teacher(), o);
  int64_t off_argmax = 0;
  for (const auto& w : k3.windows) {
    const std::vector<int32_t> ids(w.begin() + 1, w.end());
    const Tensor l = teacher().forward(ids);
    for (size_t t = 0; t + 1 < ids.size(); ++t) {
      std::vector<float> row(l.data_as<float>() + t * 256, l.data_as<float>() + (t + 1) * 256);
      std::vector<float> sorted = row;
      std::sort(sorted.begin(), sorted.end(), std::greater<>());
      EXPECT_GE(row[size_t(ids[t + 1])], sorted[2]) << t;
      off_argmax += ids[t + 1] != train::greedy_token(row);
    }
  }
  EXPECT_GT(off_argmax, 0);  // it samples: 6 x 18 draws from three tempered candidates
}

// The inverse CDF on a distribution written out: logits {0, log 3, log 4, -1e9, ...} give the
// weights 1 : 3 : 4 (top_k 3 or 0 alike), so u in [0, 1/8) picks 0, [1/8, 1/2) picks 1, [1/2, 1)
// picks 2; temperature 2 turns them into 1 : sqrt 3 : 2.
TEST(GeneratedData, InverseCdfOverTheTemperedSoftmax) {
  std::vector<float> l(10, -1e9f);
  l[0] = 0;
  l[1] = std::log(3.0f);
  l[2] = std::log(4.0f);
  for (int64_t k : {0, 3}) {
    EXPECT_EQ(train::sample_token(l, 1.0, k, 0.0), 0);
    EXPECT_EQ(train::sample_token(l, 1.0, k, 0.124), 0);
    EXPECT_EQ(train::sample_token(l, 1.0, k, 0.126), 1);
    EXPECT_EQ(train::sample_token(l, 1.0, k, 0.499), 1);
    EXPECT_EQ(train::sample_token(l, 1.0, k, 0.501), 2);
    EXPECT_EQ(train::sample_token(l, 1.0, k, 0.999999), 2);
  }
  // Top-2 leaves 3 : 4.
  EXPECT_EQ(train::sample_token(l, 1.0, 2, 3.0 / 7 - 1e-6), 1);
  EXPECT_EQ(train::sample_token(l, 1.0, 2, 3.0 / 7 + 1e-6), 2);
  // Top-1 is the argmax for every u.
  for (double u : {0.0, 0.3, 0.99}) EXPECT_EQ(train::sample_token(l, 1.0, 1, u), 2);
  // Temperature 2: weights 1, sqrt 3, 2 (sum 4.732): the first edge at 1 / 4.732 = 0.2113.
  EXPECT_EQ(train::sample_token(l, 2.0, 0, 0.2112), 0);
  EXPECT_EQ(train::sample_token(l, 2.0, 0, 0.2114), 1);
  // Drawn with the generator's u: frequencies within 4 standard errors of 1/8, 3/8, 1/2.
  std::mt19937_64 rng(5);
  const int n = 40000;
  std::vector<int> count(10, 0);
  for (int i = 0; i < n; ++i) ++count[size_t(train::sample_token(l, 1.0, 50, train::uniform01(rng)))];
  const double p[3] = {0.125, 0.375, 0.5};
  for (int i = 0; i < 3; ++i) {
    const double se = std::sqrt(p[i] * (1 - p[i]) / n);
    EXPECT_NEAR(double(count[size_t(i)]) / n, p[i], 4 * se) << i;
  }
  EXPECT_EQ(count[0] + count[1] + count[2], n);
}

// eos = stop: an EOS the model writes ends its sequence and is not kept, so EOS appears in the
// windows only as a first token (right after a BOS). Sampling from the whole vocabulary at a
// high temperature makes EOS (id 2 of 256) come up often enough to be seen.
TEST(GeneratedData, EosEndsASequence) {
  GenDataOptions o = small(1);
  o.nsamples = 40;
  o.seqlen = 40;
  o.greedy = "0";
  o.top_k = 0;
  o.temperature = 50;
  o.eos = "continue";
  const Calibration cont = train::generate_distill_data(teacher(), o);
  int64_t eos_inside = 0;
  for (const auto& w : cont.windows)
    for (size_t t = 2; t < w.size(); ++t) eos_inside += w[t] == 2;
  ASSERT_GT(eos_inside, 0) << "the fixture should write EOS somewhere at this temperature";
  o.eos = "stop";
  int64_t sequences = 0;
  const Calibration stop = train::generate_distill_data(teacher(), o, [&](int64_t, int64_t) { ++sequences; });
  EXPECT_GT(sequences, o.nsamples);  // shorter sequences, packed
  std::vector<int32_t> stream;
  for (const auto& w : stop.windows) stream.insert(stream.end(), w.begin(), w.end());
  for (size_t t = 0; t < stream.size(); ++t) {
    if (stream[t] == 2) {
      EXPECT_TRUE(t > 0 && stream[t - 1] == 1) << t;
    }
  }
}

TEST(GeneratedData, BadOptionsAreRefusedNamingTheValue) {
  auto err = [](auto edit) {
    GenDataOptions o = small(0);
    edit(o);
    return test::error_text([&] { (void)train::generate_distill_data(teacher(), o); });
  };
  EXPECT_EQ(err([](GenDataOptions& o) { o.nsamples = 0; }), "--gen-nsamples 0 must be positive");
  EXPECT_EQ(err([](GenDataOptions& o) { o.seqlen = 1; }), "--gen-seqlen 1 must be at least 2");
  EXPECT_EQ(err([](GenDataOptions& o) { o.seqlen = 300; }),
            "--gen-seqlen 300 exceeds the model's max_position_embeddings (256)");
  EXPECT_EQ(err([](GenDataOptions& o) { o.first = "zipf"; }), "--gen-first 'zipf' is not one of random, sweep");
  EXPECT_EQ(err([](GenDataOptions& o) { o.greedy = "4-2"; }), "--gen-greedy '4-2': LO 4 is more than HI 2");
  EXPECT_EQ(err([](GenDataOptions& o) { o.greedy = "x"; }),
            "--gen-greedy 'x': give N or LO-HI, non-negative integers (the argmax tokens after the first)");
  EXPECT_EQ(err([](GenDataOptions& o) { o.greedy = "-1"; }),
            "--gen-greedy '-1': give N or LO-HI, non-negative integers (the argmax tokens after the first)");
  EXPECT_EQ(err([](GenDataOptions& o) { o.temperature = 0; }), "--gen-temperature 0 must be positive");
  EXPECT_EQ(err([](GenDataOptions& o) { o.top_k = -1; }), "--gen-top-k -1 must be >= 0 (0: the whole vocabulary)");
  EXPECT_EQ(err([](GenDataOptions& o) { o.eos = "never"; }), "--gen-eos 'never' is not one of stop, continue");
  EXPECT_EQ(err([](GenDataOptions& o) { o.bos = "on"; }), "--gen-bos 'on' is not one of window, both, off");
  train::DistillOptions d;
  d.data = "web";
  EXPECT_EQ(test::error_text([&] { train::check_distill_options(d); }), "--data 'web' is not one of calib, generated");
  d.data = "generated";
  d.batch = 4;
  d.gen.nsamples = 2;
  EXPECT_EQ(test::error_text([&] { train::check_distill_options(d); }),
            "--gen-nsamples 2 is fewer than one batch of 4");
}

// A few steps of DAD on generated windows (one step's worth, so every step sees the same
// windows) lower the loss; the training record names the data by its generation options, and
// the same options give the same weights and log.
TEST(GeneratedData, DistillTrainsOnGeneratedWindows) {
  train::DistillOptions o;
  o.method = "dbllm:g=16";
  o.steps = 4;
  o.batch = 2;
  o.grad_accum = 2;
  o.lr = 1e-3;
  o.data = "generated";
  o.gen = small(4);
  o.gen.nsamples = 4;
  o.gen.seqlen = 24;
  int64_t generated = 0;
  train::DistillEvents ev;
  ev.on_generate = [&](int64_t w, int64_t n) {
    EXPECT_EQ(n, 4);
    generated = w;
  };
  const train::DistillResult r = train::run_distill(tiny(), o, nullptr, ev);
  EXPECT_EQ(generated, 4);
  const auto& log = r.training["log"];
  ASSERT_EQ(log.size(), 4u);
  for (const auto& rec : log) EXPECT_TRUE(std::isfinite(rec["loss"].get<double>()));
  EXPECT_LT(log.back()["loss"].get<double>(), log.front()["loss"].get<double>());
  EXPECT_EQ(r.training["data"], train::gen_data_identity(o.gen));
  EXPECT_EQ(r.training["data"]["set"], "generated");
  EXPECT_EQ(r.training["data"]["greedy"], "2-4");
  EXPECT_EQ(r.qm.method["training"]["data"]["seed"], 4);
  const train::DistillResult again = train::run_distill(tiny(), o, nullptr);
  EXPECT_EQ(again.training["log"], log);
  // data = calib needs the windows.
  o.data = "calib";
  EXPECT_NE(test::error_text([&] { (void)train::run_distill(tiny(), o, nullptr); }).find("calibration windows"),
            std::string::npos);
}

}  // namespace
}  // namespace lowbit
