#include "formats/ggml_quants.h"

#include "core/dtype.h"
#include "core/error.h"

#include <algorithm>
#include <array>
#include <cstring>

namespace lowbit {

namespace {

// Blocks are read with memcpy: a tensor's data is only as aligned as the file's alignment, and
// the packed structs have 2-byte members.
template <typename Block>
Block load(const uint8_t* p) {
  Block b;
  std::memcpy(&b, p, sizeof(Block));
  return b;
}

float h2f(uint16_t h) { return f16_to_f32(h); }

void to_float_f32(const uint8_t* s, float* y, int64_t n) { std::memcpy(y, s, size_t(n) * 4); }

void to_float_f16(const uint8_t* s, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    uint16_t h;
    std::memcpy(&h, s + 2 * i, 2);
    y[i] = h2f(h);
  }
}

void to_float_bf16(const uint8_t* s, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    uint16_t h;
    std::memcpy(&h, s + 2 * i, 2);
    y[i] = bf16_to_f32(h);
  }
}

void to_float_q4_0(const uint8_t* s, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += kQK4) {
    const auto b = load<BlockQ4_0>(s + i * sizeof(BlockQ4_0));
    const float d = h2f(b.d);
    for (int j = 0; j < kQK4 / 2; ++j) {
      y[j] = float((b.qs[j] & 0x0F) - 8) * d;
      y[j + kQK4 / 2] = float((b.qs[j] >> 4) - 8) * d;
    }
  }
}

void to_float_q4_1(const uint8_t* s, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += kQK4) {
    const auto b = load<BlockQ4_1>(s + i * sizeof(BlockQ4_1));
    const float d = h2f(b.d), m = h2f(b.m);
    for (int j = 0; j < kQK4 / 2; ++j) {
      y[j] = float(b.qs[j] & 0x0F) * d + m;
      y[j + kQK4 / 2] = float(b.qs[j] >> 4) * d + m;
    }
  }
}

uint32_t u32_le(const uint8_t* p) { return uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24; }

void to_float_q5_0(const uint8_t* s, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += kQK4) {
    const auto b = load<BlockQ5_0>(s + i * sizeof(BlockQ5_0));
    const float d = h2f(b.d);
    const uint32_t qh = u32_le(b.qh);
    for (int j = 0; j < kQK4 / 2; ++j) {
      const int h0 = int((qh >> j) << 4) & 0x10;
      const int h1 = int(qh >> (j + 12)) & 0x10;
      y[j] = float(((b.qs[j] & 0x0F) | h0) - 16) * d;
      y[j + kQK4 / 2] = float(((b.qs[j] >> 4) | h1) - 16) * d;
    }
  }
}

void to_float_q5_1(const uint8_t* s, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += kQK4) {
    const auto b = load<BlockQ5_1>(s + i * sizeof(BlockQ5_1));
    const float d = h2f(b.d), m = h2f(b.m);
    const uint32_t qh = u32_le(b.qh);
    for (int j = 0; j < kQK4 / 2; ++j) {
      const int h0 = int((qh >> j) << 4) & 0x10;
      const int h1 = int(qh >> (j + 12)) & 0x10;
      y[j] = float((b.qs[j] & 0x0F) | h0) * d + m;
      y[j + kQK4 / 2] = float((b.qs[j] >> 4) | h1) * d + m;
    }
  }
}

void to_float_q8_0(const uint8_t* s, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += kQK4) {
    const auto b = load<BlockQ8_0>(s + i * sizeof(BlockQ8_0));
    const float d = h2f(b.d);
    for (int j = 0; j < kQK4; ++j) y[j] = float(b.qs[j]) * d;
  }
}

void to_float_q2_k(const uint8_t* s, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const auto b = load<BlockQ2_K>(s + i * sizeof(BlockQ2_K));
    const float d = h2f(b.d), dmin = h2f(b.dmin);
    const uint8_t* q = b.qs;
    int is = 0;
    for (int n = 0; n < kQKK; n += 128, q += 32)
      for (int shift = 0; shift < 8; shift += 2)
        for (int half = 0; half < 2; ++half) {
          const uint8_t sc = b.scales[is++];
          const float dl = d * float(sc & 0x0F), ml = dmin * float(sc >> 4);
          for (int l = 0; l < 16; ++l) *y++ = dl * float((q[l + 16 * half] >> shift) & 3) - ml;
        }
  }
}

