// LLaVA-Next against transformers' LlavaNextForConditionalGeneration: a tiny random-weight model
// (scripts/make_llava_next_fixture.py, tests/fixtures/llava_next/) on two real images run through
// lowbit's own decoding and preprocessing (bit-equal to the processor, test_image_processor).
//
// Tolerances: both sides compute in fp32 with different summation orders (OpenBLAS GEMMs, lowbit's
// softmax exponential, LayerNorm moments in double here and in fp32 in PyTorch); through 3 CLIP
// layers, the projector and 2 LLaMA layers that leaves differences of a few 1e-6 on values of
// order 1 (measured: 4e-6 and 5e-6). Image features and logits are held to 3e-5 absolute, and the argmax of
// every position must agree.
#include "core/error.h"
#include "formats/safetensors.h"
#include "core/device.h"
#include "model/llava_next.h"
#include "model/llava_next_device.h"
#include "vision/image.h"
#include "vision/image_processor.h"
#include "zst_fixture.h"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>

using namespace lowbit;
using lowbit::test::fixtures_dir;
using lowbit::test::tensor_values;
using lowbit::test::zst_fixture;

namespace {

const char* kImages[] = {"tall_150x420.jpg", "wide_1100x300.jpg"};

// The fixture model unpacked into a directory, optionally with its tensors renamed.
struct FixtureModel {
  lowbit::test::TempDir dir;
  explicit FixtureModel(const std::function<std::string(const std::string&)>& rename = nullptr,
                        const std::string& drop = "") {
    const std::string src = fixtures_dir() + "/llava_next/";
    for (const char* f : {"config.json", "preprocessor_config.json"})
      std::filesystem::copy_file(src + f, dir / f);
    const std::string raw = dir / "raw.safetensors";
    lowbit::test::spit(raw, lowbit::test::read_zst(src + "model.safetensors.zst"));
    if (!rename && drop.empty()) {
      std::filesystem::rename(raw, dir / "model.safetensors");
      return;
    }
    auto f = SafetensorsFile::open(raw);
    SafetensorsWriter w;
    for (const auto& e : f->entries())
      if (e.name != drop) w.add(rename ? rename(e.name) : e.name, f->tensor(e.name));
    w.write(dir / "model.safetensors");
  }
  std::string path() const { return dir.path.string(); }
};

struct Stats {
  double max_diff = 0;
  int64_t top1_agree = 0, rows = 0;
};

Stats compare_rows(const Tensor& got, const std::vector<float>& want, int64_t cols) {
  Stats s;
  s.rows = got.dim(0);
  const float* g = got.data_as<float>();
  for (int64_t r = 0; r < s.rows; ++r) {
    int64_t ag = 0, aw = 0;
    for (int64_t c = 0; c < cols; ++c) {
      const size_t i = size_t(r * cols + c);
      s.max_diff = std::max(s.max_diff, double(std::fabs(g[i] - want[i])));
      if (g[i] > g[r * cols + ag]) ag = c;
      if (want[i] > want[size_t(r * cols + aw)]) aw = c;
    }
    s.top1_agree += ag == aw;
  }
  return s;
}

vision::ProcessedImage load_image(const LlavaNextModel& m, const std::string& name) {
  return vision::preprocess_llava_next(vision::read_image(fixtures_dir() + "/vision/" + name), m.processor());
}

void check_against_reference(const LlavaNextModel& m) {
  const auto& ref = zst_fixture("llava_next/reference.safetensors.zst");
  const int64_t H = m.config().text.hidden_size, V = m.config().text.vocab_size;
  for (const char* name : kImages) {
    SCOPED_TRACE(name);
    const auto ids = tensor_values<int32_t>(ref, std::string(name) + ".input_ids");
    const vision::ProcessedImage img = load_image(m, name);
    int64_t n_image_tokens = 0;
    for (int32_t id : ids) n_image_tokens += id == m.config().image_token_id;
    EXPECT_EQ(m.image_token_count(img.height, img.width), n_image_tokens);

    const Tensor feats = m.image_features(img);
    const auto want_feats = tensor_values<float>(ref, std::string(name) + ".image_features");
    ASSERT_EQ(feats.numel(), int64_t(want_feats.size()));
    const Stats fs = compare_rows(feats, want_feats, H);
    EXPECT_LT(fs.max_diff, 3e-5) << "image features";

    const Tensor logits = m.forward(ids, std::span(&img, 1));
    const auto want = tensor_values<float>(ref, std::string(name) + ".logits");
    ASSERT_EQ(logits.numel(), int64_t(want.size()));
    const Stats ls = compare_rows(logits, want, V);
    EXPECT_LT(ls.max_diff, 3e-5) << "logits";
    EXPECT_EQ(ls.top1_agree, ls.rows) << "top-1 agreement";
    std::printf("%s: %lld image tokens, features max|diff| %.3g, logits max|diff| %.3g, top-1 %lld/%lld\n", name,
                (long long)n_image_tokens, fs.max_diff, ls.max_diff, (long long)ls.top1_agree, (long long)ls.rows);
  }
}

}  // namespace

