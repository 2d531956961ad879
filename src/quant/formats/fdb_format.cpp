#include "quant/formats/fdb_format.h"

#include "core/error.h"
#include "quant/formats/bit_plane.h"
#include "quant/formats/example_random.h"

#include <cmath>
#include <cstring>

// Built with -ffp-contract=off (src/CMakeLists.txt): the equality with the int format's
// dequantization rests on each product and sum being rounded on its own.

namespace lowbit {

namespace {

const Tensor& extra(const QuantizedLinear& q, const char* name, const std::string& what) {
  auto it = q.extras.find(name);
  LB_CHECK(it != q.extras.end(), "{}: fdb weight lacks extras.{}", what, name);
  return it->second;
}

bool has_beta(const QuantizedLinear& q) { return q.params.value("has_beta", true); }

}  // namespace

void fdb_validate(const QuantizedLinear& q, const std::string& what) {
  LB_CHECK(q.bits == 2, "{}: fdb holds two bit planes (#W 2), found bits = {}", what, q.bits);
  LB_CHECK(q.group_size > 0 && q.cols % q.group_size == 0, "{}: fdb group size {} does not divide {} columns", what,
           q.group_size, q.cols);
  LB_CHECK(!q.flat_groups && q.g_idx.empty(), "{}: fdb groups are per-row column groups (no flat groups, no g_idx)",
           what);
  LB_CHECK(q.codes.empty() && q.scales.empty() && q.zeros.empty() && q.codebook.empty(),
           "{}: fdb keeps its planes and scales in extras; found {} codes, {} scales, {} zeros", what, q.codes.size(),
           q.scales.size(), q.zeros.size());
  for (const char* name : {"fdb.b1", "fdb.b2"}) {
    const Tensor& p = extra(q, name, what);
    LB_CHECK(p.dtype() == DType::U8 && p.numel() == q.rows * plane_row_bytes(q.cols),
             "{}: extras.{} is {} {}, expected U8 [{}, {}]", what, name, dtype_name(p.dtype()), p.shape_str(), q.rows,
             plane_row_bytes(q.cols));
  }
  const int64_t groups = q.rows * (q.cols / q.group_size);
  const Tensor& a = extra(q, "fdb.alpha", what);
  LB_CHECK(a.dtype() == DType::F32 && a.numel() == 3 * groups, "{}: extras.fdb.alpha is {} {}, expected F32 [{}, 3]",
           what, dtype_name(a.dtype()), a.shape_str(), groups);
  const float* v = a.data_as<float>();
  for (int64_t i = 0; i < a.numel(); ++i) LB_CHECK(std::isfinite(v[i]), "{}: non-finite fdb scale at {}", what, i);
  if (!has_beta(q))
    for (int64_t s = 0; s < groups; ++s)
      LB_CHECK(v[3 * s + 2] == 0.0f, "{}: group {} has offset {} but the weight has no offsets (has_beta = false)",
               what, s, v[3 * s + 2]);
}

void fdb_dequantize(const QuantizedLinear& q, float* out) {
  const uint8_t* b1 = q.extras.at("fdb.b1").data_as<uint8_t>();
  const uint8_t* b2 = q.extras.at("fdb.b2").data_as<uint8_t>();
  const float* alpha = fdb_alpha(q);
  const int64_t ng = q.cols / q.group_size;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < q.rows; ++r)
    for (int64_t c = 0; c < q.cols; ++c) {
      const float* a = alpha + 3 * (r * ng + c / q.group_size);
      const float p1 = plane_bit(b1, q.cols, r, c) ? 1.0f : 0.0f;
      const float p2 = plane_bit(b2, q.cols, r, c) ? 1.0f : 0.0f;
      const float sum = a[0] * p1 + a[1] * p2;
      out[r * q.cols + c] = sum + a[2];
    }
}

double fdb_bits_per_weight(const QuantizedLinear& q) {
  const double per_group = has_beta(q) ? 48.0 : 32.0;
  return 2.0 + per_group / double(q.group_size);
}

QuantizedLinear fdb_from_int2(const QuantizedLinear& in, bool with_beta) {
  LB_CHECK(in.format == &kIntFormat && in.bits == 2, "fdb: needs a 2-bit int-format weight, got {} at {} bits",
           in.format_name(), in.bits);
  LB_CHECK(in.g_idx.empty() && !in.flat_groups, "fdb: needs per-row groups in column order (act_order's g_idx "
                                                 "cannot be split into fdb groups)");
  LB_CHECK(in.group_size > 0 && in.cols % in.group_size == 0, "fdb: group size {} does not divide {} columns",
           in.group_size, in.cols);
  QuantizedLinear q;
  q.rows = in.rows;
  q.cols = in.cols;
  q.format = &kFdbFormat;
  q.bits = 2;
  q.group_size = in.group_size;
  q.dequant_dtype = in.dequant_dtype;
  q.params["has_beta"] = with_beta;
  const int64_t groups = in.num_scale_groups();
  Tensor alpha = Tensor::empty(DType::F32, {groups, 3});
  float* a = alpha.mutable_data_as<float>();
  for (int64_t s = 0; s < groups; ++s) {
    const float sc = in.scales[size_t(s)], z = in.zeros[size_t(s)];
    LB_CHECK(z == 0.0f || z == 1.0f || z == 2.0f || z == 3.0f, "fdb: group {} has zero-point {} outside 0..3", s, z);
    LB_CHECK(with_beta || z == 1.0f, "fdb: group {} has zero-point {}; without offsets only zero-point 1 (the grid "
                                     "{{-s, 0, s, 2s}}) is representable", s, z);
    a[3 * s + 0] = 2.0f * sc;
    a[3 * s + 1] = -sc;
    a[3 * s + 2] = with_beta ? sc * (1.0f - z) : 0.0f;
  }
  std::vector<uint8_t> p1(size_t(in.rows * in.cols)), p2(p1.size());
  for (size_t i = 0; i < p1.size(); ++i) {
    p1[i] = uint8_t(in.codes[i] >> 1);
    p2[i] = uint8_t(1 - (in.codes[i] & 1));
  }
  q.extras["fdb.b1"] = pack_plane(p1, in.rows, in.cols);
  q.extras["fdb.b2"] = pack_plane(p2, in.rows, in.cols);
  q.extras["fdb.alpha"] = std::move(alpha);
  return q;
}

