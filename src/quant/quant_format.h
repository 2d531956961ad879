// The format table: every layout a quantized linear can have is one row (ggml's type-traits habit).
//
// A QuantizedLinear (quantized_linear.h) holds its data in generic fields (codes, one per byte;
// scales, zeros, g_idx, codebook), in named `extras` tensors and in a `params` JSON object; its
// `format` points at the row that gives those fields their meaning:
//
//   name, version     recorded in every checkpoint's layout; version changes when the meaning of
//                     the stored tensors changes, and readers refuse versions they do not know
//   dequantize        the scalar reference: w[r, c] in fp32 for every element, before the rounding
//                     to the model's dtype (QuantizedLinear::dequantize rounds). Fast paths and
//                     kernels are tested against it.
//   bits_per_weight   the true storage cost: codes, scales, zero-points, masks, tables, ...
//   validate          the format's own invariants (sizes, code ranges, the extras it needs)
//   dequantize_fast   optional faster CPU version of `dequantize` (same results bit for bit)
//
// Checkpoint I/O is generic over the fields (quantized_linear_io.h): it writes what a linear
// holds and lists it in the layout, so a new format needs no I/O code. Adding a format = one file
// in src/quant/formats/ defining its row, plus one line in kFormats (quant_format.cpp).
#pragma once

#include <span>
#include <string>
#include <string_view>

namespace lowbit {

struct QuantizedLinear;

struct QuantFormat {
  const char* name;
  int version;
  const char* summary;  // one line: the formula, for `lowbit methods` and `inspect`
  void (*dequantize)(const QuantizedLinear& q, float* out);
  double (*bits_per_weight)(const QuantizedLinear& q);
  void (*validate)(const QuantizedLinear& q, const std::string& what);
  void (*dequantize_fast)(const QuantizedLinear& q, float* out) = nullptr;
};

// The rows, in table order.
std::span<const QuantFormat* const> quant_formats();
// The row named `name`; throws lowbit::Error naming the known formats when there is none.
const QuantFormat& find_quant_format(std::string_view name);

// The first rows, which QuantizedLinear's defaults and the int/codebook methods name directly.
extern const QuantFormat kIntFormat;       // formats/int.cpp
extern const QuantFormat kCodebookFormat;  // formats/codebook.cpp
extern const QuantFormat kSlimFormat;      // formats/slim_format.cpp
extern const QuantFormat kQuipFormat;      // formats/quip_format.cpp
extern const QuantFormat kPbllmFormat;     // formats/pbllm_format.cpp
extern const QuantFormat kBillmFormat;     // formats/billm_format.cpp
extern const QuantFormat kIcqFormat;       // formats/icq_format.cpp
extern const QuantFormat kFdbFormat;       // formats/fdb_format.cpp

}  // namespace lowbit
