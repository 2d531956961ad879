#include "core/dtype.h"

#include "core/error.h"

#include <array>
#include <cmath>

namespace lowbit {

namespace {
constexpr std::array<DTypeTraits, 15> kTraits = {{
    {DType::F64, "F64", 8, true},      {DType::F32, "F32", 4, true},
    {DType::F16, "F16", 2, true},      {DType::BF16, "BF16", 2, true},
    {DType::I64, "I64", 8, false},     {DType::I32, "I32", 4, false},
    {DType::I16, "I16", 2, false},     {DType::I8, "I8", 1, false},
    {DType::U64, "U64", 8, false},     {DType::U32, "U32", 4, false},
    {DType::U16, "U16", 2, false},     {DType::U8, "U8", 1, false},
    {DType::BOOL, "BOOL", 1, false},   {DType::F8_E4M3, "F8_E4M3", 1, true},
    {DType::F8_E5M2, "F8_E5M2", 1, true},
}};
}  // namespace

const DTypeTraits& dtype_traits(DType t) {
  const auto& tr = kTraits[static_cast<size_t>(t)];
  LB_ASSERT(tr.dtype == t);
  return tr;
}

std::optional<DType> dtype_from_name(std::string_view name) {
  for (const auto& t : kTraits)
    if (t.name == name) return t.dtype;
  return std::nullopt;
}

float f16_to_f32(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t mant = h & 0x3ffu;
  uint32_t u;
  if (exp == 0) {
    if (mant == 0) {
      u = sign;
    } else {  // subnormal: value = mant * 2^-24
      float f = std::ldexp(float(mant), -24);
      std::memcpy(&u, &f, 4);
      u |= sign;
    }
  } else if (exp == 31) {
    u = sign | 0x7f800000u | (mant << 13);
  } else {
    u = sign | ((exp + 112) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

uint16_t f32_to_f16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint16_t sign = uint16_t((u >> 16) & 0x8000u);
  const uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) return sign | 0x7e00u;  // NaN
  if (abs >= 0x477ff000u) return sign | 0x7c00u;  // rounds to >= 65520: inf
  if (abs < 0x38800000u) {                        // below the smallest normal 2^-14
    // subnormal or zero: round(abs_value * 2^24) with ties to even
    float a;
    std::memcpy(&a, &abs, 4);
    return sign | uint16_t(std::nearbyint(a * 16777216.0f));
  }
  uint32_t r = abs + 0xfffu + ((abs >> 13) & 1u);  // round mantissa to 10 bits, ties to even
  return sign | uint16_t(((r >> 13) - (112u << 10)));
}

void convert_to_f32(DType from, const void* src, float* dst, int64_t n) {
  switch (from) {
    case DType::F32: std::memcpy(dst, src, size_t(n) * 4); return;
    case DType::BF16: {
      const auto* s = static_cast<const uint16_t*>(src);
#pragma omp parallel for schedule(static) if (n > (int64_t(1) << 18))
      for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(s[i]);
      return;
    }
    case DType::F16: {
      const auto* s = static_cast<const uint16_t*>(src);
#pragma omp parallel for schedule(static) if (n > (int64_t(1) << 18))
      for (int64_t i = 0; i < n; ++i) dst[i] = f16_to_f32(s[i]);
      return;
    }
    case DType::F64: {
      const auto* s = static_cast<const double*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = float(s[i]);
      return;
    }
#define LB_INT_CASE(DT, T)                                          \
    case DType::DT: {                                                \
      const auto* s = static_cast<const T*>(src);                    \
      for (int64_t i = 0; i < n; ++i) dst[i] = float(s[i]);          \
      return;                                                        \
    }
    LB_INT_CASE(I64, int64_t) LB_INT_CASE(I32, int32_t) LB_INT_CASE(I16, int16_t)
    LB_INT_CASE(I8, int8_t) LB_INT_CASE(U64, uint64_t) LB_INT_CASE(U32, uint32_t)
    LB_INT_CASE(U16, uint16_t) LB_INT_CASE(U8, uint8_t) LB_INT_CASE(BOOL, uint8_t)
#undef LB_INT_CASE
    default: fail("convert_to_f32: no conversion from {} to F32", dtype_name(from));
  }
}

}  // namespace lowbit
