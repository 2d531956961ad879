// Packed execution of a LLaVA-Next whose language model `lowbit quantize` quantized
// (quant/llava_next_quantized.h, pack/packed_model.h): the same checkpoint read twice, once with
// its language model's linears dequantized at load (fake-quant, the reference the study measures)
// and once with the packed kernels installed on that language model (what `vlm-generate`,
// `vlm-logits` and `vlm-eval --packed` run on the CPU), on the tiny random-weight LLaVA-Next of
// tests/fixtures/llava_next with its two real images and transformers' prompt ids.
//
// The fixture is fp32, so its quantized linears dequantize to fp32 and the fake-quant weights
// carry no 16-bit rounding; the bars are those of tests/model/test_packed_model.cpp
// (PackedModel.LogitsMatchTheFakeQuantModel), for the same reasons: with fp32 activations the
// same weights up to one fp32 rounding each and another summation order (max |dlogit| <= 1e-4 of
// the largest logit, every argmax the same, mean NLL within 1e-5); with 8-bit activations
// (ggml's Q8_0 rounding, about 0.4% of each block's largest value) the mean NLL within 1% and 90%
// of the argmaxes the same. Every position is compared, the image-token rows included, so the
// packed products run on the projected image features too.
#include "core/error.h"
#include "logits_compare.h"
#include "model/llava_next.h"
#include "pack/packed_model.h"
#include "quant/llava_next_quantized.h"
#include "quant/method.h"
#include "quant/quantize.h"
#include "test_util.h"
#include "vision/image.h"
#include "vision/image_processor.h"
#include "zst_fixture.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>

