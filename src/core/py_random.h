// Python's `random` module, bit for bit: MT19937 seeded the way random.seed(int) seeds it
// (init_by_array over the seed's 32-bit words), getrandbits, randint/randrange via _randbelow,
// and random(). GPTQ-derived code draws its calibration and C4 windows with it, so lowbit does
// too, to select the very same windows.
#pragma once

#include <array>
#include <cstdint>

namespace lowbit {

class PyRandom {
 public:
  explicit PyRandom(uint64_t seed = 0) { seed_int(seed); }
  // random.seed(n) for a non-negative integer n.
  void seed_int(uint64_t n);
  uint32_t genrand_uint32();
  // random.getrandbits(k), 0 < k <= 64.
  uint64_t getrandbits(int k);
  // random._randbelow(n): uniform in [0, n), by rejection on getrandbits(n.bit_length()).
  uint64_t randbelow(uint64_t n);
  // random.randint(a, b): a + _randbelow(b - a + 1).
  int64_t randint(int64_t a, int64_t b);
  // random.random(): 53-bit float in [0, 1).
  double random();

 private:
  std::array<uint32_t, 624> mt_{};
  int mti_ = 625;
};

}  // namespace lowbit
