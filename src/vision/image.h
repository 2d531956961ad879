// Decoded images and their conversion to RGB, as LLaVA-Next's image processor sees them.
//
// Decoding uses the system libraries (libpng, libjpeg-turbo): PNG and JPEG are recognised by
// their content (signature), not by the file name. An Image holds 8-bit samples, interleaved:
//   pixels[(y * width + x) * channels + c]   y < height, x < width, c < channels
// with channels 1 (L, grey), 2 (LA), 3 (RGB) or 4 (RGBA), as the file stores them after
// expansion to 8 bits (palette -> RGB or RGBA, 1/2/4-bit grey -> 8-bit grey scaled to 0..255,
// a tRNS chunk -> an alpha channel, 16-bit colour -> its high byte, as PIL reads them).
//
// Refused with a lowbit::Error naming the file: anything not PNG or JPEG, a corrupt or truncated
// file, 16-bit greyscale PNGs (PIL opens them as 32-bit integer images whose RGB conversion clips
// at 255; no faithful 8-bit reading exists), CMYK/YCCK JPEGs (PIL's own CMYK conversion), images
// of more than 2^28 pixels.
//
// EXIF orientation is not applied: transformers' image processor does not apply it to a PIL
// image it is given either.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace lowbit::vision {

struct Image {
  int64_t width = 0, height = 0;
  int channels = 0;             // 1 L, 2 LA, 3 RGB, 4 RGBA
  std::vector<uint8_t> pixels;  // [height, width, channels]

  const uint8_t* row(int64_t y) const { return pixels.data() + size_t(y * width * channels); }
  uint8_t* row(int64_t y) { return pixels.data() + size_t(y * width * channels); }
};

// Decodes a PNG or JPEG held in memory; `what` names it in errors.
Image decode_image(std::span<const uint8_t> bytes, const std::string& what);
// Reads and decodes a file.
Image read_image(const std::string& path);

// The image as 3-channel RGB, the way transformers' convert_to_rgb does it on a PIL image: grey
// is replicated; an image with alpha is composited onto opaque white with PIL's
// Image.alpha_composite integer arithmetic (so a fully transparent pixel becomes white).
Image to_rgb(const Image& img);

// Per-format decoders (vision/image_png.cpp, vision/image_jpeg.cpp).
Image decode_png(std::span<const uint8_t> bytes, const std::string& what);
Image decode_jpeg(std::span<const uint8_t> bytes, const std::string& what);
bool is_png(std::span<const uint8_t> bytes);
bool is_jpeg(std::span<const uint8_t> bytes);

// Upper bound on width * height accepted from a file header (a 16384 x 16384 image).
inline constexpr int64_t kMaxImagePixels = int64_t(1) << 28;

}  // namespace lowbit::vision
