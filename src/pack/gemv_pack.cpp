#include "pack/gemv_pack.h"

#include "core/dtype.h"
#include "core/error.h"

#include <cmath>
#include <cstring>

namespace lowbit::pack {

namespace {

uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Groups of the layout per row (its padded columns included) and of the linear itself.
int64_t own_groups(const GemvPacked& p) { return (p.k + p.group_size - 1) / p.group_size; }

}  // namespace

int gemv_container_bits(const QuantizedLinear& q) {
  if (q.format == &kIntFormat) {
    if (q.bits >= 1 && q.bits <= 2) return 2;
    if (q.bits == 3 || q.bits == 4) return q.bits;
    if (q.bits >= 5 && q.bits <= 8) return 8;
    return 0;
  }
  if (q.format == &kCodebookFormat) return q.bits >= 1 && q.bits <= 4 ? 4 : 0;
  return 0;
}

bool can_pack_gemv(const QuantizedLinear& q, std::string* why) {
  auto no = [&](std::string reason) {
    if (why != nullptr) *why = std::move(reason);
    return false;
  };
  if (q.format != &kIntFormat && q.format != &kCodebookFormat)
    return no("format '" + std::string(q.format_name()) + "' has no GPU kernel (int and codebook have)");
  if (gemv_container_bits(q) == 0)
    return no("format '" + std::string(q.format_name()) + "' with " + std::to_string(q.bits) +
              "-bit codes has no GPU kernel (int: 1-8 bits, codebook: 1-4 bits)");
  if (q.group_size <= 0 || q.group_size % gemv::kGroupQuantum != 0)
    return no("group size " + std::to_string(q.group_size) + " is not a positive multiple of 32");
  if (q.flat_groups && q.cols % q.group_size != 0)
    return no("flat groups of " + std::to_string(q.group_size) + " elements straddle rows of " +
              std::to_string(q.cols) + " columns");
  if (!q.g_idx.empty()) {
    if (int64_t(q.g_idx.size()) != q.cols) return no("g_idx has " + std::to_string(q.g_idx.size()) + " entries");
    for (int64_t c = 0; c < q.cols; ++c)
      if (q.g_idx[size_t(c)] != c / q.group_size) return no("act_order (a g_idx that permutes the groups)");
  }
  return true;
}

GemvPacked pack_gemv(const QuantizedLinear& q, const std::string& what) {
  std::string why;
  LB_CHECK(can_pack_gemv(q, &why), "{}: the GPU's low-bit GEMV cannot hold this linear ({}-bit {}): {}", what, q.bits,
           q.format_name(), why);
  const bool is_int = q.format == &kIntFormat;
  LB_CHECK(q.rows > 0 && q.cols > 0 && int64_t(q.codes.size()) == q.rows * q.cols &&
               int64_t(q.scales.size()) == q.num_scale_groups() &&
               (is_int ? q.zeros.size() == q.scales.size() : q.codebook.size() == (size_t(1) << q.bits)),
           "{}: {} codes, {} scales, {} zero-points and {} codebook entries for a [{}, {}] {}-bit {} weight", what,
           q.codes.size(), q.scales.size(), q.zeros.size(), q.codebook.size(), q.rows, q.cols, q.bits,
           q.format_name());
  GemvPacked p;
  p.n = q.rows;
  p.k = q.cols;
  p.bits = gemv_container_bits(q);
  p.kind = is_int ? gemv::Kind::Int : gemv::Kind::Codebook;
  p.group_size = q.group_size;
  if (!is_int)
    for (size_t i = 0; i < q.codebook.size(); ++i) p.codebook[i] = q.codebook[i];

  const int64_t units = p.units(), groups = p.groups(), mine = own_groups(p);
  const int words = 4 * p.bits;
  p.codes.assign(size_t(p.n * units * words), 0u);
  p.scales.assign(size_t(p.n * groups), 0u);
  const uint32_t limit = 1u << q.bits;
  std::vector<uint32_t> unit(static_cast<size_t>(words));
  for (int64_t n = 0; n < p.n; ++n) {
    const uint8_t* row = q.codes.data() + n * q.cols;
    for (int64_t u = 0; u < units; ++u) {
      std::fill(unit.begin(), unit.end(), 0u);
      for (int i = 0; i < int(gemv::kUnitCodes); ++i) {
        const int64_t c = gemv::run_column(u, i / 8) + i % 8;
        if (c >= p.k) continue;  // padding keeps code 0
        const uint32_t code = row[c];
        LB_CHECK(code < limit, "{}: code {} at [{}, {}] does not fit {} bits", what, code, n, c, q.bits);
        gemv::set_unit_code(unit.data(), p.bits, i, code);
      }
      for (int W = 0; W < words; ++W) p.codes[size_t(gemv::word_index(n, u, W, p.bits, units))] = unit[size_t(W)];
    }
    // Per-row and flat groups (cols a multiple of the group size) number the same way here.
    for (int64_t g = 0; g < mine; ++g) {
      const size_t i = size_t(n * mine + g);
      const float s = q.scales[i];
      LB_CHECK(std::isfinite(s), "{}: scale group {} has scale {}", what, i, s);
      uint32_t word;
      if (is_int) {
        const float z = q.zeros[i];
        LB_CHECK(z == std::nearbyint(z) && z >= -256.0f && z <= 256.0f,
                 "{}: scale group {} has zero-point {}; the GPU's low-bit GEMV needs an integer in [-256, 256]", what,
                 i, z);
        word = uint32_t(f32_to_bf16(s)) | uint32_t(f32_to_bf16(z)) << 16;
      } else {
        word = float_bits(s);
      }
      p.scales[size_t(n * groups + g)] = word;
    }
  }
  return p;
}

GemvUnpacked unpack_gemv(const GemvPacked& p) {
  GemvUnpacked out;
  const int64_t units = p.units(), groups = p.groups(), mine = own_groups(p);
  const int words = 4 * p.bits;
  out.codes.assign(size_t(p.n * p.k), 0);
  out.scales.resize(size_t(p.n * mine));
  if (p.kind == gemv::Kind::Int) out.zeros.resize(size_t(p.n * mine));
  std::vector<uint32_t> unit(static_cast<size_t>(words));
  for (int64_t n = 0; n < p.n; ++n) {
    for (int64_t u = 0; u < units; ++u) {
      for (int W = 0; W < words; ++W) unit[size_t(W)] = p.codes[size_t(gemv::word_index(n, u, W, p.bits, units))];
      for (int i = 0; i < int(gemv::kUnitCodes); ++i) {
        const int64_t c = gemv::run_column(u, i / 8) + i % 8;
        if (c >= p.k) continue;
        out.codes[size_t(n * p.k + c)] = uint8_t(gemv::unit_code(unit.data(), p.bits, i));
      }
    }
    for (int64_t g = 0; g < mine; ++g) {
      const uint32_t w = p.scales[size_t(n * groups + g)];
      if (p.kind == gemv::Kind::Int) {
        out.scales[size_t(n * mine + g)] = bf16_to_f32(uint16_t(w & 0xffffu));
        out.zeros[size_t(n * mine + g)] = bf16_to_f32(uint16_t(w >> 16));
      } else {
        out.scales[size_t(n * mine + g)] = bits_float(w);
      }
    }
  }
  return out;
}

std::vector<float> dequantize_gemv(const GemvPacked& p) {
  const GemvUnpacked u = unpack_gemv(p);
  const int64_t mine = own_groups(p);
  std::vector<float> w(size_t(p.n * p.k));
  for (int64_t n = 0; n < p.n; ++n)
    for (int64_t c = 0; c < p.k; ++c) {
      const size_t gi = size_t(n * mine + c / p.group_size);
      const uint8_t code = u.codes[size_t(n * p.k + c)];
      // int: (code - zero) is an integer below 2^9 and the scale a bf16 value, so the product is
      // exact in fp32; codebook: one fp32 rounding, as the format's reference computes it.
      const float v = p.kind == gemv::Kind::Int ? u.scales[gi] * (float(code) - u.zeros[gi])
                                                : p.codebook[code] * u.scales[gi];
      w[size_t(n * p.k + c)] = bf16_to_f32(f32_to_bf16(v));
    }
  return w;
}

}  // namespace lowbit::pack
