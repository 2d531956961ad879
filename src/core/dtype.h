// Element types, described by one row of a trait table each (ggml's type_traits habit).
#pragma once

#include <cstdint>
#include <cstring>
#include <optional>
#include <string_view>

namespace lowbit {

enum class DType : uint8_t { F64, F32, F16, BF16, I64, I32, I16, I8, U64, U32, U16, U8, BOOL, F8_E4M3, F8_E5M2 };

struct DTypeTraits {
  DType dtype;
  std::string_view name;  // as safetensors spells it
  int64_t size;           // bytes per element
  bool is_float;
};

const DTypeTraits& dtype_traits(DType t);
inline std::string_view dtype_name(DType t) { return dtype_traits(t).name; }
inline int64_t dtype_size(DType t) { return dtype_traits(t).size; }
// Parses a safetensors dtype name ("F32", "BF16", ...); nullopt when unknown.
std::optional<DType> dtype_from_name(std::string_view name);

// Half-precision conversions (IEEE binary16 and bfloat16), round-to-nearest-even on the way down.
inline float bf16_to_f32(uint16_t h) {
  uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}
float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);

// Converts n elements of type `from` at src to fp32 (F32/F16/BF16/F64 and the integer types).
void convert_to_f32(DType from, const void* src, float* dst, int64_t n);

}  // namespace lowbit
