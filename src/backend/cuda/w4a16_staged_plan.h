// How the staged W4A16 kernel (w4a16_staged.cu) cuts a product: rows per block and K splits,
// chosen by a small cost model. Plain C++ (the launcher calls it; tests/unit checks its bounds).
//
// The trade-off. A block computes `rows` x 256 outputs over one split of K. LLaMA-3-8B's
// 4096-column linears give only 16 column blocks, so without splitting K a 132-SM GPU would run
// 16 blocks; splitting K fills the SMs, but each split writes rows x 256 fp32 partial sums and
// the last block of a tile reads all of them back (one SM's L2 bandwidth: the epilogue's tail).
// Larger row blocks reuse each dequantized B fragment across more m-tiles (fewer instructions
// per mma) but leave fewer blocks. The model below estimates, per configuration and split
// count, the time of one wave of blocks bound by tensor-core issue, by one SM's streaming rate
// and by the HBM's, plus the tail; it picks the cheapest. The constants are estimates for an
// H100 SXM (bench_w4a16 --splits N shows where they are off).
#pragma once

#include <algorithm>
#include <cstdint>

namespace lowbit::cuda::staged {

// mma.sync bf16 FLOP/s one SM sustains with enough warps (about 60% of the 989 TFLOP/s dense
// peak over 132 SMs: mma.sync issues slower than wgmma).
inline constexpr double kSmMmaFlops = 4.5e12;
// Bytes/s one SM streams from HBM or L2 with 3 stages of 8-24 KiB in flight, and one SM reads
// back from L2 in the split epilogue.
inline constexpr double kSmStreamBytes = 100e9;
inline constexpr double kSmL2ReadBytes = 110e9;
inline constexpr double kHbmBytes = 3.0e12;  // achievable HBM3 bandwidth of the whole GPU

// Fraction of kSmMmaFlops a warp of `wmt` m-tiles reaches: each k-step's dequantization (~70
// instructions for 64 columns) is shared by 8 wmt mma.
inline double mma_efficiency(int wmt) { return wmt >= 4 ? 0.9 : wmt == 2 ? 0.75 : 0.5; }

// m-tiles per warp of the compiled row blocks (w4a16_staged.cu): 16 -> 1, 32 -> 2, 64 and 128 -> 4.
inline int wmt_of_rows(int rows) { return rows >= 64 ? 4 : rows == 32 ? 2 : 1; }

struct Plan {
  int rows = 16;    // rows per block: 16, 32, 64 or 128
  int splits = 1;   // K splits (each a whole number of 4-step stages, none empty)
  int per = 4;      // k-steps per split
  double est_us = 0;
};

// Split `ksteps` into about `splits` ranges of whole stages (4 k-steps), none empty.
inline void cut_splits(int64_t ksteps, int splits, Plan& p) {
  splits = int(std::clamp<int64_t>(splits, 1, std::min<int64_t>(ksteps, 65535)));
  int64_t per = (ksteps + splits - 1) / splits;
  per = (per + 3) / 4 * 4;
  p.per = int(per);
  p.splits = int((ksteps + per - 1) / per);
}

// Estimated microseconds of one product (launch overhead left out: the same for all plans).
inline double estimate_us(int64_t M, int64_t chunks, int64_t ksteps, int rows, int splits, int per, int sms,
                          int blocks_per_sm) {
  const int64_t colblocks = (chunks + 3) / 4, mblocks = (M + rows - 1) / rows;
  const int64_t blocks = colblocks * mblocks * splits;
  const int64_t resident = int64_t(blocks_per_sm) * sms;
  const int64_t waves = (blocks + resident - 1) / resident;
  const int64_t per_sm = (std::min(blocks, resident) + sms - 1) / sms;  // blocks sharing an SM
  // The mma run on all rows of a block; A is read, and partial sums written and read back, only
  // for rows below M.
  const double live_rows = double(std::min<int64_t>(rows, M));
  const double flops = double(rows) * 256.0 * 16.0 * 2.0 * per;
  const double bytes = 256.0 * 16.0 * 0.5 * per + live_rows * 16.0 * 2.0 * per;  // codes + A
  const double t_flop = double(waves * per_sm) * flops / (kSmMmaFlops * mma_efficiency(wmt_of_rows(rows)));
  const double t_sm = double(waves * per_sm) * bytes / kSmStreamBytes;
  const double t_hbm = (double(chunks) * 64.0 * double(ksteps) * 16.0 * 0.5 + double(M) * double(ksteps) * 32.0) /
                       kHbmBytes;
  const double t_tail = splits > 1 ? live_rows * 256.0 * 4.0 * double(splits + 1) / kSmL2ReadBytes : 0.0;
  return 1e6 * (std::max({t_flop, t_sm, t_hbm}) + t_tail);
}

// The plan for M rows of a weight of `chunks` 64-column chunks and `ksteps` k-steps, given the
// SM count and the resident blocks per SM of each row block (blocks_per_sm(rows)). `splits` > 0
// forces the split count (the row block is still chosen). Rows: the smallest block holding M up
// to 64; beyond, 64 or 128 by the model. Splits: no split shorter than 4 stages.
// `rows_forced` > 0 forces the row block.
template <typename BlocksPerSm>
Plan plan(int64_t M, int64_t chunks, int64_t ksteps, int sms, BlocksPerSm blocks_per_sm, int splits = 0,
          int rows_forced = 0) {
  const int small = M <= 16 ? 16 : M <= 32 ? 32 : 64;
  const int candidates[2] = {rows_forced > 0 ? rows_forced : small,
                             rows_forced > 0 ? rows_forced : M > 64 ? 128 : small};
  const int max_splits = int(std::clamp<int64_t>(ksteps / 16, 1, 64));
  Plan best;
  best.est_us = -1;
  for (int rows : candidates) {
    const int bps = std::max(1, blocks_per_sm(rows));
    for (int s = splits > 0 ? splits : 1; s <= (splits > 0 ? splits : max_splits); ++s) {
      Plan p;
      p.rows = rows;
      cut_splits(ksteps, s, p);
      p.est_us = estimate_us(M, chunks, ksteps, rows, p.splits, p.per, sms, bps);
      if (best.est_us < 0 || p.est_us < best.est_us) best = p;
    }
  }
  return best;
}

}  // namespace lowbit::cuda::staged
