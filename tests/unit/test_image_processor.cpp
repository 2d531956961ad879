// Image decoding and LLaVA-Next preprocessing against transformers' LlavaNextImageProcessorPil
// (scripts/make_vision_fixtures.py, tests/fixtures/vision/).
//
// Tolerance: none. PIL's resampling is integer arithmetic on 8-bit samples (vision/resample.h
// reproduces it step by step), the normalization is a per-level table computed in the same float
// precisions numpy uses, and the JPEGs are decoded by libjpeg-turbo with the defaults PIL uses
// (integer slow DCT, fancy upsampling), so every value must be bit-identical. A mismatch is
// reported with its count, the largest difference in 8-bit levels, and the first position.
#include "core/error.h"
#include "vision/image.h"
#include "vision/image_processor.h"
#include "vision/resample.h"
#include "zst_fixture.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstring>
#include <fstream>
#include <random>

using namespace lowbit;
using namespace lowbit::vision;
using lowbit::test::fixtures_dir;
using lowbit::test::tensor_values;
using lowbit::test::zst_fixture;

namespace {

const SafetensorsFile& fixture() { return zst_fixture("vision/processor.safetensors.zst"); }
std::string image_path(const std::string& name) { return fixtures_dir() + "/vision/" + name; }

ImageProcessorConfig config_of(const char* which) {
  const auto meta = nlohmann::json::parse(fixture().metadata().at("reference"));
  nlohmann::json cfg = meta["common"];
  for (auto& [k, v] : meta[which].items()) cfg[k] = v;
  return parse_image_processor_config(cfg.dump(), std::string("fixture config ") + which);
}

const char* kImages[] = {"bilevel_45x31.png", "gray_20x13.jpg", "gray_333x97.png", "palette_200x200.png",
                         "rgb_240x180.png",   "rgba_64x48.png", "tall_150x420.jpg", "wide_1100x300.jpg"};

}  // namespace

TEST(ImageDecode, RgbEqualsPilsConversion) {
  std::vector<std::string> names(std::begin(kImages), std::end(kImages));
  names.push_back("la_24x20.png");
  names.push_back("palette_trns_24x20.png");
  names.push_back("rgb16_7x5.png");
  names.push_back("rgba16_7x5.png");
  for (const std::string& name : names) {
    SCOPED_TRACE(name);
    const Image rgb = to_rgb(read_image(image_path(name)));
    const auto size = tensor_values<int64_t>(fixture(), name + ".image_size");
    ASSERT_EQ(rgb.height, size[0]);
    ASSERT_EQ(rgb.width, size[1]);
    const std::string key = name + ".rgb";
    if (!fixture().find(key)) continue;  // a plain RGB/L PNG: the lossless file is the reference
    const auto want = tensor_values<uint8_t>(fixture(), key);
    ASSERT_EQ(want.size(), rgb.pixels.size());
    int64_t bad = 0, maxd = 0;
    for (size_t i = 0; i < want.size(); ++i) {
      const int d = std::abs(int(want[i]) - int(rgb.pixels[i]));
      bad += d != 0;
      maxd = std::max<int64_t>(maxd, d);
    }
    EXPECT_EQ(bad, 0) << "max difference " << maxd << " levels";
  }
}

TEST(ImageProcessor, SmallConfigPixelValuesBitExact) {
  const ImageProcessorConfig cfg = config_of("small");
  for (const char* name : kImages) {
    SCOPED_TRACE(name);
    const ProcessedImage p = preprocess_llava_next(read_image(image_path(name)), cfg);
    const Tensor want = fixture().tensor(std::string(name) + ".small.pixel_values");
    ASSERT_EQ(p.pixel_values.shape(), want.shape());
    const float* a = p.pixel_values.data_as<float>();
    const float* b = want.data_as<float>();
    int64_t bad = 0, first = -1;
    float maxd = 0;
    for (int64_t i = 0; i < want.numel(); ++i) {
      if (std::memcmp(a + i, b + i, 4) != 0) {
        if (first < 0) first = i;
        ++bad;
      }
      maxd = std::max(maxd, std::fabs(a[i] - b[i]));
    }
    EXPECT_EQ(bad, 0) << "of " << want.numel() << " values; max |diff| " << maxd << "; first at " << first;
  }
}

