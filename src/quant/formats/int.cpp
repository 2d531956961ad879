// Format "int": the uniform affine grid of RTN, GPTQ, AWQ and SmoothQuant.
//
//   w[r, c] = scale[s] * (code[r, c] - zero[s]),  s = QuantizedLinear::scale_index(r, c)
//
// codes < 2^bits; zero-points are in code units (integers for every method lowbit has, stored
// as fp32); g_idx, when present, maps each column to its group (GPTQ's act_order).
#include "core/error.h"
#include "quant/formats/example_random.h"
#include "quant/quantized_linear.h"

namespace lowbit {

namespace {

void check_groups(const QuantizedLinear& q, const std::string& what) {
  LB_CHECK(q.group_size > 0, "{}: group size {} must be positive", what, q.group_size);
  LB_CHECK(int64_t(q.codes.size()) == q.rows * q.cols, "{}: {} codes for a [{}, {}] weight", what, q.codes.size(),
           q.rows, q.cols);
  LB_CHECK(int64_t(q.scales.size()) == q.num_scale_groups(), "{}: {} scales, expected {}", what, q.scales.size(),
           q.num_scale_groups());
}

void dequantize_ref(const QuantizedLinear& q, float* out) {
  for (int64_t r = 0; r < q.rows; ++r)
    for (int64_t c = 0; c < q.cols; ++c) {
      const int64_t s = q.scale_index(r, c);
      out[r * q.cols + c] = q.scales[size_t(s)] * (float(q.codes[size_t(r * q.cols + c)]) - q.zeros[size_t(s)]);
    }
}

// The same products, rows in parallel, each group's scale and zero-point read once per run
// (scale_index's two divisions per weight had made this the slowest host pass around a GPU
// solve at 8B shapes).
void dequantize_fast(const QuantizedLinear& q, float* out) {
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < q.rows; ++r) {
    const uint8_t* code = q.codes.data() + r * q.cols;
    float* o = out + r * q.cols;
    q.for_each_scale_run(r, [&](int64_t c0, int64_t c1, int64_t s) {
      const float scale = q.scales[size_t(s)], zero = q.zeros[size_t(s)];
      for (int64_t c = c0; c < c1; ++c) o[c] = scale * (float(code[c]) - zero);
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
  check_groups(q, what);
  LB_CHECK(int64_t(q.zeros.size()) == q.num_scale_groups(), "{}: {} zero-points, expected {}", what, q.zeros.size(),
           q.num_scale_groups());
  LB_CHECK(q.codebook.empty(), "{}: format int has no codebook ({} values given)", what, q.codebook.size());
}

// Asymmetric groups of 32 in act_order's column order (a random g_idx), 2 to 4 bits.
QuantizedLinear example(int64_t rows, int64_t cols, uint64_t seed) {
  ExampleRandom rng(seed);
  QuantizedLinear q;
  q.rows = rows;
  q.cols = cols;
  q.bits = 2 + int(rng.below(3));
  q.group_size = 32;
  q.zero_storage_bits = double(q.bits);
  q.dequant_dtype = DType::BF16;
  q.codes = rng.codes(rows * cols, q.bits);
  for (int64_t s = 0; s < q.num_scale_groups(); ++s) {
    q.scales.push_back(rng.uniform(0.005f, 0.05f));
    q.zeros.push_back(float(rng.below(int64_t(1) << q.bits)));
  }
  for (int64_t c = 0; c < cols; ++c) q.g_idx.push_back(int32_t(rng.below(q.groups_per_row())));
  return q;
}

}  // namespace

const QuantFormat kIntFormat = {"int", 1, "w = scale[group] * (code - zero[group])", dequantize_ref, bits_per_weight,
                                validate, dequantize_fast, example};

}  // namespace lowbit
