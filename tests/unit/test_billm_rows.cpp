// BiLLM's GPU search code (src/backend/cuda/billm_rows.h) run on the host over every (candidate,
// row) of a block, as the GPU's threads run it, against the host searches (billm_host_searches,
// the code the parity fixtures pin to the official BiLLM): every candidate's error bit for bit.
// The chunked mean against reference_numerics' torch_sum_chunk_partials_f32 and
// torch_sum_from_chunks_f32 too. Built with -ffp-contract=off (tests/CMakeLists.txt), as the
// host searches are.
#include "backend/cuda/billm_rows.h"
#include "quant/billm.h"
#include "quant/reference_numerics.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

namespace lowbit {
namespace {

namespace br = billm_rows;

// The mean of a candidate's [rows, n] errors as the GPU takes it: partials per chunk, then the
// chunks' combination.
float chunked_mean(const std::vector<float>& e) {
  const int64_t numel = int64_t(e.size()), chunk = br::chunk_of(numel), nchunks = numel / chunk;
  std::vector<float> partials(static_cast<size_t>(nchunks * br::kPartials));
  for (int64_t c = 0; c < nchunks; ++c)
    for (int q = 0; q < br::kPartials; ++q)
      partials[size_t(c * br::kPartials + q)] = br::chunk_partial(e.data() + c * chunk, chunk, q);
  return br::div(br::sum_from_chunks(partials.data(), e.data() + nchunks * chunk, numel), float(numel));
}

bool same_bits(float a, float b) { return std::memcmp(&a, &b, sizeof(float)) == 0; }

// A block's saliency as BiLLM's search sees it: w^2 / d^2 with a few exact zeros (dead inputs)
// and repeated values (ties in the masks and the quantiles); signed values with `signed_values`
// (the magnitude metric).
std::vector<float> saliency(int64_t rows, int64_t n, uint32_t seed, bool signed_values) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd;
  std::vector<float> d(static_cast<size_t>(n));
  for (float& x : d) x = 0.2f + std::fabs(nd(rng));
  std::vector<float> s(static_cast<size_t>(rows * n));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < n; ++j) {
      float w = 0.02f * nd(rng);
      if (j % 17 == 3) w = 0.0f;
      if (r % 5 == 2 && j > 0) w = s[size_t(r * n + j - 1)] != 0.0f ? 0.013f : w;
      s[size_t(r * n + j)] = signed_values ? w : (w * w) / (d[size_t(j)] * d[size_t(j)]);
    }
  return s;
}

TEST(BillmRows, ChunkedSumIsTorchSum) {
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> ud(0.0f, 1.0f);
  for (const int64_t numel : {int64_t(8), int64_t(100), int64_t(511), int64_t(512), int64_t(4 * 512 + 77),
                              int64_t(17 * 512), int64_t(300 * 128), int64_t(70001)}) {
    std::vector<float> x(static_cast<size_t>(numel));
    for (float& v : x) v = ud(rng) * ud(rng);
    const int64_t chunk = br::chunk_of(numel), nchunks = numel / chunk;
    ASSERT_EQ(chunk, torch_sum_chunk_f32(numel));
    std::vector<float> p_gpu(static_cast<size_t>(nchunks * 32)), p_host(static_cast<size_t>(nchunks * 32));
    for (int64_t c = 0; c < nchunks; ++c) {
      for (int q = 0; q < 32; ++q) p_gpu[size_t(c * 32 + q)] = br::chunk_partial(x.data() + c * chunk, chunk, q);
      torch_sum_chunk_partials_f32(x.data() + c * chunk, chunk, p_host.data() + c * 32);
    }
    EXPECT_EQ(0, std::memcmp(p_gpu.data(), p_host.data(), p_gpu.size() * sizeof(float))) << numel;
    const float a = br::sum_from_chunks(p_gpu.data(), x.data() + nchunks * chunk, numel);
    const float b = torch_sum_f32(x.data(), numel);
    EXPECT_TRUE(same_bits(a, b)) << numel << ": " << a << " vs " << b;
  }
}

