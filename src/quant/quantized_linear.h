// QuantizedLinear: the weight W [rows = out_features, cols = in_features] of one linear layer in
// quantized form, whatever the method that produced it, and its dequantization.
//
// The fields are generic; `format` (a row of the format table, quant_format.h) says what they
// mean. The first rows:
//
//   int       w[r, c] = scale[s] * (code[r, c] - zero[s])      (uniform affine grid)
//   codebook  w[r, c] = codebook[code[r, c]] * scale[s]        (NormalFloat and the like)
//
// where s indexes the scale group of element (r, c):
//   per-row groups (flat_groups = false): s = r * ngroups + group(c), group(c) = g_idx[c] when
//     g_idx is set (GPTQ's act_order), else c / group_size; the last group of a row holds the
//     remaining cols % group_size columns when group_size does not divide cols;
//   flat groups (flat_groups = true): s = (r * cols + c) / group_size, blocks of group_size
//     consecutive elements of the row-major weight (bitsandbytes' blockwise layout).
// Formats with other parts (masks, sign planes, rotations, per-group bit widths) keep them in
// `extras` (named tensors) and `params` (scalars), which checkpoints store and read back whole.
//
// Every dequantized value is computed in fp32 and then rounded to `dequant_dtype` (the model's
// 16-bit type), which is what the reference implementations evaluate: they write the quantized
// weight back into the 16-bit model.
#pragma once

#include "core/dtype.h"
#include "core/tensor.h"
#include "quant/quant_format.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace lowbit {

struct QuantizedLinear {
  int64_t rows = 0, cols = 0;
  const QuantFormat* format = &kIntFormat;
  int bits = 4;                 // width of a code (codes are < 2^bits)
  int64_t group_size = 0;       // columns (or flat elements) per scale group
  bool flat_groups = false;
  std::vector<uint8_t> codes;   // [rows * cols], one code per byte (bit-packed when saved)
  std::vector<float> scales;    // [scale groups]
  std::vector<float> zeros;     // [scale groups], Int only, in code units
  std::vector<int32_t> g_idx;   // [cols] or empty
  std::vector<float> codebook;  // [2^bits], Codebook only
  // Format-specific tensors (e.g. the double-quantized form of NF4's scales, sign planes, masks),
  // saved beside the layer under "<linear>.extra.<name>", and format-specific scalars (a seed, a
  // version of a factorization), saved in the layout.
  std::map<std::string, Tensor> extras;
  nlohmann::json params = nlohmann::json::object();
  DType dequant_dtype = DType::F32;
  // Storage accounting: bits to store one group's scale and zero-point (16-bit scales and
  // code-width zero-points by default; 0 for a zero-point fixed by the format).
  double scale_storage_bits = 16.0;
  double zero_storage_bits = 0.0;

  int64_t groups_per_row() const { return (cols + group_size - 1) / group_size; }
  int64_t num_scale_groups() const;
  int64_t scale_index(int64_t r, int64_t c) const {
    if (flat_groups) return (r * cols + c) / group_size;
    return r * groups_per_row() + (g_idx.empty() ? c / group_size : g_idx[size_t(c)]);
  }
  // Calls f(c0, c1, s) for the runs [c0, c1) of row r's columns that share scale group s, in
  // column order: scale_index(r, c) == s for every c of a run, without a division per weight
  // (a g_idx gives runs of one column).
  template <typename F>
  void for_each_scale_run(int64_t r, F&& f) const {
    if (flat_groups) {
      const int64_t base = r * cols;
      for (int64_t c = 0; c < cols;) {
        const int64_t s = (base + c) / group_size;
        const int64_t end = std::min(cols, (s + 1) * group_size - base);
        f(c, end, s);
        c = end;
      }
    } else if (!g_idx.empty()) {
      const int64_t row0 = r * groups_per_row();
      for (int64_t c = 0; c < cols; ++c) f(c, c + 1, row0 + g_idx[size_t(c)]);
    } else {
      const int64_t gpr = groups_per_row();
      for (int64_t g = 0; g < gpr; ++g) f(g * group_size, std::min(cols, (g + 1) * group_size), r * gpr + g);
    }
  }
  const char* format_name() const { return format->name; }
  // Dequantized weight, row-major [rows, cols], rounded to dequant_dtype's precision.
  void dequantize(float* out) const;
  Tensor dequantize_f32() const;
  // The weight in dequant_dtype (BF16/F16/F32), as a 16-bit model would hold it.
  Tensor dequantize_as_stored() const;
  // Storage cost per weight (the format's count: codes, scales, zero-points, g_idx, masks, ...).
  double bits_per_weight() const;
  // Checks the generic invariants (shape, code count and range, g_idx range, finite scales) and
  // the format's own; throws lowbit::Error naming `what`.
  void validate(const std::string& what) const;
};

// Rounds v to the precision of dtype (BF16/F16: round to nearest even; F32: unchanged).
float round_to_dtype(float v, DType dtype);

// Codes packed LSB-first, row by row: row r takes ceil(cols * bits / 8) bytes, code c of the row
// at bits [c * bits, (c + 1) * bits) of that byte string.
std::vector<uint8_t> pack_codes(const std::vector<uint8_t>& codes, int64_t rows, int64_t cols, int bits);
std::vector<uint8_t> unpack_codes(const uint8_t* packed, int64_t rows, int64_t cols, int bits);
inline int64_t packed_row_bytes(int64_t cols, int bits) { return (cols * bits + 7) / 8; }

}  // namespace lowbit
