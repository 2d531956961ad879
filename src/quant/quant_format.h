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
//   example           a small linear of this format from known parameters: every code, scale
//                     and extra drawn at random (seeded) within the format's ranges, every
//                     optional tensor of the format present. rows and cols are multiples of 64
//                     (at least 64). The format contract tests (tests/model/test_contracts.cpp)
//                     run every row's example: it validates, survives write -> open byte for
//                     byte, its fast dequantization equals the reference, its bits_per_weight
//                     agrees with the bytes its tensors hold (below), and a copy with one owned
//                     tensor of the wrong size, or a code out of range, is refused by validate
//                     naming that tensor. A row without an example fails them.
//
// bits_per_weight counts what a deployed layout stores, which is not always what the checkpoint
// holds: fp32 scales and offsets are counted at the 16 bits (or fewer) a deployment keeps,
// codes at their own width where a format stores them at a wider common one (slim), tables that
// are constants of the format (a codebook) not at all, and scalar params (a seed) at 64 bits.
// So for every linear: stored / 4 <= bits_per_weight <= stored + 64 * (params scalars) / weights,
// stored being the bits of the tensors the checkpoint writes per weight.
//
// Checkpoint I/O is generic over the fields (quantized_linear_io.h): it writes what a linear
// holds and lists it in the layout, so a new format needs no I/O code. Adding a format = one file
// in src/quant/formats/ defining its row, plus one line in kFormats (quant_format.cpp).
#pragma once

#include <cstdint>
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
  QuantizedLinear (*example)(int64_t rows, int64_t cols, uint64_t seed) = nullptr;
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