TEST(ImageProcessor, RealConfigLevelsExact) {
  const ImageProcessorConfig cfg = config_of("real");
  EXPECT_EQ(cfg.tile, 336);
  int checked = 0;
  for (const char* name : kImages) {
    const std::string key = std::string(name) + ".real.levels";
    if (!fixture().find(key)) continue;
    SCOPED_TRACE(name);
    ++checked;
    const auto want = tensor_values<uint8_t>(fixture(), key);
    const ProcessedImage p = preprocess_llava_next(read_image(image_path(name)), cfg);
    ASSERT_EQ(p.pixel_values.numel(), int64_t(want.size()));
    // The fixture's levels encode the processor's floats losslessly (the script checks it); the
    // floats they stand for, computed as transformers computes them:
    const float* a = p.pixel_values.data_as<float>();
    const int64_t plane = 336 * 336;
    int64_t bad = 0;
    for (size_t i = 0; i < want.size(); ++i) {
      const size_t c = (i / size_t(plane)) % 3;
      const float expect = (float(double(want[i]) * (1.0 / 255.0)) - cfg.mean[c]) / cfg.std[c];
      bad += std::memcmp(&expect, a + i, 4) != 0;
    }
    EXPECT_EQ(bad, 0) << "of " << want.size();
  }
  EXPECT_EQ(checked, 2);
}

TEST(ImageProcessor, SelectBestResolutionAndFit) {
  const auto pins = config_of("real").pinpoints;
  const Tensor rows = fixture().tensor("select_best.real");
  ASSERT_EQ(rows.dim(1), 6);
  const int64_t* r = rows.data_as<int64_t>();
  for (int64_t i = 0; i < rows.dim(0); ++i, r += 6) {
    SCOPED_TRACE(std::to_string(r[0]) + " x " + std::to_string(r[1]));
    const auto best = select_best_resolution(r[0], r[1], pins);
    EXPECT_EQ(best, (std::pair<int64_t, int64_t>{r[2], r[3]}));
    EXPECT_EQ(patch_output_size(r[0], r[1], best), (std::pair<int64_t, int64_t>{r[4], r[5]}));
  }
}

// PIL's resize alone, on crops of random sizes to random sizes (both pass orders, one axis only,
// up- and downscaling): bit-equal.
TEST(ImageProcessor, ResizeEqualsPil) {
  const Image img = read_image(image_path("rgb_240x180.png"));
  const Tensor cases = fixture().tensor("resize.cases");
  const int64_t* c = cases.data_as<int64_t>();
  for (int64_t i = 0; i < cases.dim(0); ++i, c += 4) {
    SCOPED_TRACE(std::to_string(c[0]) + " x " + std::to_string(c[1]) + " -> " + std::to_string(c[2]) + " x " +
                 std::to_string(c[3]));
    Image crop{c[1], c[0], 3, {}};
    for (int64_t y = 0; y < c[0]; ++y)
      crop.pixels.insert(crop.pixels.end(), img.row(y), img.row(y) + c[1] * 3);
    const Image out = resize(crop, c[3], c[2]);
    EXPECT_EQ(out.pixels, tensor_values<uint8_t>(fixture(), "resize." + std::to_string(i)));
  }
}

TEST(ImageProcessor, ResizeToSameSizeIsACopy) {
  const Image img = read_image(image_path("rgb_240x180.png"));
  const Image same = resize(img, img.width, img.height);
  EXPECT_EQ(same.pixels, img.pixels);
}

