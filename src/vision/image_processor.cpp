#include "vision/image_processor.h"

#include "core/error.h"
#include "vision/resample.h"

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <sstream>

namespace lowbit::vision {

using json = nlohmann::json;

ImageProcessorConfig default_llava_next_processor_config() {
  ImageProcessorConfig c;
  c.pinpoints = {{336, 672}, {672, 336}, {672, 672}, {1008, 336}, {336, 1008}};
  c.source = "LLaVA-Next defaults";
  return c;
}

namespace {

int64_t edge_of(const json& j, const char* field, const std::string& path) {
  const json& s = j.at(field);
  if (s.is_number_integer()) return s.get<int64_t>();
  LB_CHECK(s.is_object(), "{}: '{}' is neither a number nor an object", path, field);
  if (s.contains("shortest_edge")) return s.at("shortest_edge").get<int64_t>();
  LB_CHECK(s.contains("height") && s.contains("width"), "{}: '{}' has neither shortest_edge nor height/width", path,
           field);
  const int64_t h = s.at("height").get<int64_t>(), w = s.at("width").get<int64_t>();
  LB_CHECK(h == w, "{}: '{}' is {} x {}; LLaVA-Next tiles are square", path, field, h, w);
  return h;
}

}  // namespace

ImageProcessorConfig parse_image_processor_config(const std::string& text, const std::string& path) {
  json j = json::parse(text, nullptr, false);
  LB_CHECK(!j.is_discarded() && j.is_object(), "{}: not a JSON object", path);
  ImageProcessorConfig c = default_llava_next_processor_config();
  c.source = path;
  try {
    for (const char* flag : {"do_resize", "do_center_crop", "do_rescale", "do_normalize", "do_convert_rgb", "do_pad"})
      LB_CHECK(!j.contains(flag) || j[flag].get<bool>(), "{}: {} is false; lowbit implements LLaVA-Next's pipeline "
               "with every step on", path, flag);
    if (j.contains("resample"))
      LB_CHECK(j["resample"].get<int>() == 3, "{}: resample is {}; only bicubic (3) is implemented", path,
               j["resample"].get<int>());
    const int64_t size = j.contains("size") ? edge_of(j, "size", path) : c.tile;
    const int64_t crop = j.contains("crop_size") ? edge_of(j, "crop_size", path) : size;
    LB_CHECK(size == crop, "{}: size {} differs from crop_size {}; lowbit needs them equal (the tile size)", path,
             size, crop);
    LB_CHECK(size > 0 && size <= 4096, "{}: tile size {} is out of range", path, size);
    c.tile = size;
    if (j.contains("rescale_factor")) c.rescale_factor = j["rescale_factor"].get<double>();
    for (const char* key : {"image_mean", "image_std"}) {
      if (!j.contains(key)) continue;
      const auto v = j[key].get<std::vector<double>>();
      LB_CHECK(v.size() == 3, "{}: {} has {} values, expected 3", path, key, v.size());
      auto& dst = std::string(key) == "image_mean" ? c.mean : c.std;
      for (int i = 0; i < 3; ++i) dst[size_t(i)] = float(v[size_t(i)]);
    }
    for (float s : c.std) LB_CHECK(s > 0, "{}: image_std has a value {} that is not positive", path, s);
    if (j.contains("image_grid_pinpoints")) {
      c.pinpoints.clear();
      for (const auto& p : j["image_grid_pinpoints"]) {
        const auto hw = p.get<std::vector<int64_t>>();
        LB_CHECK(hw.size() == 2, "{}: image_grid_pinpoints entry {} is not [height, width]", path, p.dump());
        c.pinpoints.emplace_back(hw[0], hw[1]);
      }
    }
  } catch (const json::exception& e) {
    fail("{}: a field has the wrong type: {}", path, e.what());
  }
  LB_CHECK(!c.pinpoints.empty(), "{}: image_grid_pinpoints is empty", path);
  for (auto [h, w] : c.pinpoints)
    LB_CHECK(h > 0 && w > 0 && h % c.tile == 0 && w % c.tile == 0 && h <= 16384 && w <= 16384,
             "{}: pinpoint [{}, {}] is not a positive multiple of the tile size {}", path, h, w, c.tile);
  return c;
}

ImageProcessorConfig load_image_processor_config(const std::string& path) {
  std::ifstream in(path);
  LB_CHECK(in.good(), "cannot open '{}'", path);
  std::stringstream ss;
  ss << in.rdbuf();
  return parse_image_processor_config(ss.str(), path);
}

std::pair<int64_t, int64_t> select_best_resolution(int64_t height, int64_t width,
                                                   const std::vector<std::pair<int64_t, int64_t>>& pinpoints) {
  std::pair<int64_t, int64_t> best{0, 0};
  int64_t max_effective = 0;
  int64_t min_wasted = std::numeric_limits<int64_t>::max();
  for (auto [h, w] : pinpoints) {
    // Python's float division and int() truncation.
    const double scale = std::min(double(w) / double(width), double(h) / double(height));
    const int64_t dw = int64_t(double(width) * scale), dh = int64_t(double(height) * scale);
    const int64_t effective = std::min(dw * dh, width * height);
    const int64_t wasted = w * h - effective;
    if (effective > max_effective || (effective == max_effective && wasted < min_wasted)) {
      max_effective = effective;
      min_wasted = wasted;
      best = {h, w};
    }
  }
  LB_CHECK(best.first > 0, "select_best_resolution: no pinpoint fits a {} x {} image", height, width);
  return best;
}

std::pair<int64_t, int64_t> patch_output_size(int64_t height, int64_t width, std::pair<int64_t, int64_t> target) {
  const auto [th, tw] = target;
  const double scale_w = double(tw) / double(width), scale_h = double(th) / double(height);
  if (scale_w < scale_h) return {std::min(int64_t(std::ceil(double(height) * scale_w)), th), tw};
  return {th, std::min(int64_t(std::ceil(double(width) * scale_h)), tw)};
}

std::vector<uint8_t> llava_next_tiles(const Image& rgb, const ImageProcessorConfig& cfg, int64_t* n_tiles,
                                      std::pair<int64_t, int64_t>* best_out) {
  LB_ASSERT(rgb.channels == 3);
  const int64_t S = cfg.tile;
  const auto best = select_best_resolution(rgb.height, rgb.width, cfg.pinpoints);
  const auto [nh, nw] = patch_output_size(rgb.height, rgb.width, best);
  const Image fitted = resize(rgb, nw, nh);
  // np.pad with divmod: floor of half the slack before, the rest after.
  const int64_t top = (best.first - nh) / 2, left = (best.second - nw) / 2;
  const int64_t rows = best.first / S, cols = best.second / S;
  const int64_t n = 1 + rows * cols;
  const Image base = resize(rgb, S, S);
  std::vector<uint8_t> out(size_t(n * 3 * S * S), 0);
  auto plane = [&](int64_t tile, int64_t c) { return out.data() + size_t(((tile * 3) + c) * S * S); };
  for (int64_t y = 0; y < S; ++y)
    for (int64_t x = 0; x < S; ++x)
      for (int64_t c = 0; c < 3; ++c) plane(0, c)[y * S + x] = base.pixels[size_t((y * S + x) * 3 + c)];
  for (int64_t y = 0; y < nh; ++y) {
    const int64_t cy = y + top;
    const int64_t tr = cy / S, ty = cy % S;
    const uint8_t* src = fitted.row(y);
    for (int64_t x = 0; x < nw; ++x) {
      const int64_t cx = x + left;
      const int64_t tile = 1 + tr * cols + cx / S, tx = cx % S;
      for (int64_t c = 0; c < 3; ++c) plane(tile, c)[ty * S + tx] = src[x * 3 + c];
    }
  }
  *n_tiles = n;
  *best_out = best;
  return out;
}

ProcessedImage preprocess_llava_next(const Image& img, const ImageProcessorConfig& cfg) {
  const Image rgb = to_rgb(img);
  ProcessedImage p;
  p.height = rgb.height;
  p.width = rgb.width;
  int64_t n = 0;
  const std::vector<uint8_t> levels = llava_next_tiles(rgb, cfg, &n, &p.best);
  const int64_t S = cfg.tile;
  p.pixel_values = Tensor::empty(DType::F32, {n, 3, S, S});
  float* dst = p.pixel_values.mutable_data_as<float>();
  // One table per channel: the 256 possible values, computed as numpy does (the product in
  // double, rounded to float32, then float32 subtraction and division).
  float table[3][256];
  for (int c = 0; c < 3; ++c)
    for (int v = 0; v < 256; ++v) {
      const float scaled = float(double(v) * cfg.rescale_factor);
      table[c][v] = (scaled - cfg.mean[size_t(c)]) / cfg.std[size_t(c)];
    }
  const size_t plane = size_t(S * S);
  for (size_t i = 0; i < levels.size(); ++i) dst[i] = table[(i / plane) % 3][levels[i]];
  return p;
}

}  // namespace lowbit::vision