namespace lowbit {
namespace {

namespace fs = std::filesystem;
using test::fixtures_dir;

const char* kImages[] = {"tall_150x420.jpg", "wide_1100x300.jpg"};
// 4-bit (the study's common setting) and 2-bit codes, groups of 32 along the 64 and 128 inputs.
const char* kSpecs[] = {"rtn:w=4,g=32", "rtn:w=2,g=32"};

// The fixture model with the byte-level test tokenizer in `dir`.
void write_llava(const std::string& dir) {
  fs::create_directories(dir);
  const std::string src = fixtures_dir() + "/llava_next/";
  for (const char* f : {"config.json", "preprocessor_config.json"}) fs::copy_file(src + f, dir + "/" + f);
  fs::copy_file(fixtures_dir() + "/vlm/tokenizer.json", dir + "/tokenizer.json");
  test::spit(dir + "/model.safetensors", test::read_zst(src + "model.safetensors.zst"));
}

// The LLaVA-Next directory `llava` with its language model quantized by the data-free `spec`,
// written to `out` as `lowbit quantize` writes it.
void write_quantized(const std::string& llava, const std::string& spec, const std::string& out) {
  const Checkpoint source = open_model(llava);
  LlamaModel src(source), work(source);
  auto method = make_method(spec);
  write_quantized_llava_next(out, llava, src, quantize_model(work, *method, nullptr, {}), nlohmann::json::object(),
                             false);
}

// transformers' input_ids for the image (its image tokens expanded by the processor).
std::vector<int32_t> fixture_ids(const std::string& image) {
  return test::tensor_values<int32_t>(test::zst_fixture("llava_next/reference.safetensors.zst"), image + ".input_ids");
}

vision::ProcessedImage load_image(const LlavaNextModel& m, const std::string& name) {
  return vision::preprocess_llava_next(vision::read_image(fixtures_dir() + "/vision/" + name), m.processor());
}

using test::compare_logits;
using test::mean_next_token_nll;

std::string bytes_of(const Tensor& t) { return std::string(static_cast<const char*>(t.data()), size_t(t.nbytes())); }

TEST(PackedLlava, LogitsMatchTheFakeQuantModel) {
  test::TempDir dir;
  const std::string llava = dir / "llava";
  write_llava(llava);
  for (const std::string spec : kSpecs) {
    const std::string out = dir / (spec == kSpecs[0] ? "q4" : "q2");
    write_quantized(llava, spec, out);
    auto fake = load_llava_next(out);
    for (auto act : {pack::PackedActivations::F32, pack::PackedActivations::Q8}) {
      const bool f32 = act == pack::PackedActivations::F32;
      auto packed = load_llava_next(out);
      const pack::PackedSummary s = pack::install_packed_linears(packed->language_model(), act);
      EXPECT_EQ(s.linears, 7 * packed->config().text.num_hidden_layers) << spec;
      for (const char* name : kImages) {
        SCOPED_TRACE(spec + " " + name + (f32 ? " f32" : " q8"));
        const std::vector<int32_t> ids = fixture_ids(name);
        const vision::ProcessedImage img = load_image(*fake, name);
        // The vision tower and the projector run as stored: the same image features, bit for bit.
        EXPECT_EQ(bytes_of(packed->image_features(img)), bytes_of(fake->image_features(img)));
        const Tensor want = fake->forward(ids, std::span(&img, 1));
        const Tensor got = packed->forward(ids, std::span(&img, 1));
        const test::LogitsDiff d = compare_logits(got, want);
        const double nll_fake = mean_next_token_nll(want, ids), nll_packed = mean_next_token_nll(got, ids);
        std::printf("%-14s %-18s %s: max |dlogit| %.2e (max |logit| %.2f), argmax agrees %lld/%lld, nll %.5f vs "
                    "%.5f\n",
                    spec.c_str(), name, f32 ? "f32" : "q8 ", d.max_abs, d.max_ref, (long long)d.argmax_agree,
                    (long long)d.rows, nll_packed, nll_fake);
        if (f32) {
          EXPECT_LE(d.max_abs, 1e-4 * std::max(1.0, d.max_ref));
          EXPECT_EQ(d.argmax_agree, d.rows);
          EXPECT_NEAR(nll_packed, nll_fake, 1e-5);
        } else {
          EXPECT_NEAR(nll_packed, nll_fake, 0.01 * nll_fake);
          EXPECT_GE(double(d.argmax_agree), 0.9 * double(d.rows));
        }
      }
    }
  }
}

// Greedy decoding from the packed codes (the prompt through the KV cache, then one token per step:
// the gemv-sized products) chooses, at every step, the fake-quant model's best token on the same
// prefix, up to a near-tie of the logits' largest packed-vs-fake difference.
TEST(PackedLlava, GreedyDecodeFollowsTheFakeQuantModel) {
  test::TempDir dir;
  const std::string llava = dir / "llava";
  write_llava(llava);
  for (const std::string spec : kSpecs) {
    SCOPED_TRACE(spec);
    const std::string out = dir / (spec == kSpecs[0] ? "q4" : "q2");
    write_quantized(llava, spec, out);
    auto fake = load_llava_next(out);
    auto packed = load_llava_next(out);
    pack::install_packed_linears(packed->language_model(), pack::PackedActivations::F32);
    const std::vector<int32_t> ids = fixture_ids(kImages[0]);
    const vision::ProcessedImage img = load_image(*fake, kImages[0]);
    const int64_t n = 12;
    const auto got = packed->generate(ids, std::span(&img, 1), n, std::vector<int64_t>{});
    ASSERT_EQ(int64_t(got.size()), n);
    std::vector<int32_t> all = ids;
    all.insert(all.end(), got.begin(), got.end());
    const Tensor ref = fake->forward(all, std::span(&img, 1));
    const double window = 2 * compare_logits(packed->forward(all, std::span(&img, 1)), ref).max_abs;
    const int64_t V = ref.dim(1), T = int64_t(ids.size());
    int64_t same = 0;
    for (int64_t i = 0; i < n; ++i) {
      const float* l = ref.data_as<float>() + (T - 1 + i) * V;
      const int64_t best = std::max_element(l, l + V) - l;
      same += best == got[size_t(i)];
      EXPECT_LE(double(l[best]) - double(l[got[size_t(i)]]), window) << "step " << i;
    }
    const bool equal = fake->generate(ids, std::span(&img, 1), n, std::vector<int64_t>{}) == got;
    std::printf("%s: %lld/%lld packed greedy tokens are the fake-quant argmax; sequences %s\n", spec.c_str(),
                (long long)same, (long long)n, equal ? "equal" : "differ");
  }
}

TEST(PackedLlava, SixteenBitLlavaIsRefused) {
  test::TempDir dir;
  const std::string llava = dir / "llava";
  write_llava(llava);
  auto m = load_llava_next(llava);
  try {
    pack::install_packed_linears(m->language_model(), pack::PackedActivations::Q8);
    FAIL() << "a 16-bit LLaVA-Next was packed";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("'" + llava), std::string::npos) << what;
    EXPECT_NE(what.find("is not a quantized checkpoint: --packed needs one"), std::string::npos) << what;
  }
}

}  // namespace
}  // namespace lowbit
