// LLaVA-Next's image preprocessing (transformers' LlavaNextImageProcessor, PIL backend), from a
// decoded image to the pixel values the vision tower reads.
//
// For an RGB image of height h and width w and a tile size S (crop_size, 336 for LLaVA-Next-8B):
//  1. best = select_best_resolution((h, w), image_grid_pinpoints): the pinpoint (H, W) that keeps
//     the most of the image's pixels when it is scaled to fit, ties to the least padding;
//  2. the image resized (PIL bicubic, vision/resample.h) to fit best, keeping its aspect ratio
//     (patch_output_size), then padded with black (level 0) to best, centred (floor before);
//  3. that canvas cut into (H/S) x (W/S) tiles of S x S, row-major;
//  4. the whole image resized (squashed) to S x S: the base tile, which comes first;
//  5. each value v (a level 0..255) becomes float32((float32(v * rescale_factor) - mean[c]) / std[c])
//     with rescale_factor = 1/255 applied in double, mean/std in float32 (CLIP's by default).
// pixel_values [1 + (H/S)(W/S), 3, S, S] float32, channel-planar. The result equals the
// processor's output bit for bit when the decoded pixels equal PIL's.
#pragma once

#include "core/tensor.h"
#include "vision/image.h"

#include <array>
#include <string>
#include <utility>
#include <vector>

namespace lowbit::vision {

struct ImageProcessorConfig {
  int64_t tile = 336;                 // crop_size (== size.shortest_edge; both are required equal)
  std::vector<std::pair<int64_t, int64_t>> pinpoints;  // (height, width), multiples of tile
  double rescale_factor = 1.0 / 255.0;
  std::array<float, 3> mean{0.48145466f, 0.4578275f, 0.40821073f};
  std::array<float, 3> std{0.26862954f, 0.26130258f, 0.27577711f};
  std::string source;                 // the file it came from, for messages
};

// From preprocessor_config.json text (LlavaNextImageProcessor). Refuses with the file and field
// named: a resample other than bicubic (3), do_* flags that change the pipeline above
// (do_resize/do_center_crop/do_rescale/do_normalize/do_convert_rgb/do_pad false), a tile size
// that differs between size and crop_size, pinpoints that are not positive multiples of the tile.
ImageProcessorConfig parse_image_processor_config(const std::string& json_text, const std::string& path);
ImageProcessorConfig load_image_processor_config(const std::string& path);
// LLaVA-Next's defaults (336-px tiles, the five pinpoints of llava-hf/llama3-llava-next-8b-hf).
ImageProcessorConfig default_llava_next_processor_config();

// transformers' select_best_resolution: (height, width) of the chosen pinpoint.
std::pair<int64_t, int64_t> select_best_resolution(int64_t height, int64_t width,
                                                   const std::vector<std::pair<int64_t, int64_t>>& pinpoints);
// transformers' get_patch_output_size: the size (height, width) the image is resized to so that
// it fits target, keeping its aspect ratio.
std::pair<int64_t, int64_t> patch_output_size(int64_t height, int64_t width, std::pair<int64_t, int64_t> target);

struct ProcessedImage {
  Tensor pixel_values;            // [tiles, 3, S, S] float32
  int64_t height = 0, width = 0;  // the original image's size (image_sizes in transformers)
  std::pair<int64_t, int64_t> best;  // the chosen pinpoint (height, width)
};

// Steps 1-5 above on an image of any channel count (converted with to_rgb first).
ProcessedImage preprocess_llava_next(const Image& img, const ImageProcessorConfig& cfg);
// The 8-bit tiles (steps 1-4) [tiles, 3, S, S] before normalization, for tests and for devices
// that normalize themselves.
std::vector<uint8_t> llava_next_tiles(const Image& rgb, const ImageProcessorConfig& cfg, int64_t* n_tiles,
                                      std::pair<int64_t, int64_t>* best);

}  // namespace lowbit::vision
