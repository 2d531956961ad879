#include "vision/resample.h"

#include "core/error.h"

#include <algorithm>
#include <cmath>

namespace lowbit::vision {

namespace {

constexpr int kPrecisionBits = 32 - 8 - 2;

double bicubic(double x) {
  constexpr double a = -0.5;
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

// Fixed-point weights of one pass: output i reads inputs first[i] .. first[i] + count[i] - 1 with
// weights w[i * ksize + j].
struct Coeffs {
  int ksize = 0;
  std::vector<int> first, count;
  std::vector<int32_t> w;
};

Coeffs precompute(int64_t in_size, int64_t out_size) {
  const double support_base = 2.0;
  double scale = double(in_size) / double(out_size);
  const double filterscale = scale < 1.0 ? 1.0 : scale;
  const double support = support_base * filterscale;
  Coeffs c;
  c.ksize = int(std::ceil(support)) * 2 + 1;
  c.first.resize(size_t(out_size));
  c.count.resize(size_t(out_size));
  c.w.assign(size_t(out_size) * size_t(c.ksize), 0);
  std::vector<double> k(size_t(c.ksize));
  for (int64_t xx = 0; xx < out_size; ++xx) {
    const double center = (double(xx) + 0.5) * scale;
    const double ss = 1.0 / filterscale;
    // (int) truncates toward zero, as in the C original; negative values then clamp to 0.
    int xmin = int(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = int(center + support + 0.5);
    if (xmax > in_size) xmax = int(in_size);
    xmax -= xmin;
    double ww = 0.0;
    for (int x = 0; x < xmax; ++x) {
      k[size_t(x)] = bicubic((x + xmin - center + 0.5) * ss);
      ww += k[size_t(x)];
    }
    for (int x = 0; x < xmax; ++x) {
      const double v = ww != 0.0 ? k[size_t(x)] / ww : k[size_t(x)];
      c.w[size_t(xx) * size_t(c.ksize) + size_t(x)] =
          v < 0 ? int32_t(-0.5 + v * (1 << kPrecisionBits)) : int32_t(0.5 + v * (1 << kPrecisionBits));
    }
    c.first[size_t(xx)] = xmin;
    c.count[size_t(xx)] = xmax;
  }
  return c;
}

inline uint8_t clip8(int32_t acc) {
  const int32_t v = acc >> kPrecisionBits;  // arithmetic shift, as PIL's lookup index
  return uint8_t(v < 0 ? 0 : v > 255 ? 255 : v);
}

Image horizontal(const Image& src, int64_t out_w) {
  const Coeffs c = precompute(src.width, out_w);
  Image out{out_w, src.height, src.channels, {}};
  out.pixels.resize(size_t(out_w * src.height * src.channels));
  const int ch = src.channels;
#pragma omp parallel for schedule(static) if (src.height * out_w > 65536)
  for (int64_t y = 0; y < src.height; ++y) {
    const uint8_t* in = src.row(y);
    uint8_t* o = out.row(y);
    for (int64_t xx = 0; xx < out_w; ++xx) {
      const int32_t* k = &c.w[size_t(xx) * size_t(c.ksize)];
      const int x0 = c.first[size_t(xx)], n = c.count[size_t(xx)];
      for (int ci = 0; ci < ch; ++ci) {
        int32_t acc = 1 << (kPrecisionBits - 1);
        for (int x = 0; x < n; ++x) acc += int32_t(in[(x0 + x) * ch + ci]) * k[x];
        o[xx * ch + ci] = clip8(acc);
      }
    }
  }
  return out;
}

Image vertical(const Image& src, int64_t out_h) {
  const Coeffs c = precompute(src.height, out_h);
  Image out{src.width, out_h, src.channels, {}};
  out.pixels.resize(size_t(src.width * out_h * src.channels));
  const int64_t rowlen = src.width * src.channels;
#pragma omp parallel for schedule(static) if (out_h * rowlen > 65536)
  for (int64_t yy = 0; yy < out_h; ++yy) {
    const int32_t* k = &c.w[size_t(yy) * size_t(c.ksize)];
    const int y0 = c.first[size_t(yy)], n = c.count[size_t(yy)];
    uint8_t* o = out.row(yy);
    for (int64_t i = 0; i < rowlen; ++i) {
      int32_t acc = 1 << (kPrecisionBits - 1);
      for (int y = 0; y < n; ++y) acc += int32_t(src.pixels[size_t((y0 + y) * rowlen + i)]) * k[y];
      o[i] = clip8(acc);
    }
  }
  return out;
}

}  // namespace

Image resize(const Image& src, int64_t width, int64_t height, Resample) {
  LB_CHECK(width > 0 && height > 0, "resize: target size {} x {} is not positive", width, height);
  LB_CHECK(src.width > 0 && src.height > 0, "resize: source image is empty ({} x {})", src.width, src.height);
  // Pillow 13's order: the vertical pass first when the height shrinks by more than twice as many
  // pixels as the width (fewer rows for the horizontal pass), else the horizontal pass first. The
  // 8-bit rounding between the passes makes the order visible in the result.
  const bool vertical_first = src.height - height > 0 && src.height - height > (src.width - width) * 2;
  Image cur = src;
  if (vertical_first) {
    cur = vertical(cur, height);
    if (width != src.width) cur = horizontal(cur, width);
  } else {
    if (width != src.width) cur = horizontal(cur, width);
    if (height != src.height) cur = vertical(cur, height);
  }
  return cur;
}

}  // namespace lowbit::vision