TEST(ImageDecode, BadInputNamesTheFile) {
  lowbit::test::TempDir dir;
  auto expect_error = [](const std::string& path, const std::string& needle) {
    try {
      read_image(path);
      ADD_FAILURE() << "no error for " << path;
    } catch (const lowbit::Error& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find(path), std::string::npos) << msg;
      EXPECT_NE(msg.find(needle), std::string::npos) << msg;
    }
  };
  const std::string png = lowbit::test::slurp(image_path("rgb_240x180.png"));
  const std::string jpg = lowbit::test::slurp(image_path("tall_150x420.jpg"));
  lowbit::test::spit(dir / "truncated.png", png.substr(0, png.size() / 2));
  expect_error(dir / "truncated.png", "corrupt PNG");
  std::string flipped = png;
  flipped[40] ^= 0x5a;  // inside IHDR/IDAT: a CRC mismatch
  lowbit::test::spit(dir / "crc.png", flipped);
  expect_error(dir / "crc.png", "corrupt PNG");
  lowbit::test::spit(dir / "truncated.jpg", jpg.substr(0, jpg.size() / 2));
  expect_error(dir / "truncated.jpg", "corrupt JPEG");
  lowbit::test::spit(dir / "header_only.jpg", jpg.substr(0, 4));
  expect_error(dir / "header_only.jpg", "corrupt JPEG");
  lowbit::test::spit(dir / "text.png", "not an image at all");
  expect_error(dir / "text.png", "not a PNG or JPEG");
  expect_error(dir / "absent.png", "cannot open");
  expect_error(image_path("gray16_8x8.png"), "unsupported image mode: 16-bit greyscale");
  expect_error(image_path("cmyk_8x8.jpg"), "unsupported image mode: CMYK");
}

// Damaged files (a byte changed, or the file cut short, at many places): decoding either succeeds
// or throws lowbit::Error; it never crashes or throws anything else.
TEST(ImageDecode, DamagedFilesFailCleanly) {
  for (const char* name : {"rgba_64x48.png", "palette_200x200.png", "gray_20x13.jpg", "tall_150x420.jpg"}) {
    SCOPED_TRACE(name);
    const std::string bytes = lowbit::test::slurp(image_path(name));
    std::mt19937 rng(1);
    int errors = 0, decoded = 0;
    for (int i = 0; i < 300; ++i) {
      std::string b = bytes;
      const size_t at = rng() % b.size();
      if (i % 3 == 2)
        b.resize(at);
      else
        b[at] = char(rng() & 0xff);
      const std::vector<uint8_t> v(b.begin(), b.end());
      try {
        const Image img = decode_image(v, name);
        EXPECT_EQ(img.pixels.size(), size_t(img.width * img.height * img.channels));
        ++decoded;
      } catch (const lowbit::Error& e) {
        EXPECT_NE(std::string(e.what()).find(name), std::string::npos) << e.what();
        ++errors;
      }
    }
    EXPECT_GT(errors, 0);
  }
}

TEST(ImageProcessor, BadConfigNamesTheField) {
  EXPECT_THROW(parse_image_processor_config(R"({"resample": 2})", "p.json"), lowbit::Error);
  EXPECT_THROW(parse_image_processor_config(R"({"do_pad": false})", "p.json"), lowbit::Error);
  EXPECT_THROW(parse_image_processor_config(R"({"size": {"shortest_edge": 336}, "crop_size": {"height": 224, "width": 224}})",
                                            "p.json"), lowbit::Error);
  EXPECT_THROW(parse_image_processor_config(R"({"image_grid_pinpoints": [[336, 500]]})", "p.json"), lowbit::Error);
  EXPECT_THROW(parse_image_processor_config(R"({"image_mean": [0.5, 0.5]})", "p.json"), lowbit::Error);
  try {
    parse_image_processor_config(R"({"image_grid_pinpoints": [[336, 500]]})", "p.json");
  } catch (const lowbit::Error& e) {
    EXPECT_NE(std::string(e.what()).find("p.json: pinpoint [336, 500]"), std::string::npos) << e.what();
  }
}
