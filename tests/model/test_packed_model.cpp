// Packed execution of whole quantized models (src/pack/packed_model.h) against the fake-quant
// model: the same checkpoint, once with its linears dequantized at load (the reference the study
// measures) and once run from its packed codes.
//
// stories260K is an fp32 model, so its quantized linears dequantize to fp32 and the fake-quant
// weights carry no 16-bit rounding: with fp32 activations the packed model must give the same
// logits up to fp32 summation order. Its MLP width (172 inputs to down_proj) is not a multiple
// of 32, so the padded blocks are exercised too.
#include "calib/calib_data.h"
#include "core/error.h"
#include "eval/perplexity.h"
#include "logits_compare.h"
#include "pack/packed_model.h"
#include "quant/lowbit_checkpoint.h"
#include "quant/quantize.h"
#include "test_util.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

namespace lowbit {
namespace {

std::string stories() { return test::models_dir() + "/stories260K/stories260K.bin"; }

std::vector<int32_t> prompt_ids(const Tokenizer& tok) {
  std::vector<int32_t> ids = tok.encode(test::slurp(test::data_dir() + "/ptb/ptb.valid.txt").substr(0, 2000),
                                        BosMode::Default);
  ids.resize(std::min<size_t>(ids.size(), 96));
  return ids;
}

// stories260K quantized by the data-free method `spec` into `out`; the prompt's ids.
std::vector<int32_t> write_quantized_stories(const std::string& spec, const std::string& out) {
  LlamaModel m(open_checkpoint(stories()));
  auto tok = load_tokenizer(m.checkpoint().tokenizer_path);
  auto method = make_method(spec);
  write_quantized_checkpoint(out, m, quantize_model(m, *method, nullptr, {}), nlohmann::json::object(), false);
  return prompt_ids(*tok);
}

using test::compare_logits;

double mean_nll(const LlamaModel& m, const std::vector<int32_t>& ids) {
  const std::vector<double> nll = m.next_token_nll(ids);
  double s = 0;
  for (double v : nll) s += v;
  return s / double(nll.size());
}

TEST(PackedModel, LogitsMatchTheFakeQuantModel) {
  LOWBIT_REQUIRE_PATH(stories());
  LOWBIT_REQUIRE_PATH(test::data_dir() + "/ptb/ptb.valid.txt");
  test::TempDir dir;
  LlamaModel source(open_checkpoint(stories()));
  auto tok = load_tokenizer(source.checkpoint().tokenizer_path);
  const Calibration calib =
      make_calibration(resolve_calibration_set("ptb", test::data_dir()), *tok, 4, 128, 0, BosMode::Default);
  const std::vector<int32_t> ids = prompt_ids(*tok);
  ASSERT_GE(ids.size(), 64u);
  for (const std::string spec : {"rtn:w=4,g=32", "rtn:w=2,g=64,sym=0", "rtn:w=8,g=-1", "gptq:w=3,g=32,act_order=1",
                                 "rtn:w=5,g=48"}) {
    LlamaModel m(open_checkpoint(stories()));
    auto method = make_method(spec);
    const QuantizedModel qm = quantize_model(m, *method, method->needs_calibration() ? &calib : nullptr, {});
    const std::string out = dir / ("q" + std::to_string(spec.size()) + spec.substr(0, 4) + spec.substr(6, 1));
    write_quantized_checkpoint(out, m, qm, nlohmann::json::object(), false);

    auto fake = load_model(out);
    const Tensor want = fake->forward(ids);
    for (auto act : {pack::PackedActivations::F32, pack::PackedActivations::Q8}) {
      auto packed = load_model(out);
      const pack::PackedSummary s = pack::install_packed_linears(*packed, act);
      EXPECT_EQ(s.linears, 7 * packed->config().num_hidden_layers) << spec;
      const Tensor got = packed->forward(ids);
      const test::LogitsDiff d = compare_logits(got, want);
      const double nll_fake = mean_nll(*fake, ids), nll_packed = mean_nll(*packed, ids);
      const bool f32 = act == pack::PackedActivations::F32;
      std::printf("%-28s %s: max |dlogit| %.2e (max |logit| %.2f), argmax agrees %lld/%lld, nll %.5f vs %.5f\n",
                  spec.c_str(), f32 ? "f32" : "q8 ", d.max_abs, d.max_ref, (long long)d.argmax_agree,
                  (long long)d.rows, nll_packed, nll_fake);
      if (f32) {
        // Same weights up to one fp32 rounding each (d * code + m vs scale * (code - zero)), other
        // summation orders: relative differences of a few 1e-6 per product, through 5 blocks.
        EXPECT_LE(d.max_abs, 1e-4 * std::max(1.0, d.max_ref)) << spec;
        EXPECT_EQ(d.argmax_agree, d.rows) << spec;
        EXPECT_NEAR(nll_packed, nll_fake, 1e-5) << spec;
      } else {
        // 8-bit activations (ggml's Q8_0) add their own rounding, about 0.4% of each block's
        // largest value: the model's loss moves by a fraction of a percent, not more.
        EXPECT_NEAR(nll_packed, nll_fake, 0.01 * nll_fake) << spec;
        EXPECT_GE(double(d.argmax_agree), 0.9 * double(d.rows)) << spec;
      }
    }
  }
}

// The decode path (one token at a time through the KV cache, gemv-sized products) gives the
// logits of the full forward.
TEST(PackedModel, CachedDecodeMatchesTheFullForward) {
  LOWBIT_REQUIRE_PATH(stories());
  LOWBIT_REQUIRE_PATH(test::data_dir() + "/ptb/ptb.valid.txt");
  test::TempDir dir;
  std::vector<int32_t> ids = write_quantized_stories("rtn:w=4,g=32", dir / "q");
  ids.resize(40);
  for (auto act : {pack::PackedActivations::F32, pack::PackedActivations::Q8}) {
    auto packed = load_model(dir / "q");
    pack::install_packed_linears(*packed, act);
    const Tensor full = packed->forward(ids);
    const int64_t V = packed->config().vocab_size, H = packed->config().hidden_size;
    KvCache cache = packed->make_kv_cache(int64_t(ids.size()));
    std::vector<float> hidden(static_cast<size_t>(H)), logits(static_cast<size_t>(V));
    double max_abs = 0, max_ref = 0;
    int64_t agree = 0;
    for (size_t t = 0; t < ids.size(); ++t) {
      packed->forward_cached(std::span<const int32_t>(&ids[t], 1), cache, hidden.data());
      packed->lm_head(hidden.data(), 1, logits.data());
      const float* f = full.data_as<float>() + int64_t(t) * V;
      for (int64_t v = 0; v < V; ++v) {
        max_abs = std::max(max_abs, double(std::fabs(logits[size_t(v)] - f[v])));
        max_ref = std::max(max_ref, double(std::fabs(f[v])));
      }
      agree += std::max_element(logits.begin(), logits.end()) - logits.begin() == std::max_element(f, f + V) - f;
    }
    const bool f32 = act == pack::PackedActivations::F32;
    std::printf("packed %s, cached decode vs forward: max |dlogit| %.2e (max |logit| %.2f), argmax agrees %lld/%zu\n",
                f32 ? "f32" : "q8", max_abs, max_ref, (long long)agree, ids.size());
    if (f32) {
      // The same products in another summation order (attention over the cache, gemv vs GEMM).
      EXPECT_LE(max_abs, 1e-4 * std::max(1.0, max_ref));
    } else {
      // 8-bit activations round to a grid: an fp32-order difference upstream can move one value
      // across a rounding boundary (one step, max|block| / 127), which a 64-wide model does not
      // average away. The outputs stay close, and the predictions agree.
      EXPECT_LE(max_abs, 0.05 * std::max(1.0, max_ref));
      EXPECT_GE(double(agree), 0.95 * double(ids.size()));
    }
  }
}

// q, k, v and gate, up run stacked (one product each) unless an input hook gives every linear its
// own input; then each runs alone from its rows of the stacked matrix. Both give the same logits.
TEST(PackedModel, StackedProductsEqualThePerLinearOnes) {
  LOWBIT_REQUIRE_PATH(stories());
  LOWBIT_REQUIRE_PATH(test::data_dir() + "/ptb/ptb.valid.txt");
  test::TempDir dir;
  const std::vector<int32_t> ids = write_quantized_stories("rtn:w=3,g=32", dir / "q");
  auto packed = load_model(dir / "q");
  pack::install_packed_linears(*packed, pack::PackedActivations::Q8);
  ASSERT_NE(packed->block_weights(0)->qkv, nullptr);
  ASSERT_NE(packed->block_weights(0)->gate_up, nullptr);
  const Tensor stacked = packed->forward(ids);
  BlockHooks separate;
  int64_t calls = 0;
  separate.on_input = [&](int64_t, LinearKind, float*, int64_t, int64_t) { ++calls; };
  const Tensor alone = packed->forward(ids, &separate);
  EXPECT_EQ(calls, 7 * packed->config().num_hidden_layers);
  // Each output is the same per-row computation on the same quantized input: bit for bit.
  const test::LogitsDiff d = compare_logits(alone, stacked);
  EXPECT_EQ(d.max_abs, 0.0);
}

TEST(PackedModel, KeptSixteenBitWeightsGiveTheFp32Logits) {
  const std::string path = test::fixtures_dir() + "/models/llama3-mini-bf16";
  LOWBIT_REQUIRE_PATH(path);
  LlamaModel base(open_model(path));
  LlamaModel kept(open_model(path));
  kept.set_keep_16bit_weights(true);
  std::vector<int32_t> ids;
  for (int32_t i = 0; i < 24; ++i) ids.push_back((i * 37 + 11) % int32_t(base.config().vocab_size));
  const Tensor want = base.forward(ids);
  const int64_t V = base.config().vocab_size, H = base.config().hidden_size;
  ASSERT_NE(kept.block_weights(0)->kernel[0], nullptr) << "bf16 weights were widened";
  // Row by row through the cache: every product takes the 16-bit gemv path.
  KvCache cache = kept.make_kv_cache(int64_t(ids.size()));
  std::vector<float> hidden(static_cast<size_t>(H)), logits(static_cast<size_t>(V));
  double max_abs = 0, max_ref = 0;
  for (size_t t = 0; t < ids.size(); ++t) {
    kept.forward_cached(std::span<const int32_t>(&ids[t], 1), cache, hidden.data());
    kept.lm_head(hidden.data(), 1, logits.data());
    for (int64_t v = 0; v < V; ++v) {
      max_abs = std::max(max_abs, double(std::fabs(logits[size_t(v)] - want.data_as<float>()[t * V + v])));
      max_ref = std::max(max_ref, double(std::fabs(want.data_as<float>()[t * V + v])));
    }
  }
  std::printf("16-bit kept, cached decode vs fp32 forward: max |dlogit| %.2e (max |logit| %.2f)\n", max_abs, max_ref);
  // bf16 converts to fp32 exactly: the same numbers, summed in another order.
  EXPECT_LE(max_abs, 1e-4 * std::max(1.0, max_ref));
  // And the batched product (converted per call) agrees with it too.
  const Tensor batched = kept.forward(ids);
  const test::LogitsDiff d = compare_logits(batched, want);
  EXPECT_LE(d.max_abs, 1e-4 * std::max(1.0, d.max_ref));
}

// PackedHead::Q8: the LM head packed to 8 bits per block of 32 (its codes are checked against
// ggml's Q8_0 in test_packed). Against the stored head, both with fp32 activations: the 8-bit head
// moves each logit by about 1/254 of its block's largest weight times the hidden state, so the loss
// by a small fraction and nearly no argmax. Decode through the cache runs the same kernel.
TEST(PackedModel, EightBitHeadStaysCloseToTheStoredHead) {
  LOWBIT_REQUIRE_PATH(stories());
  LOWBIT_REQUIRE_PATH(test::data_dir() + "/ptb/ptb.valid.txt");
  test::TempDir dir;
  const std::vector<int32_t> ids = write_quantized_stories("rtn:w=4,g=32", dir / "q");
  auto stored = load_model(dir / "q");
  pack::install_packed_linears(*stored, pack::PackedActivations::F32);
  EXPECT_EQ(stored->lm_head_kernel(), nullptr);
  auto q8 = load_model(dir / "q");
  const pack::PackedSummary s = pack::install_packed_linears(*q8, pack::PackedActivations::F32, pack::PackedHead::Q8);
  ASSERT_NE(q8->lm_head_kernel(), nullptr);
  const int64_t V = q8->config().vocab_size, H = q8->config().hidden_size;
  EXPECT_EQ(s.head_bytes, V * ((H + 31) / 32) * (32 + 4));  // codes and d; m is not stored
  const Tensor want = stored->forward(ids), got = q8->forward(ids);
  const test::LogitsDiff d = compare_logits(got, want);
  const double nll_stored = mean_nll(*stored, ids), nll_q8 = mean_nll(*q8, ids);
  std::printf("8-bit head: max |dlogit| %.2e (max |logit| %.2f), argmax agrees %lld/%lld, nll %.5f vs %.5f\n",
              d.max_abs, d.max_ref, (long long)d.argmax_agree, (long long)d.rows, nll_q8, nll_stored);
  EXPECT_GT(d.max_abs, 0.0);  // the head did change
  EXPECT_LE(d.max_abs, 0.02 * std::max(1.0, d.max_ref));
  EXPECT_NEAR(nll_q8, nll_stored, 0.002 * nll_stored);
  EXPECT_GE(double(d.argmax_agree), 0.95 * double(d.rows));
  // The cached decode path's last row equals the full forward's.
  KvCache cache = q8->make_kv_cache(int64_t(ids.size()));
  std::vector<float> hidden(ids.size() * size_t(H)), logits(static_cast<size_t>(V));
  q8->forward_cached(ids, cache, hidden.data());
  q8->lm_head(hidden.data() + (int64_t(ids.size()) - 1) * H, 1, logits.data());
  const float* last = got.data_as<float>() + (int64_t(ids.size()) - 1) * V;
  for (int64_t v = 0; v < V; ++v) ASSERT_NEAR(logits[size_t(v)], last[v], 1e-4 * std::max(1.0, d.max_ref)) << v;
  // A head of the wrong shape is refused.
  const std::vector<float> small(64, 0.5f);
  auto wrong = std::make_shared<pack::PackedIntLinear>(
      std::make_shared<const pack::PackedIntMatrix>(pack::pack_q8_dense(DType::F32, small.data(), 2, 32)),
      pack::PackedActivations::Q8);
  EXPECT_THROW(q8->set_lm_head_kernel(wrong), Error);
}

TEST(PackedModel, UnquantizedModelIsRefused) {
  LOWBIT_REQUIRE_PATH(stories());
  LlamaModel m(open_checkpoint(stories()));
  try {
    pack::install_packed_linears(m, pack::PackedActivations::Q8);
    FAIL() << "a 16-bit model was packed";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("not a quantized checkpoint"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace lowbit