std::vector<BlockFdb128> fdb_pack128(const QuantizedLinear& q) {
  fdb_validate(q, "fdb_pack128");
  LB_CHECK(q.group_size == 128, "fdb: the packed block holds groups of 128 weights, not {}", q.group_size);
  const uint8_t* b1 = q.extras.at("fdb.b1").data_as<uint8_t>();
  const uint8_t* b2 = q.extras.at("fdb.b2").data_as<uint8_t>();
  const float* alpha = fdb_alpha(q);
  const int64_t ng = q.cols / 128, rb = plane_row_bytes(q.cols);
  std::vector<BlockFdb128> out(size_t(q.rows * ng));
  for (int64_t r = 0; r < q.rows; ++r)
    for (int64_t g = 0; g < ng; ++g) {
      BlockFdb128& b = out[size_t(r * ng + g)];
      for (int i = 0; i < 3; ++i) b.d[i] = f32_to_f16(alpha[3 * (r * ng + g) + i]);
      // A group starts on a byte boundary (128 columns = 16 bytes), so its plane bytes are
      // the plane's bytes as they are.
      std::memcpy(b.b1, b1 + r * rb + g * 16, 16);
      std::memcpy(b.b2, b2 + r * rb + g * 16, 16);
    }
  return out;
}

QuantizedLinear fdb_unpack128(const std::vector<BlockFdb128>& blocks, int64_t rows, int64_t cols, bool with_beta,
                              DType dequant_dtype) {
  LB_CHECK(rows > 0 && cols > 0 && cols % 128 == 0, "fdb: [{}, {}] is not a weight of whole 128-column groups", rows,
           cols);
  const int64_t ng = cols / 128, rb = plane_row_bytes(cols);
  LB_CHECK(int64_t(blocks.size()) == rows * ng, "fdb: {} blocks for a [{}, {}] weight, expected {}", blocks.size(),
           rows, cols, rows * ng);
  QuantizedLinear q;
  q.rows = rows;
  q.cols = cols;
  q.format = &kFdbFormat;
  q.bits = 2;
  q.group_size = 128;
  q.dequant_dtype = dequant_dtype;
  q.params["has_beta"] = with_beta;
  Tensor p1 = Tensor::empty(DType::U8, {rows, rb}), p2 = Tensor::empty(DType::U8, {rows, rb});
  Tensor alpha = Tensor::empty(DType::F32, {rows * ng, 3});
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t g = 0; g < ng; ++g) {
      const BlockFdb128& b = blocks[size_t(r * ng + g)];
      for (int i = 0; i < 3; ++i) alpha.mutable_data_as<float>()[3 * (r * ng + g) + i] = f16_to_f32(b.d[i]);
      std::memcpy(p1.mutable_data_as<uint8_t>() + r * rb + g * 16, b.b1, 16);
      std::memcpy(p2.mutable_data_as<uint8_t>() + r * rb + g * 16, b.b2, 16);
    }
  q.extras["fdb.b1"] = std::move(p1);
  q.extras["fdb.b2"] = std::move(p2);
  q.extras["fdb.alpha"] = std::move(alpha);
  q.validate("fdb blocks");
  return q;
}

namespace {

// Groups of 32 with offsets (has_beta), planes and scales drawn freely (not from a 2-bit grid).
QuantizedLinear fdb_example(int64_t rows, int64_t cols, uint64_t seed) {
  ExampleRandom rng(seed);
  QuantizedLinear q;
  q.rows = rows;
  q.cols = cols;
  q.format = &kFdbFormat;
  q.bits = 2;
  q.group_size = 32;
  q.dequant_dtype = DType::BF16;
  q.params["has_beta"] = true;
  q.extras["fdb.b1"] = pack_plane(rng.codes(rows * cols, 1), rows, cols);
  q.extras["fdb.b2"] = pack_plane(rng.codes(rows * cols, 1), rows, cols);
  Tensor alpha = rng.f32({rows * cols / q.group_size, 3}, 0.005f, 0.05f);
  for (int64_t s = 0; s < alpha.dim(0); ++s) alpha.mutable_data_as<float>()[3 * s + 1] *= -1.0f;
  q.extras["fdb.alpha"] = std::move(alpha);
  return q;
}

}  // namespace

const QuantFormat kFdbFormat = {"fdb", 1, "w = alpha1[group] * b1 + alpha2[group] * b2 + beta[group], b in {0, 1}",
                                fdb_dequantize, fdb_bits_per_weight, fdb_validate, nullptr, fdb_example};

}  // namespace lowbit
