#include "vision/image.h"

#include "core/error.h"

#include <fstream>
#include <iterator>

namespace lowbit::vision {

Image decode_image(std::span<const uint8_t> bytes, const std::string& what) {
  if (is_png(bytes)) return decode_png(bytes, what);
  if (is_jpeg(bytes)) return decode_jpeg(bytes, what);
  fail("image '{}': not a PNG or JPEG file ({} bytes; the first bytes match neither signature)", what, bytes.size());
}

Image read_image(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  LB_CHECK(in.good(), "image '{}': cannot open the file", path);
  std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  LB_CHECK(!in.bad(), "image '{}': read error", path);
  return decode_image(bytes, path);
}

namespace {

// PIL's AlphaComposite.c with an opaque white destination: out = DIV255-style rounding of
// (C*a + 255*(255-a)) with 7 extra bits of precision. With the destination's alpha at 255 the
// general formula's coefficients reduce to a*128 and (255-a)*128 exactly, so this is bit-equal.
inline uint8_t over_white(uint32_t c, uint32_t a) {
  if (a == 0) return 255;
  const uint32_t q = (c * a + 255u * (255u - a)) * 128u + 0x4000u;
  return uint8_t((((q >> 8) + q) >> 8) >> 7);
}

}  // namespace

Image to_rgb(const Image& img) {
  LB_ASSERT(img.channels >= 1 && img.channels <= 4);
  if (img.channels == 3) return img;
  Image out;
  out.width = img.width;
  out.height = img.height;
  out.channels = 3;
  const size_t n = size_t(img.width * img.height);
  out.pixels.resize(n * 3);
  const uint8_t* s = img.pixels.data();
  uint8_t* d = out.pixels.data();
  for (size_t i = 0; i < n; ++i) {
    switch (img.channels) {
      case 1: d[3 * i] = d[3 * i + 1] = d[3 * i + 2] = s[i]; break;
      case 2: d[3 * i] = d[3 * i + 1] = d[3 * i + 2] = over_white(s[2 * i], s[2 * i + 1]); break;
      case 4:
        for (int c = 0; c < 3; ++c) d[3 * i + size_t(c)] = over_white(s[4 * i + size_t(c)], s[4 * i + 3]);
        break;
    }
  }
  return out;
}

}  // namespace lowbit::vision