TEST(LlavaNext, LogitsMatchTransformers) {
  FixtureModel fm;
  auto m = LlavaNextModel::open(fm.path());
  EXPECT_EQ(m->config().feature_layers(), 2);  // -2 of 3 layers
  check_against_reference(*m);
}

// The packing's length (select_best_resolution, unpad_image, newlines) over many sizes and aspect
// ratios, against transformers' pack_image_features, for the tiny config and LLaVA-Next-8B's.
TEST(LlavaNext, ImageTokenCountsMatchTransformers) {
  const auto& ref = zst_fixture("llava_next/reference.safetensors.zst");
  LlavaNextConfig small = parse_llava_next_config(lowbit::test::slurp(fixtures_dir() + "/llava_next/config.json"),
                                                  "config.json");
  LlavaNextConfig real = small;
  real.vision.image_size = 336;
  real.vision.patch_size = 14;
  real.pinpoints = {{336, 672}, {672, 336}, {672, 672}, {1008, 336}, {336, 1008}};
  for (auto [key, cfg] : {std::pair{"token_counts.small", &small}, std::pair{"token_counts.real", &real}}) {
    const Tensor rows = ref.tensor(key);
    const int64_t* r = rows.data_as<int64_t>();
    for (int64_t i = 0; i < rows.dim(0); ++i, r += 3)
      EXPECT_EQ(llava_next_image_token_count(*cfg, r[0], r[1]), r[2]) << key << ": " << r[0] << " x " << r[1];
  }
}

TEST(LlavaNext, GreedyGenerationMatchesTransformers) {
  FixtureModel fm;
  auto m = LlavaNextModel::open(fm.path());
  const auto& ref = zst_fixture("llava_next/reference.safetensors.zst");
  for (const char* name : kImages) {
    SCOPED_TRACE(name);
    const auto ids = tensor_values<int32_t>(ref, std::string(name) + ".input_ids");
    const auto want = tensor_values<int32_t>(ref, std::string(name) + ".generated");
    const vision::ProcessedImage img = load_image(*m, name);
    std::vector<int32_t> seen;
    const auto got = m->generate(ids, std::span(&img, 1), int64_t(want.size()), {},
                                 [&](int32_t t) { seen.push_back(t); });
    EXPECT_EQ(got, want);
    EXPECT_EQ(seen, got);
    // A stop token ends the generation after it.
    const int64_t stop = want[3];
    const auto stopped = m->generate(ids, std::span(&img, 1), int64_t(want.size()), std::span(&stop, 1));
    const size_t first = size_t(std::find(want.begin(), want.end(), int32_t(stop)) - want.begin());
    EXPECT_EQ(stopped, std::vector<int32_t>(want.begin(), want.begin() + long(first) + 1));
  }
}

// open_checkpoint() of a LLaVA-Next directory is its language model: every LLaMA command (ppl,
// quantize, logits) runs on the LLM part. Text-only logits against transformers' LLaVA-Next.
TEST(LlavaNext, LanguageModelOpensAsALlamaCheckpoint) {
  FixtureModel fm;
  const auto& ref = zst_fixture("llava_next/reference.safetensors.zst");
  const auto ids = tensor_values<int32_t>(ref, "text_only.input_ids");
  const auto want = tensor_values<float>(ref, "text_only.logits");
  Checkpoint ck = open_checkpoint(fm.path());
  EXPECT_EQ(ck.format, "llava-next-language-model");
  EXPECT_EQ(ck.config.vocab_size, 320);
  EXPECT_EQ(ck.config.num_hidden_layers, 2);
  LlamaModel llm(std::move(ck));
  const Stats s = compare_rows(llm.forward(ids), want, 320);
  EXPECT_LT(s.max_diff, 3e-5);
  EXPECT_EQ(s.top1_agree, s.rows);
  auto m = LlavaNextModel::open(fm.path());
  const Stats v = compare_rows(m->forward(ids, {}), want, 320);
  EXPECT_LT(v.max_diff, 3e-5);
}

// transformers 4.5x's layout: model.language_model.*, lm_head, the tower with its vision_model level.
TEST(LlavaNext, NewerCheckpointLayoutGivesTheSameLogits) {
  FixtureModel fm([](const std::string& n) {
    auto swap = [&](const std::string& from, const std::string& to) -> std::optional<std::string> {
      if (n.rfind(from, 0) == 0) return to + n.substr(from.size());
      return std::nullopt;
    };
    for (auto [from, to] : {std::pair{"language_model.model.", "model.language_model."},
                            std::pair{"language_model.lm_head.", "lm_head."},
                            std::pair{"vision_tower.", "model.vision_tower.vision_model."},
                            std::pair{"multi_modal_projector.", "model.multi_modal_projector."},
                            std::pair{"image_newline", "model.image_newline"}})
      if (auto s = swap(from, to)) return *s;
    return n;
  });
  auto m = LlavaNextModel::open(fm.path());
  check_against_reference(*m);
}

