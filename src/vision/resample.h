// Image resizing with PIL's semantics (Pillow's libImaging/Resample.c), so that resized pixels
// equal those transformers' PIL-backed image processors produce, bit for bit.
//
// PIL resizes 8-bit images in two separable passes with 8-bit samples between them: horizontal
// first, unless the height shrinks by more than twice as many pixels as the width, then vertical
// first (Pillow 13's rule; Pillow before it always ran the horizontal pass first, which changes
// such images by a level or two here and there). For each output coordinate it centres the filter at (i + 0.5) * in/out, widens the
// support by in/out when downscaling (antialiasing), normalises the weights to sum 1 in double,
// rounds them to fixed point with 22 fraction bits, accumulates in int32 from a rounding offset of
// 2^21 and clips to 0..255. A pass whose size does not change is skipped.
#pragma once

#include "vision/image.h"

namespace lowbit::vision {

enum class Resample { Bicubic };  // PIL.Image.BICUBIC (3): a = -0.5, support 2

// `src` resized to width x height (any channel count; each channel on its own).
Image resize(const Image& src, int64_t width, int64_t height, Resample filter = Resample::Bicubic);

}  // namespace lowbit::vision
