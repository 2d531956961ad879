#include "quant/quantized_linear.h"

#include "core/error.h"

#include <algorithm>
#include <cmath>

namespace lowbit {

float round_to_dtype(float v, DType dtype) {
  switch (dtype) {
    case DType::BF16: return bf16_to_f32(f32_to_bf16(v));
    case DType::F16: return f16_to_f32(f32_to_f16(v));
    default: return v;
  }
}

int64_t QuantizedLinear::num_scale_groups() const {
  if (flat_groups) return (rows * cols + group_size - 1) / group_size;
  return rows * groups_per_row();
}

void QuantizedLinear::dequantize(float* out) const {
  LB_ASSERT(format != nullptr);
  (format->dequantize_fast != nullptr ? format->dequantize_fast : format->dequantize)(*this, out);
  if (dequant_dtype == DType::F32) return;
  const int64_t n = rows * cols;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) out[i] = round_to_dtype(out[i], dequant_dtype);
}

Tensor QuantizedLinear::dequantize_f32() const {
  Tensor t = Tensor::empty(DType::F32, {rows, cols});
  dequantize(t.mutable_data_as<float>());
  return t;
}

Tensor QuantizedLinear::dequantize_as_stored() const {
  Tensor f = dequantize_f32();
  if (dequant_dtype == DType::F32) return f;
  Tensor t = Tensor::empty(dequant_dtype, {rows, cols});
  const float* src = f.data_as<float>();
  uint16_t* dst = t.mutable_data_as<uint16_t>();
  const int64_t n = rows * cols;
  if (dequant_dtype == DType::BF16)
    for (int64_t i = 0; i < n; ++i) dst[i] = f32_to_bf16(src[i]);
  else
    for (int64_t i = 0; i < n; ++i) dst[i] = f32_to_f16(src[i]);
  return t;
}

double QuantizedLinear::bits_per_weight() const { return format->bits_per_weight(*this); }

void QuantizedLinear::validate(const std::string& what) const {
  LB_CHECK(format != nullptr, "{}: no format", what);
  LB_CHECK(rows > 0 && cols > 0, "{}: empty weight [{}, {}]", what, rows, cols);
  LB_CHECK(bits >= 1 && bits <= 8, "{}: {} bits per code is outside 1..8", what, bits);
  LB_CHECK(codes.empty() || int64_t(codes.size()) == rows * cols, "{}: {} codes for a [{}, {}] weight", what,
           codes.size(), rows, cols);
  const int maxq = (1 << bits) - 1;
  const int64_t n = int64_t(codes.size());
  int top = 0;
#pragma omp parallel for schedule(static) reduction(max : top) if (n > (int64_t(1) << 18))
  for (int64_t i = 0; i < n; ++i) top = std::max(top, int(codes[size_t(i)]));
  LB_CHECK(top <= maxq, "{}: code {} exceeds {} bits", what, top, bits);
  if (!g_idx.empty()) {
    LB_CHECK(group_size > 0 && !flat_groups && int64_t(g_idx.size()) == cols,
             "{}: g_idx has {} entries for {} columns", what, g_idx.size(), cols);
    for (int32_t g : g_idx)
      LB_CHECK(g >= 0 && g < groups_per_row(), "{}: g_idx entry {} outside [0, {})", what, g, groups_per_row());
  }
  for (float s : scales) LB_CHECK(std::isfinite(s), "{}: non-finite scale", what);
  for (float z : zeros) LB_CHECK(std::isfinite(z), "{}: non-finite zero-point", what);
  format->validate(*this, what);
}

std::vector<uint8_t> pack_codes(const std::vector<uint8_t>& codes, int64_t rows, int64_t cols, int bits) {
  const int64_t rb = packed_row_bytes(cols, bits);
  std::vector<uint8_t> out(size_t(rows * rb), 0);
  for (int64_t r = 0; r < rows; ++r) {
    uint8_t* dst = out.data() + r * rb;
    for (int64_t c = 0; c < cols; ++c) {
      const uint32_t q = codes[size_t(r * cols + c)];
      const int64_t bit = c * bits;
      // A code spans at most two bytes (bits <= 8).
      const uint32_t shifted = q << (bit % 8);
      dst[bit / 8] |= uint8_t(shifted & 0xff);
      if ((bit % 8) + bits > 8) dst[bit / 8 + 1] |= uint8_t(shifted >> 8);
    }
  }
  return out;
}

std::vector<uint8_t> unpack_codes(const uint8_t* packed, int64_t rows, int64_t cols, int bits) {
  const int64_t rb = packed_row_bytes(cols, bits);
  const uint32_t mask = (1u << bits) - 1;
  std::vector<uint8_t> out(size_t(rows * cols));
  for (int64_t r = 0; r < rows; ++r) {
    const uint8_t* src = packed + r * rb;
    for (int64_t c = 0; c < cols; ++c) {
      const int64_t bit = c * bits;
      uint32_t v = src[bit / 8];
      if ((bit % 8) + bits > 8) v |= uint32_t(src[bit / 8 + 1]) << 8;
      out[size_t(r * cols + c)] = uint8_t((v >> (bit % 8)) & mask);
    }
  }
  return out;
}

}  // namespace lowbit
