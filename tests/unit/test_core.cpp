#include "core/dtype.h"
#include "core/hash.h"
#include "core/phase_profile.h"
#include "core/tensor.h"
#include "core/utf8.h"
#include "test_util.h"

#include <gtest/gtest.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include <chrono>
#include <cmath>

namespace lowbit {

TEST(DType, NamesRoundTrip) {
  for (const char* n : {"F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL", "F8_E4M3"}) {
    auto t = dtype_from_name(n);
    ASSERT_TRUE(t.has_value()) << n;
    EXPECT_EQ(dtype_name(*t), n);
  }
  EXPECT_FALSE(dtype_from_name("F17").has_value());
  EXPECT_FALSE(dtype_from_name("bf16").has_value());  // safetensors names are upper case
  EXPECT_EQ(dtype_size(DType::BF16), 2);
  EXPECT_EQ(dtype_size(DType::I32), 4);
}

// Values from the IEEE 754 binary16 definition.
TEST(DType, F16KnownValues) {
  EXPECT_EQ(f16_to_f32(0x3c00), 1.0f);
  EXPECT_EQ(f16_to_f32(0xc000), -2.0f);
  EXPECT_EQ(f16_to_f32(0x7bff), 65504.0f);
  EXPECT_EQ(f16_to_f32(0x0400), std::ldexp(1.0f, -14));
  EXPECT_EQ(f16_to_f32(0x0001), std::ldexp(1.0f, -24));
  EXPECT_TRUE(std::isinf(f16_to_f32(0x7c00)));
  EXPECT_TRUE(std::isnan(f16_to_f32(0x7e00)));
  EXPECT_EQ(f32_to_f16(1.0f + std::ldexp(1.0f, -11)), 0x3c00);      // tie to even (down)
  EXPECT_EQ(f32_to_f16(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3c02);  // tie to even (up)
  EXPECT_EQ(f32_to_f16(65520.0f), 0x7c00);                          // overflows to inf
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -25)), 0x0000);             // tie to even: zero
  EXPECT_EQ(f32_to_f16(std::ldexp(3.0f, -26)), 0x0001);
}

TEST(DType, F16RoundTripIsExactForEveryValue) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = f16_to_f32(uint16_t(h));
    if (std::isnan(f)) continue;
    ASSERT_EQ(f32_to_f16(f), h) << std::hex << h;
  }
}

TEST(DType, Bf16) {
  EXPECT_EQ(bf16_to_f32(0x3f80), 1.0f);
  EXPECT_EQ(f32_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(f32_to_bf16(1.0f + std::ldexp(1.0f, -8)), 0x3f80);      // tie to even
  EXPECT_EQ(f32_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3f82);
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = bf16_to_f32(uint16_t(h));
    if (std::isnan(f)) continue;
    ASSERT_EQ(f32_to_bf16(f), h);
  }
}

TEST(Tensor, EmptyIsZeroedAndContiguous) {
  Tensor t = Tensor::empty(DType::F32, {3, 5});
  EXPECT_EQ(t.numel(), 15);
  EXPECT_EQ(t.nbytes(), 60);
  EXPECT_TRUE(t.is_contiguous());
  EXPECT_EQ(t.strides(), (std::vector<int64_t>{5, 1}));
  for (int i = 0; i < 15; ++i) EXPECT_EQ(t.data_as<float>()[i], 0.0f);
  EXPECT_EQ(t.shape_str(), "[3, 5]");
}

TEST(Tensor, ToF32FromBf16) {
  Tensor t = Tensor::empty(DType::BF16, {2});
  t.mutable_data_as<uint16_t>()[0] = 0x3f80;
  t.mutable_data_as<uint16_t>()[1] = 0xc040;
  Tensor f = t.to_f32();
  EXPECT_EQ(f.data_as<float>()[0], 1.0f);
  EXPECT_EQ(f.data_as<float>()[1], -3.0f);
}

// FIPS 180-2 test vectors.
TEST(Hash, Sha256Vectors) {
  EXPECT_EQ(sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(sha256_hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

// The fingerprint sees every byte: a flipped bit anywhere (the tail words too) or a swap of two
// words changes it; equal bytes give equal prints whatever the number of threads.
TEST(Hash, FingerprintSeesEveryByte) {
  std::vector<unsigned char> a(size_t(1) << 20 | 5);
  for (size_t i = 0; i < a.size(); ++i) a[i] = static_cast<unsigned char>((i * 2654435761u) >> 13);
  const uint64_t p = fingerprint64(a.data(), a.size());
  std::vector<unsigned char> b = a;
  EXPECT_EQ(fingerprint64(b.data(), b.size()), p);
#ifdef _OPENMP
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  EXPECT_EQ(fingerprint64(b.data(), b.size()), p);
  omp_set_num_threads(threads);
#endif
  for (size_t at : {size_t(0), size_t(777), a.size() / 2, a.size() - 8, a.size() - 1}) {
    b[at] ^= 0x10;
    EXPECT_NE(fingerprint64(b.data(), b.size()), p) << "byte " << at;
    b[at] = a[at];
  }
  std::swap_ranges(b.begin(), b.begin() + 8, b.begin() + 64);
  EXPECT_NE(fingerprint64(b.data(), b.size()), p);
  EXPECT_NE(fingerprint64(a.data(), a.size() - 1), p);  // the length counts
}

TEST(Utf8, Validation) {
  EXPECT_EQ(utf8_find_invalid("plain ascii"), std::string_view::npos);
  EXPECT_EQ(utf8_find_invalid("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"), std::string_view::npos);
  EXPECT_EQ(utf8_find_invalid("ab\xc3"), 2u);              // truncated
  EXPECT_EQ(utf8_find_invalid("\xc0\xaf"), 0u);            // overlong
  EXPECT_EQ(utf8_find_invalid("x\xed\xa0\x80"), 1u);       // surrogate
  EXPECT_EQ(utf8_find_invalid("\xf4\x90\x80\x80"), 0u);    // past U+10FFFF
  EXPECT_EQ(utf8_find_invalid("\x80"), 0u);                // stray continuation
  std::string s;
  utf8_append(s, 0x1F600);
  size_t i = 0;
  EXPECT_EQ(utf8_next(s, i), 0x1F600u);
  EXPECT_EQ(i, 4u);
}

// Phases add up their scopes' wall time per name, in the order they first ran, and only while
// LOWBIT_PHASE_PROFILE is set.
TEST(PhaseProfile, SumsScopesByNameWhenEnabled) {
  const auto total = [](const std::string& name) {
    for (const PhaseTotal& p : phase_profile_totals())
      if (p.name == name) return p;
    return PhaseTotal{};
  };
  {
    const test::ScopedEnv off("LOWBIT_PHASE_PROFILE", "0");
    const PhaseScope p("test/off");
  }
  EXPECT_EQ(total("test/off").count, 0);
  const test::ScopedEnv on("LOWBIT_PHASE_PROFILE", "1");
  for (int i = 0; i < 3; ++i) {
    const PhaseScope p("test/on");
    const auto t0 = std::chrono::steady_clock::now();
    while (std::chrono::steady_clock::now() - t0 < std::chrono::milliseconds(2)) {
    }
  }
  const PhaseTotal t = total("test/on");
  EXPECT_EQ(t.count, 3);
  EXPECT_GE(t.seconds, 0.006);
  EXPECT_LT(t.seconds, 5.0);
}

}  // namespace lowbit
