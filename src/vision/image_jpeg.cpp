// JPEG through libjpeg(-turbo) with the library's defaults (the integer slow DCT and fancy
// upsampling), which is how PIL decodes: both ask libjpeg for RGB (or greyscale) output and take
// its colour conversion. As in image_png.cpp, errors longjmp back into decode_jpeg's frame, whose
// C++ objects all exist before the setjmp.
#include "vision/image.h"

#include "core/error.h"

#include <csetjmp>
#include <cstdio>
#include <jpeglib.h>
#include <jerror.h>

namespace lowbit::vision {

bool is_jpeg(std::span<const uint8_t> bytes) {
  return bytes.size() >= 3 && bytes[0] == 0xFF && bytes[1] == 0xD8 && bytes[2] == 0xFF;
}

namespace {

struct JpegError {
  jpeg_error_mgr mgr;
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX] = {0};
};

void jpeg_on_error(j_common_ptr cinfo) {
  auto* e = reinterpret_cast<JpegError*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, e->message);
  std::longjmp(e->jump, 1);
}

// A premature end of the data or a bad Huffman code would otherwise leave a partly grey image
// (PIL refuses such a file as truncated); they are errors here. Other corrupt-data warnings
// (extraneous bytes before a marker, common in camera files) are ignored, as PIL ignores them.
void jpeg_on_warning(j_common_ptr cinfo, int level) {
  if (level < 0 && (cinfo->err->msg_code == JWRN_JPEG_EOF || cinfo->err->msg_code == JWRN_HUFF_BAD_CODE))
    jpeg_on_error(cinfo);
}

}  // namespace

Image decode_jpeg(std::span<const uint8_t> bytes, const std::string& what) {
  jpeg_decompress_struct cinfo;
  JpegError err;
  Image img;
  std::string unsupported;
  cinfo.err = jpeg_std_error(&err.mgr);
  err.mgr.error_exit = jpeg_on_error;
  err.mgr.emit_message = jpeg_on_warning;
  if (setjmp(err.jump)) {
    jpeg_destroy_decompress(&cinfo);
    fail("image '{}': corrupt JPEG: {}", what, err.message);
  }
  jpeg_create_decompress(&cinfo);
  jpeg_mem_src(&cinfo, bytes.data(), static_cast<unsigned long>(bytes.size()));
  jpeg_read_header(&cinfo, TRUE);
  if (int64_t(cinfo.image_width) * int64_t(cinfo.image_height) > kMaxImagePixels) {
    unsupported = "is " + std::to_string(cinfo.image_width) + " x " + std::to_string(cinfo.image_height) +
                  " pixels, more than the 2^28 accepted";
  } else if (cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK) {
    unsupported = "has an unsupported image mode: CMYK";
  } else if (cinfo.num_components != 1 && cinfo.num_components != 3) {
    unsupported = "has an unsupported image mode: " + std::to_string(cinfo.num_components) + " components";
  }
  if (unsupported.empty()) {
    cinfo.out_color_space = cinfo.num_components == 1 ? JCS_GRAYSCALE : JCS_RGB;
    jpeg_start_decompress(&cinfo);
    img.width = cinfo.output_width;
    img.height = cinfo.output_height;
    img.channels = cinfo.output_components;
    img.pixels.resize(size_t(img.width * img.height * img.channels));
    while (cinfo.output_scanline < cinfo.output_height) {
      JSAMPROW row = img.row(cinfo.output_scanline);
      jpeg_read_scanlines(&cinfo, &row, 1);
    }
    jpeg_finish_decompress(&cinfo);
  }
  jpeg_destroy_decompress(&cinfo);
  LB_CHECK(unsupported.empty(), "image '{}' {}", what, unsupported);
  return img;
}

}  // namespace lowbit::vision