TEST(BillmRows, SearchErrorsAreTheHostsBitForBit) {
  const auto host = billm_host_searches();
  struct Case {
    int64_t rows, n;
    bool signed_values;
  };
  for (const Case cs : {Case{37, 128, false}, Case{300, 128, false}, Case{64, 64, true}, Case{45, 24, false},
                        Case{19, 8, false}}) {
    const int64_t rows = cs.rows, n = cs.n, numel = rows * n;
    const std::vector<float> s = saliency(rows, n, uint32_t(rows * 1000 + n), cs.signed_values);
    // Column ranks by descending sum of |s| (ties by index), as search_masks makes them.
    std::vector<float> colsum(static_cast<size_t>(n), 0.0f);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = 0; j < n; ++j) colsum[size_t(j)] += std::fabs(s[size_t(r * n + j)]);
    std::vector<int32_t> order(static_cast<size_t>(n)), rank(static_cast<size_t>(n));
    for (int32_t j = 0; j < n; ++j) order[size_t(j)] = j;
    std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return colsum[a] > colsum[b]; });
    for (int32_t i = 0; i < n; ++i) rank[size_t(order[size_t(i)])] = i;

    const int64_t nk = std::min<int64_t>(49, n - 1);
    const std::vector<float> want = host->salient_errors(s.data(), rows, n, rank.data(), nk);
    ASSERT_EQ(int64_t(want.size()), nk);
    std::vector<float> e(static_cast<size_t>(numel));
    for (int64_t c = 0; c < nk; ++c) {
      for (int64_t r = 0; r < rows; ++r)
        br::salient_row(int(n), [&](int j) { return s[size_t(r * n + j)]; }, rank.data(), int(c + 1),
                        e.data() + r * n);
      const float got = chunked_mean(e);
      EXPECT_TRUE(same_bits(got, want[size_t(c)])) << rows << "x" << n << " salient k=" << c + 1 << ": " << got
                                                   << " vs " << want[size_t(c)];
    }

    // Step c's inputs for 3 salient columns: keep, |s| outside them, g3 any fixed values, splits
    // from the sorted magnitudes (repeats included).
    std::vector<uint8_t> keep(static_cast<size_t>(numel));
    std::vector<float> absn(static_cast<size_t>(numel)), g3(static_cast<size_t>(numel));
    for (int64_t i = 0; i < numel; ++i) {
      keep[size_t(i)] = rank[size_t(i % n)] >= 3;
      absn[size_t(i)] = std::fabs(s[size_t(i)] * (keep[size_t(i)] ? 1.0f : 0.0f));
      g3[size_t(i)] = keep[size_t(i)] ? 0.0f : s[size_t(i)] * 0.75f;
    }
    std::vector<float> sorted = absn;
    std::sort(sorted.begin(), sorted.end());
    std::vector<float> splits;
    for (int i = 0; i < 21; ++i) splits.push_back(sorted[size_t((numel - 1) * i / 20)]);
    const std::vector<float> want2 = host->split_errors(s.data(), absn.data(), keep.data(), g3.data(), rows, n, splits);
    for (size_t c = 0; c < splits.size(); ++c) {
      for (int64_t r = 0; r < rows; ++r)
        br::split_row(
            int(n), [&](int j) { return s[size_t(r * n + j)]; }, [&](int j) { return absn[size_t(r * n + j)]; },
            [&](int j) { return keep[size_t(r * n + j)] != 0; }, [&](int j) { return g3[size_t(r * n + j)]; },
            splits[c], e.data() + r * n);
      const float got = chunked_mean(e);
      EXPECT_TRUE(same_bits(got, want2[c])) << rows << "x" << n << " split " << c << ": " << got << " vs "
                                            << want2[c];
    }
  }
}

}  // namespace
}  // namespace lowbit
