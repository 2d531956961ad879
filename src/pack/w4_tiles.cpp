#include "pack/w4_tiles.h"

#include "core/dtype.h"
#include "core/error.h"

#include <cmath>

namespace lowbit::pack {

bool can_pack_w4_tiles(const QuantizedLinear& q) {
  return q.format == &kIntFormat && !q.flat_groups && q.group_size > 0 && q.bits >= 1 && q.bits <= 4;
}

W4Tiles pack_w4_tiles(const QuantizedLinear& q, const std::string& what) {
  LB_CHECK(q.format == &kIntFormat && !q.flat_groups && q.group_size > 0,
           "{}: the GPU's 4-bit kernels hold format 'int' with per-row groups; this linear has format '{}'{}", what,
           q.format_name(), q.flat_groups ? " with flat groups" : "");
  LB_CHECK(q.bits >= 1 && q.bits <= 4, "{}: the GPU's 4-bit kernels hold codes of 1 to 4 bits, this linear has {}",
           what, q.bits);
  LB_CHECK(q.rows > 0 && q.cols > 0 && int64_t(q.codes.size()) == q.rows * q.cols &&
               int64_t(q.scales.size()) == q.num_scale_groups() && q.zeros.size() == q.scales.size() &&
               (q.g_idx.empty() || int64_t(q.g_idx.size()) == q.cols),
           "{}: {} codes, {} scales, {} zero-points and {} g_idx entries for a [{}, {}] weight with {} groups per row",
           what, q.codes.size(), q.scales.size(), q.zeros.size(), q.g_idx.size(), q.rows, q.cols,
           q.groups_per_row());
  W4Tiles t;
  t.n = q.rows;
  t.k = q.cols;
  t.groups = q.groups_per_row();

  // Columns of each group in increasing order; the slots are these lists, each padded to the
  // largest one rounded up to a k-step.
  std::vector<std::vector<int32_t>> members(size_t(t.groups));
  for (int64_t c = 0; c < q.cols; ++c) {
    const int64_t g = q.g_idx.empty() ? c / q.group_size : q.g_idx[size_t(c)];
    LB_CHECK(g >= 0 && g < t.groups, "{}: column {} is in group {} of {}", what, c, g, t.groups);
    members[size_t(g)].push_back(int32_t(c));
  }
  int64_t largest = 0;
  for (const auto& m : members) largest = std::max(largest, int64_t(m.size()));
  t.group_slots = (largest + w4::kStepK - 1) / w4::kStepK * w4::kStepK;
  std::vector<int32_t> slot_col(size_t(t.padded_k()), -1);
  for (int64_t g = 0; g < t.groups; ++g)
    for (size_t i = 0; i < members[size_t(g)].size(); ++i) slot_col[size_t(g * t.group_slots) + i] = members[size_t(g)][i];
  bool identity = true;
  for (int64_t s = 0; identity && s < t.padded_k(); ++s) identity = slot_col[size_t(s)] == (s < t.k ? s : -1);
  if (!identity) t.source_col = slot_col;

  for (size_t i = 0; i < q.zeros.size(); ++i) {
    const float z = q.zeros[i];
    LB_CHECK(std::isfinite(q.scales[i]) && z == std::nearbyint(z) && z >= -128.0f && z <= 127.0f,
             "{}: scale group {} has scale {} and zero-point {}; the GPU's 4-bit kernels need a finite scale and an "
             "integer zero-point in [-128, 127]",
             what, i, q.scales[i], z);
  }

  const int64_t ksteps = t.ksteps();
  t.codes.assign(size_t(t.chunks() * ksteps * w4::kWordsPerChunkStep), 0u);
  t.scales.assign(size_t(t.chunks() * t.groups * 64), 0u);
  for (int64_t n = 0; n < t.n; ++n) {
    const uint8_t* row = q.codes.data() + n * q.cols;
    for (int64_t s = 0; s < t.padded_k(); ++s) {
      const int32_t c = slot_col[size_t(s)];
      if (c < 0) continue;  // padding keeps code 0
      const uint32_t code = row[c];
      LB_CHECK(code < 16, "{}: code {} at [{}, {}] does not fit 4 bits", what, code, n, c);
      const w4::CodePos p = w4::code_pos(n, s, ksteps);
      t.codes[size_t(p.word)] |= code << p.shift;
    }
    for (int64_t g = 0; g < t.groups; ++g) {
      const size_t i = size_t(n * t.groups + g);
      const uint32_t scale = f32_to_bf16(q.scales[i]);
      const uint32_t zero = f32_to_bf16(float(w4::kZeroBias) + q.zeros[i]);
      t.scales[size_t(w4::scale_pos(n, g, t.groups))] = scale | zero << 16;
    }
  }
  return t;
}

W4Unpacked unpack_w4_tiles(const W4Tiles& t) {
  W4Unpacked u;
  u.codes.assign(size_t(t.n * t.k), 0);
  u.scales.resize(size_t(t.n * t.groups));
  u.zeros.resize(size_t(t.n * t.groups));
  const int64_t ksteps = t.ksteps();
  for (int64_t n = 0; n < t.n; ++n) {
    for (int64_t s = 0; s < t.padded_k(); ++s) {
      const int64_t c = t.source_col.empty() ? (s < t.k ? s : -1) : t.source_col[size_t(s)];
      if (c < 0) continue;
      const w4::CodePos p = w4::code_pos(n, s, ksteps);
      u.codes[size_t(n * t.k + c)] = uint8_t((t.codes[size_t(p.word)] >> p.shift) & 15u);
    }
    for (int64_t g = 0; g < t.groups; ++g) {
      const uint32_t w = t.scales[size_t(w4::scale_pos(n, g, t.groups))];
      u.scales[size_t(n * t.groups + g)] = bf16_to_f32(uint16_t(w & 0xffffu));
      u.zeros[size_t(n * t.groups + g)] = bf16_to_f32(uint16_t(w >> 16)) - float(w4::kZeroBias);
    }
  }
  return u;
}

std::vector<float> dequantize_w4_tiles(const W4Tiles& t) {
  const W4Unpacked u = unpack_w4_tiles(t);
  std::vector<float> w(size_t(t.n * t.k));
  // The group of each column, from the slot order.
  std::vector<int64_t> group(size_t(t.k), -1);
  for (int64_t s = 0; s < t.padded_k(); ++s) {
    const int64_t c = t.source_col.empty() ? (s < t.k ? s : -1) : t.source_col[size_t(s)];
    if (c >= 0) group[size_t(c)] = s / t.group_slots;
  }
  for (int64_t n = 0; n < t.n; ++n)
    for (int64_t c = 0; c < t.k; ++c) {
      const size_t gi = size_t(n * t.groups + group[size_t(c)]);
      // (code - zero) is a small integer and the scale a bf16 value: the product is exact in fp32,
      // and rounding it once to bf16 is what the GPU's bf16 multiply does.
      const float v = u.scales[gi] * (float(u.codes[size_t(n * t.k + c)]) - u.zeros[gi]);
      w[size_t(n * t.k + c)] = bf16_to_f32(f32_to_bf16(v));
    }
  return w;
}

}  // namespace lowbit::pack
