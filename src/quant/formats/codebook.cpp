// Format "codebook": a table of 2^bits values scaled per group (NormalFloat; bitsandbytes' NF4
// with blocks of 64 flat elements).
//
//   w[r, c] = codebook[code[r, c]] * scale[s],  s = QuantizedLinear::scale_index(r, c)
//
// With double quantization (QLoRA's DQ) `scales` holds the decoded absmax values and the extras
// absmax_codes (U8 [blocks], indices into bitsandbytes' signed dynamic map), absmax_scales (F32
// [ceil(blocks / 256)]) and absmax_offset (F32 [1]) hold the 8-bit form the storage count is
// for: scale[i] = map[absmax_codes[i]] * absmax_scales[i / 256] + offset (nf4.cpp). The decoded
// scales are what every reference evaluates, so they are kept exactly; validate checks the
// extras' presence and sizes.
#include "core/error.h"
#include "quant/formats/example_random.h"
#include "quant/nf4.h"
#include "quant/quantized_linear.h"

namespace lowbit {

namespace {

void dequantize_ref(const QuantizedLinear& q, float* out) {
  for (int64_t r = 0; r < q.rows; ++r)
    for (int64_t c = 0; c < q.cols; ++c)
      out[r * q.cols + c] = q.codebook[q.codes[size_t(r * q.cols + c)]] * q.scales[size_t(q.scale_index(r, c))];
}

// The same products, rows in parallel, each group's scale read once per run.
void dequantize_fast(const QuantizedLinear& q, float* out) {
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < q.rows; ++r) {
    const uint8_t* code = q.codes.data() + r * q.cols;
    float* o = out + r * q.cols;
    q.for_each_scale_run(r, [&](int64_t c0, int64_t c1, int64_t s) {
      const float scale = q.scales[size_t(s)];
      for (int64_t c = c0; c < c1; ++c) o[c] = q.codebook[code[c]] * scale;
    });
  }
}

double bits_per_weight(const QuantizedLinear& q) {
  const double n = double(q.rows) * double(q.cols);
  double total = double(q.bits) * n + double(q.num_scale_groups()) * (q.scale_storage_bits + q.zero_storage_bits);
  if (!q.g_idx.empty()) total += 32.0 * double(q.cols);
  return total / n;
}

void validate(const QuantizedLinear& q, const std::string& what) {
  LB_CHECK(q.group_size > 0, "{}: group size {} must be positive", what, q.group_size);
  LB_CHECK(int64_t(q.codes.size()) == q.rows * q.cols, "{}: {} codes for a [{}, {}] weight", what, q.codes.size(),
           q.rows, q.cols);
  LB_CHECK(int64_t(q.scales.size()) == q.num_scale_groups(), "{}: {} scales, expected {}", what, q.scales.size(),
           q.num_scale_groups());
  LB_CHECK(q.codebook.size() == (size_t(1) << q.bits), "{}: codebook of {} values for {}-bit codes", what,
           q.codebook.size(), q.bits);
  LB_CHECK(q.zeros.empty(), "{}: format codebook has no zero-points ({} given)", what, q.zeros.size());
  const bool dq = q.extras.count("absmax_codes") > 0;
  if (dq) {
    for (const char* name : {"absmax_scales", "absmax_offset"})
      LB_CHECK(q.extras.count(name), "{}: double-quantized scales lack extra '{}'", what, name);
    const Tensor& codes = q.extras.at("absmax_codes");
    LB_CHECK(codes.dtype() == DType::U8 && codes.numel() == int64_t(q.scales.size()),
             "{}: extra absmax_codes holds {} {} values for {} scales", what, codes.numel(),
             dtype_name(codes.dtype()), q.scales.size());
    const Tensor& s2 = q.extras.at("absmax_scales");
    LB_CHECK(s2.dtype() == DType::F32 && s2.numel() == (int64_t(q.scales.size()) + 255) / 256,
             "{}: extra absmax_scales holds {} {} values for {} scales in blocks of 256", what, s2.numel(),
             dtype_name(s2.dtype()), q.scales.size());
    const Tensor& off = q.extras.at("absmax_offset");
    LB_CHECK(off.dtype() == DType::F32 && off.numel() == 1, "{}: extra absmax_offset must be one F32 value", what);
  }
}

// NF4 in flat blocks of 64 with double-quantized scales (the decoded scales from the 8-bit form,
// as nf4.cpp keeps them).
QuantizedLinear example(int64_t rows, int64_t cols, uint64_t seed) {
  ExampleRandom rng(seed);
  QuantizedLinear q;
  q.rows = rows;
  q.cols = cols;
  q.format = &kCodebookFormat;
  q.bits = 4;
  q.group_size = 64;
  q.flat_groups = true;
  q.dequant_dtype = DType::BF16;
  q.codes = rng.codes(rows * cols, 4);
  q.codebook.assign(nf4_values().begin(), nf4_values().end());
  const int64_t blocks = q.num_scale_groups();
  Tensor codes = Tensor::empty(DType::U8, {blocks});
  for (int64_t i = 0; i < blocks; ++i) codes.mutable_data_as<uint8_t>()[i] = uint8_t(rng.below(256));
  Tensor s2 = rng.f32({(blocks + 255) / 256}, 0.01f, 0.05f);
  Tensor off = rng.f32({1}, 0.02f, 0.06f);
  for (int64_t i = 0; i < blocks; ++i)
    q.scales.push_back(dynamic_map_signed()[codes.data_as<uint8_t>()[i]] * s2.data_as<float>()[i / 256] +
                       off.data_as<float>()[0]);
  q.scale_storage_bits = 8.0 + 32.0 / 256.0;
  q.extras["absmax_codes"] = std::move(codes);
  q.extras["absmax_scales"] = std::move(s2);
  q.extras["absmax_offset"] = std::move(off);
  return q;
}

}  // namespace

const QuantFormat kCodebookFormat = {"codebook", 1, "w = codebook[code] * scale[group]", dequantize_ref,
                                     bits_per_weight, validate, dequantize_fast, example};

}  // namespace lowbit
