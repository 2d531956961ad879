// lowbit's PyRandom against values printed by CPython (scripts/print_python_random.py).
#include "core/py_random.h"

#include <gtest/gtest.h>

namespace lowbit {
namespace {

struct Expected {
  uint64_t seed;
  uint32_t u32[4];    // getrandbits(32) x 4
  int64_t randint[6];  // randint(0, 1000) x 4, randint(0, 2**40) x 2
  uint64_t bits[5];   // getrandbits(k) for k = 1, 7, 31, 33, 64
  double floats[2];   // random() x 2
};

// Printed by CPython 3.11.7.
const Expected kPython[] = {
{0ULL, {3626764237, 1654615998, 3255389356, 3823568514}, {864LL, 394LL, 776LL, 911LL, 87705687125LL, 1067347797602LL}, {1ULL, 49ULL, 1627694678ULL, 3823568514ULL, 4776171008201404212ULL}, {0.8444218515250481, 0.7579544029403025}},
{1ULL, {577090037, 2444712010, 3639700191, 3445702192}, {137LL, 582LL, 867LL, 821LL, 140719340484LL, 258793550908LL}, {0ULL, 72ULL, 1819850095ULL, 7740669488ULL, 4705193143269049553ULL}, {0.13436424411240122, 0.8474337369372327}},
{42ULL, {2746317213, 478163327, 107420369, 3184935163}, {654LL, 114LL, 25LL, 759LL, 538052153943LL, 305901360862LL}, {1ULL, 14ULL, 53710184ULL, 3184935163ULL, 4117511471858006928ULL}, {0.6394267984578837, 0.025010755222666936}},
{4294967301ULL, {675479763, 2085189291, 1213270837, 3822202474}, {161LL, 497LL, 289LL, 911LL, 777451458305LL, 376358430197LL}, {0ULL, 62ULL, 606635418ULL, 8117169770ULL, 267910309641445477ULL}, {0.15727238718789782, 0.2824866316461999}},
{9223372036854775807ULL, {1359979423, 2819855560, 2711238091, 569878368}, {324LL, 672LL, 646LL, 135LL, 1081488030500LL, 238170813576LL}, {0ULL, 84ULL, 1355619045ULL, 4864845664ULL, 8364931118716031454ULL}, {0.3166448820870279, 0.631259308253863}},
};

TEST(PyRandom, MatchesCPython) {
  for (const Expected& e : kPython) {
    PyRandom r(e.seed);
    for (uint32_t v : e.u32) EXPECT_EQ(r.getrandbits(32), v) << "seed " << e.seed;
    r.seed_int(e.seed);
    for (int i = 0; i < 4; ++i) EXPECT_EQ(r.randint(0, 1000), e.randint[i]) << "seed " << e.seed;
    for (int i = 4; i < 6; ++i) EXPECT_EQ(r.randint(0, int64_t(1) << 40), e.randint[i]) << "seed " << e.seed;
    r.seed_int(e.seed);
    const int ks[5] = {1, 7, 31, 33, 64};
    for (int i = 0; i < 5; ++i) EXPECT_EQ(r.getrandbits(ks[i]), e.bits[i]) << "seed " << e.seed << " k " << ks[i];
    r.seed_int(e.seed);
    for (double f : e.floats) EXPECT_EQ(r.random(), f) << "seed " << e.seed;
  }
}

}  // namespace
}  // namespace lowbit
