// PNG through libpng's low-level API. The simplified png_image API is not used: it converts to
// sRGB when a file carries a gAMA chunk, and PIL (the reference) ignores gamma.
//
// libpng reports errors by longjmp. Every C++ object that lives across the setjmp is constructed
// before it, in decode_png's frame, so the jump skips no destructor; the error text is carried out
// in that frame and thrown after libpng's structures are released.
#include "vision/image.h"

#include "core/error.h"

#include <png.h>

#include <csetjmp>
#include <cstring>

namespace lowbit::vision {

bool is_png(std::span<const uint8_t> bytes) {
  static const uint8_t sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  return bytes.size() >= 8 && std::memcmp(bytes.data(), sig, 8) == 0;
}

namespace {

struct PngReader {
  std::span<const uint8_t> bytes;
  size_t pos = 0;
  char error[256] = {0};
};

void png_read_bytes(png_structp png, png_bytep out, png_size_t n) {
  auto* r = static_cast<PngReader*>(png_get_io_ptr(png));
  if (n > r->bytes.size() - r->pos) {
    std::snprintf(r->error, sizeof r->error, "truncated (needs %zu more bytes at offset %zu, has %zu)", size_t(n),
                  r->pos, r->bytes.size() - r->pos);
    png_longjmp(png, 1);
  }
  std::memcpy(out, r->bytes.data() + r->pos, n);
  r->pos += n;
}

void png_on_error(png_structp png, png_const_charp msg) {
  auto* r = static_cast<PngReader*>(png_get_error_ptr(png));
  if (!r->error[0]) std::snprintf(r->error, sizeof r->error, "%s", msg);
  png_longjmp(png, 1);
}

void png_on_warning(png_structp, png_const_charp) {}  // benign (e.g. an sRGB profile libpng dislikes)

}  // namespace

Image decode_png(std::span<const uint8_t> bytes, const std::string& what) {
  PngReader reader;
  reader.bytes = bytes;
  Image img;
  std::vector<png_bytep> rows;
  std::string unsupported;
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &reader, png_on_error, png_on_warning);
  LB_CHECK(png != nullptr, "image '{}': cannot create a PNG reader", what);
  png_infop info = png_create_info_struct(png);
  if (!info) {
    png_destroy_read_struct(&png, nullptr, nullptr);
    fail("image '{}': cannot create a PNG reader", what);
  }
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_read_struct(&png, &info, nullptr);
    fail("image '{}': corrupt PNG: {}", what, reader.error[0] ? reader.error : "libpng error");
  }
  png_set_read_fn(png, &reader, png_read_bytes);
  png_read_info(png, info);
  const png_uint_32 w = png_get_image_width(png, info), h = png_get_image_height(png, info);
  const int depth = png_get_bit_depth(png, info), type = png_get_color_type(png, info);
  if (int64_t(w) * int64_t(h) > kMaxImagePixels) {
    unsupported = "is " + std::to_string(w) + " x " + std::to_string(h) + " pixels, more than the 2^28 accepted";
  } else if (depth == 16 && (type == PNG_COLOR_TYPE_GRAY || type == PNG_COLOR_TYPE_GRAY_ALPHA)) {
    unsupported = "has an unsupported image mode: 16-bit greyscale (PIL mode I;16)";
  }
  if (unsupported.empty()) {
    png_set_expand(png);  // palette -> RGB(A), grey < 8 bits -> 8 bits, tRNS -> alpha
    if (depth == 16) png_set_strip_16(png);  // the high byte, as PIL's RGB;16B unpacking keeps
    png_set_interlace_handling(png);
    png_read_update_info(png, info);
    img.width = w;
    img.height = h;
    img.channels = png_get_channels(png, info);
    LB_ASSERT(img.channels >= 1 && img.channels <= 4 && png_get_rowbytes(png, info) == size_t(w) * size_t(img.channels));
    img.pixels.resize(size_t(w) * h * size_t(img.channels));
    rows.resize(h);
    for (png_uint_32 y = 0; y < h; ++y) rows[y] = img.row(y);
    png_read_image(png, rows.data());
  }
  png_destroy_read_struct(&png, &info, nullptr);
  LB_CHECK(unsupported.empty(), "image '{}' {}", what, unsupported);
  return img;
}

}  // namespace lowbit::vision