TEST(LlavaNext, BadInputIsNamed) {
  {
    FixtureModel fm(nullptr, "vision_tower.encoder.layers.1.mlp.fc2.bias");
    try {
      LlavaNextModel::open(fm.path());
      ADD_FAILURE() << "no error";
    } catch (const lowbit::Error& e) {
      EXPECT_NE(std::string(e.what()).find("vision_tower.encoder.layers.1.mlp.fc2.bias"), std::string::npos) << e.what();
    }
  }
  FixtureModel fm;
  auto m = LlavaNextModel::open(fm.path());
  const auto& ref = zst_fixture("llava_next/reference.safetensors.zst");
  auto ids = tensor_values<int32_t>(ref, "tall_150x420.jpg.input_ids");
  ids.erase(std::find(ids.begin(), ids.end(), int32_t(m->config().image_token_id)));
  const vision::ProcessedImage img = load_image(*m, "tall_150x420.jpg");
  try {
    m->forward(ids, std::span(&img, 1));
    ADD_FAILURE() << "no error";
  } catch (const lowbit::Error& e) {
    EXPECT_NE(std::string(e.what()).find("75 image tokens"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("76 features"), std::string::npos) << e.what();
  }
  EXPECT_THROW(parse_llava_next_config(R"({"model_type": "llava_next", "vision_feature_select_strategy": "full"})",
                                       "c.json"), lowbit::Error);
  EXPECT_THROW(parse_llava_next_config(R"({"model_type": "llava_next", "vision_feature_layer": [-2, -5]})", "c.json"),
               lowbit::Error);
  EXPECT_THROW(parse_llava_next_config(R"({"model_type": "llava", "text_config": {}})", "c.json"), lowbit::Error);
}

// The device split of image_features: the tile features (CPU or GPU) and the host packing.
// The CPU runner of place_llava_next is the model's own forward, bit for bit.
TEST(LlavaNext, PackingOfProjectedTilesAndTheCpuRunner) {
  FixtureModel fm;
  auto m = LlavaNextModel::open(fm.path());
  const auto& ref = zst_fixture("llava_next/reference.safetensors.zst");
  const vision::ProcessedImage img = load_image(*m, "wide_1100x300.jpg");
  const Tensor tiles = m->projected_tiles(img);
  const int64_t P = m->config().vision.num_patches(), H = m->config().text.hidden_size;
  EXPECT_EQ(tiles.shape(), (std::vector<int64_t>{img.pixel_values.dim(0) * P, H}));
  const Tensor packed = m->pack_image_features(img, tiles), feats = m->image_features(img);
  ASSERT_EQ(packed.shape(), feats.shape());
  EXPECT_EQ(0, std::memcmp(packed.data(), feats.data(), size_t(feats.nbytes())));
  // Tile 0 (the base image) is the packing's first P rows.
  EXPECT_EQ(0, std::memcmp(packed.data(), tiles.data(), size_t(P * H) * 4));

  auto cpu = place_llava_next(*m, parse_device("cpu"));
  EXPECT_EQ(cpu->device_name(), "cpu");
  const auto ids = tensor_values<int32_t>(ref, "wide_1100x300.jpg.input_ids");
  const Tensor a = cpu->forward(ids, std::span(&img, 1)), b = m->forward(ids, std::span(&img, 1));
  EXPECT_EQ(0, std::memcmp(a.data(), b.data(), size_t(a.nbytes())));
  const std::vector<int64_t> none;
  EXPECT_EQ(cpu->generate(ids, std::span(&img, 1), 6, none), m->generate(ids, std::span(&img, 1), 6, none));
#ifndef LOWBIT_WITH_CUDA
  try {
    place_llava_next(*m, parse_device("cuda:0"));
    ADD_FAILURE() << "no error";
  } catch (const lowbit::Error& e) {
    EXPECT_NE(std::string(e.what()).find("cuda:0"), std::string::npos) << e.what();
  }
#endif

  // Tile features of the wrong shape, and tiles that do not fit the image's grid, are named.
  const Tensor short_tiles = Tensor::empty(DType::F32, {tiles.dim(0) - 1, H});
  try {
    m->pack_image_features(img, short_tiles);
    ADD_FAILURE() << "no error";
  } catch (const lowbit::Error& e) {
    EXPECT_NE(std::string(e.what()).find(fmt::format("expected [{}, {}]", tiles.dim(0), H)), std::string::npos)
        << e.what();
  }
  vision::ProcessedImage base_only = img;  // the base tile alone, for an image whose grid has more
  const int64_t S = m->config().vision.image_size;
  base_only.pixel_values = Tensor::empty(DType::F32, {1, 3, S, S});
  std::memcpy(base_only.pixel_values.mutable_data(), img.pixel_values.data(), size_t(3 * S * S) * 4);
  try {
    m->projected_tiles(base_only);
    ADD_FAILURE() << "no error";
  } catch (const lowbit::Error& e) {
    EXPECT_NE(std::string(e.what()).find("1 tiles given, the pinpoints imply"), std::string::npos) << e.what();
  }
}
