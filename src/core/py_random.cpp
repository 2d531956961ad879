#include "core/py_random.h"

#include "core/error.h"

#include <bit>
#include <vector>

namespace lowbit {

void PyRandom::seed_int(uint64_t n) {
  // init_genrand(19650218), then init_by_array with the seed's 32-bit words, least significant
  // first (one word [0] for seed 0), as CPython's random_seed does.
  std::vector<uint32_t> key;
  if (n == 0) key.push_back(0);
  while (n) {
    key.push_back(uint32_t(n & 0xffffffffu));
    n >>= 32;
  }
  mt_[0] = 19650218u;
  for (int i = 1; i < 624; ++i) mt_[size_t(i)] = 1812433253u * (mt_[size_t(i - 1)] ^ (mt_[size_t(i - 1)] >> 30)) + uint32_t(i);
  int i = 1;
  size_t j = 0;
  const size_t klen = key.size();
  for (size_t k = std::max<size_t>(624, klen); k; --k) {
    mt_[size_t(i)] = (mt_[size_t(i)] ^ ((mt_[size_t(i - 1)] ^ (mt_[size_t(i - 1)] >> 30)) * 1664525u)) + key[j] + uint32_t(j);
    ++i;
    ++j;
    if (i >= 624) {
      mt_[0] = mt_[623];
      i = 1;
    }
    if (j >= klen) j = 0;
  }
  for (int k = 623; k; --k) {
    mt_[size_t(i)] = (mt_[size_t(i)] ^ ((mt_[size_t(i - 1)] ^ (mt_[size_t(i - 1)] >> 30)) * 1566083941u)) - uint32_t(i);
    ++i;
    if (i >= 624) {
      mt_[0] = mt_[623];
      i = 1;
    }
  }
  mt_[0] = 0x80000000u;
  mti_ = 624;
}

uint32_t PyRandom::genrand_uint32() {
  static constexpr uint32_t kMag01[2] = {0u, 0x9908b0dfu};
  if (mti_ >= 624) {
    int kk = 0;
    for (; kk < 624 - 397; ++kk) {
      const uint32_t y = (mt_[size_t(kk)] & 0x80000000u) | (mt_[size_t(kk + 1)] & 0x7fffffffu);
      mt_[size_t(kk)] = mt_[size_t(kk + 397)] ^ (y >> 1) ^ kMag01[y & 1u];
    }
    for (; kk < 623; ++kk) {
      const uint32_t y = (mt_[size_t(kk)] & 0x80000000u) | (mt_[size_t(kk + 1)] & 0x7fffffffu);
      mt_[size_t(kk)] = mt_[size_t(kk + (397 - 624))] ^ (y >> 1) ^ kMag01[y & 1u];
    }
    const uint32_t y = (mt_[623] & 0x80000000u) | (mt_[0] & 0x7fffffffu);
    mt_[623] = mt_[396] ^ (y >> 1) ^ kMag01[y & 1u];
    mti_ = 0;
  }
  uint32_t y = mt_[size_t(mti_++)];
  y ^= (y >> 11);
  y ^= (y << 7) & 0x9d2c5680u;
  y ^= (y << 15) & 0xefc60000u;
  y ^= (y >> 18);
  return y;
}

uint64_t PyRandom::getrandbits(int k) {
  LB_ASSERT(k > 0 && k <= 64);
  if (k <= 32) return genrand_uint32() >> (32 - k);
  // CPython fills 32-bit words least significant first; the last word keeps its top bits.
  const uint64_t lo = genrand_uint32();
  const uint64_t hi = genrand_uint32() >> (64 - k);
  return lo | (hi << 32);
}

uint64_t PyRandom::randbelow(uint64_t n) {
  LB_ASSERT(n > 0);
  const int k = int(std::bit_width(n));
  uint64_t r = getrandbits(k);
  while (r >= n) r = getrandbits(k);
  return r;
}

int64_t PyRandom::randint(int64_t a, int64_t b) {
  LB_CHECK(b >= a, "randint: empty range [{}, {}]", a, b);
  return a + int64_t(randbelow(uint64_t(b - a) + 1));
}

double PyRandom::random() {
  const uint32_t a = genrand_uint32() >> 5, b = genrand_uint32() >> 6;
  return (a * 67108864.0 + b) * (1.0 / 9007199254740992.0);
}

}  // namespace lowbit