void to_float_q3_k(const uint8_t* s, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const auto b = load<BlockQ3_K>(s + i * sizeof(BlockQ3_K));
    const float d_all = h2f(b.d);
    int8_t scales[16];
    for (int k = 0; k < 16; ++k) {
      const int low = k < 8 ? (b.scales[k] & 0x0F) : (b.scales[k - 8] >> 4);
      const int high = (b.scales[8 + (k & 3)] >> (2 * (k >> 2))) & 3;
      scales[k] = int8_t(low | high << 4);
    }
    const uint8_t* q = b.qs;
    uint8_t m = 1;
    int is = 0;
    for (int n = 0; n < kQKK; n += 128, q += 32)
      for (int shift = 0; shift < 8; shift += 2, m = uint8_t(m << 1))
        for (int half = 0; half < 2; ++half) {
          const float dl = d_all * float(scales[is++] - 32);
          for (int l = 16 * half; l < 16 * half + 16; ++l)
            *y++ = dl * float(((q[l] >> shift) & 3) - ((b.hmask[l] & m) ? 0 : 4));
        }
  }
}

// The 6-bit scale and min of sub-block j of a Q4_K/Q5_K block (ggml's get_scale_min_k4).
void scale_min_k4(int j, const uint8_t* q, uint8_t& d, uint8_t& m) {
  if (j < 4) {
    d = q[j] & 63;
    m = q[j + 4] & 63;
  } else {
    d = uint8_t((q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4));
    m = uint8_t((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
  }
}

void to_float_q4_k(const uint8_t* s, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const auto b = load<BlockQ4_K>(s + i * sizeof(BlockQ4_K));
    const float d = h2f(b.d), dmin = h2f(b.dmin);
    const uint8_t* q = b.qs;
    for (int is = 0; is < 8; is += 2, q += 32) {
      uint8_t sc, m;
      scale_min_k4(is, b.scales, sc, m);
      const float d1 = d * float(sc), m1 = dmin * float(m);
      scale_min_k4(is + 1, b.scales, sc, m);
      const float d2 = d * float(sc), m2 = dmin * float(m);
      for (int l = 0; l < 32; ++l) *y++ = d1 * float(q[l] & 0x0F) - m1;
      for (int l = 0; l < 32; ++l) *y++ = d2 * float(q[l] >> 4) - m2;
    }
  }
}

void to_float_q5_k(const uint8_t* s, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const auto b = load<BlockQ5_K>(s + i * sizeof(BlockQ5_K));
    const float d = h2f(b.d), dmin = h2f(b.dmin);
    const uint8_t* ql = b.qs;
    uint8_t u1 = 1, u2 = 2;
    for (int is = 0; is < 8; is += 2, ql += 32, u1 = uint8_t(u1 << 2), u2 = uint8_t(u2 << 2)) {
      uint8_t sc, m;
      scale_min_k4(is, b.scales, sc, m);
      const float d1 = d * float(sc), m1 = dmin * float(m);
      scale_min_k4(is + 1, b.scales, sc, m);
      const float d2 = d * float(sc), m2 = dmin * float(m);
      for (int l = 0; l < 32; ++l) *y++ = d1 * float((ql[l] & 0x0F) + ((b.qh[l] & u1) ? 16 : 0)) - m1;
      for (int l = 0; l < 32; ++l) *y++ = d2 * float((ql[l] >> 4) + ((b.qh[l] & u2) ? 16 : 0)) - m2;
    }
  }
}

void to_float_q6_k(const uint8_t* s, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const auto b = load<BlockQ6_K>(s + i * sizeof(BlockQ6_K));
    const float d = h2f(b.d);
    const uint8_t* ql = b.ql;
    const uint8_t* qh = b.qh;
    const int8_t* sc = b.scales;
    for (int n = 0; n < kQKK; n += 128, y += 128, ql += 64, qh += 32, sc += 8)
      for (int l = 0; l < 32; ++l) {
        const int is = l / 16;
        const int q1 = ((ql[l] & 0x0F) | ((qh[l] >> 0) & 3) << 4) - 32;
        const int q2 = ((ql[l + 32] & 0x0F) | ((qh[l] >> 2) & 3) << 4) - 32;
        const int q3 = ((ql[l] >> 4) | ((qh[l] >> 4) & 3) << 4) - 32;
        const int q4 = ((ql[l + 32] >> 4) | ((qh[l] >> 6) & 3) << 4) - 32;
        y[l + 0] = d * float(sc[is + 0]) * float(q1);
        y[l + 32] = d * float(sc[is + 2]) * float(q2);
        y[l + 64] = d * float(sc[is + 4]) * float(q3);
        y[l + 96] = d * float(sc[is + 6]) * float(q4);
      }
  }
}

// Sizes from ggml.c's type_traits (Q8_1 is 36 bytes there: fp16 d and s, then 32 int8).
constexpr std::array<GgmlTypeTraits, 34> kGgmlTypes = {{
    {GgmlType::F32, "F32", 1, 4, to_float_f32},
    {GgmlType::F16, "F16", 1, 2, to_float_f16},
    {GgmlType::Q4_0, "Q4_0", 32, 18, to_float_q4_0},
    {GgmlType::Q4_1, "Q4_1", 32, 20, to_float_q4_1},
    {GgmlType::Q5_0, "Q5_0", 32, 22, to_float_q5_0},
    {GgmlType::Q5_1, "Q5_1", 32, 24, to_float_q5_1},
    {GgmlType::Q8_0, "Q8_0", 32, 34, to_float_q8_0},
    {GgmlType::Q8_1, "Q8_1", 32, 36, nullptr},
    {GgmlType::Q2_K, "Q2_K", 256, 84, to_float_q2_k},
    {GgmlType::Q3_K, "Q3_K", 256, 110, to_float_q3_k},
    {GgmlType::Q4_K, "Q4_K", 256, 144, to_float_q4_k},
    {GgmlType::Q5_K, "Q5_K", 256, 176, to_float_q5_k},
    {GgmlType::Q6_K, "Q6_K", 256, 210, to_float_q6_k},
    {GgmlType::Q8_K, "Q8_K", 256, 292, nullptr},
    {GgmlType::IQ2_XXS, "IQ2_XXS", 256, 66, nullptr},
    {GgmlType::IQ2_XS, "IQ2_XS", 256, 74, nullptr},
    {GgmlType::IQ3_XXS, "IQ3_XXS", 256, 98, nullptr},
    {GgmlType::IQ1_S, "IQ1_S", 256, 50, nullptr},
    {GgmlType::IQ4_NL, "IQ4_NL", 32, 18, nullptr},
    {GgmlType::IQ3_S, "IQ3_S", 256, 110, nullptr},
    {GgmlType::IQ2_S, "IQ2_S", 256, 82, nullptr},
    {GgmlType::IQ4_XS, "IQ4_XS", 256, 136, nullptr},
    {GgmlType::I8, "I8", 1, 1, nullptr},
    {GgmlType::I16, "I16", 1, 2, nullptr},
    {GgmlType::I32, "I32", 1, 4, nullptr},
    {GgmlType::I64, "I64", 1, 8, nullptr},
    {GgmlType::F64, "F64", 1, 8, nullptr},
    {GgmlType::IQ1_M, "IQ1_M", 256, 56, nullptr},
    {GgmlType::BF16, "BF16", 1, 2, to_float_bf16},
    {GgmlType::TQ1_0, "TQ1_0", 256, 54, nullptr},
    {GgmlType::TQ2_0, "TQ2_0", 256, 66, nullptr},
    {GgmlType::MXFP4, "MXFP4", 32, 17, nullptr},
    {GgmlType::NVFP4, "NVFP4", 64, 36, nullptr},
    {GgmlType::Q1_0, "Q1_0", 128, 18, nullptr},
}};

}  // namespace

const GgmlTypeTraits* ggml_type_traits(uint32_t id) {
  for (const auto& t : kGgmlTypes)
    if (uint32_t(t.type) == id) return &t;
  return nullptr;
}

std::string_view ggml_type_name(uint32_t id) {
  const GgmlTypeTraits* t = ggml_type_traits(id);
  return t ? t->name : std::string_view("unknown");
}

void ggml_dequantize(uint32_t id, const uint8_t* src, float* dst, int64_t n, const std::string& what) {
  const GgmlTypeTraits* t = ggml_type_traits(id);
  LB_CHECK(t != nullptr, "{} has ggml type id {}, which ggml does not define", what, id);
  LB_CHECK(t->to_float != nullptr, "{} has ggml type {} ({}), which lowbit cannot read", what, t->name, id);
  LB_CHECK(n >= 0 && n % t->block_size == 0, "{}: {} elements of ggml type {} are not a whole number of {}-element blocks",
           what, n, t->name, t->block_size);
  // Blocks are independent: chunks of them go to the OpenMP threads (the result does not depend
  // on the split).
  const int64_t nb = n / t->block_size, chunk = 2048;
  if (nb == 0) return;  // an empty tensor (its data pointer may be null)
  if (nb <= chunk) {
    t->to_float(src, dst, nb);
    return;
  }
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < (nb + chunk - 1) / chunk; ++c) {
    const int64_t b0 = c * chunk;
    t->to_float(src + b0 * t->type_size, dst + b0 * t->block_size, std::min(chunk, nb - b0));
  }
}

}  // namespace lowbit
