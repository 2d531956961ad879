// The staged W4A16 kernel's shared-memory layout and thread maps (backend/cuda/w4a16_staged_layout.h)
// replayed on the CPU, no GPU needed:
//  - maps: every byte of an A, B and scale stage is the target of exactly one 16-byte copy; the
//    A rows' XOR swizzle keeps the 8 addresses of each ldmatrix 8x8 matrix (and of 8 consecutive
//    copies) in 8 different 16-byte bank groups; the scale words a lane reads are the ones
//    pack/w4_tiles_layout.h's scale_pos gives for its columns;
//  - ldmatrix: the registers the emulated ldmatrix.x4 hands each lane are the mma's A fragment
//    (the PTX ISA's layout, typed out independently below), and each A element of an m-tile and
//    k-step is read exactly once;
//  - the whole kernel: an emulator that runs the kernel's grid, its cp.async ring (each byte
//    tagged with the stage that wrote it: a read of a byte not written for the stage being
//    multiplied fails), ldmatrix, the code words' dequantization and the mma on the fragments
//    of all 32 lanes, over partial chunks and column blocks, M across the 16- to 128-row
//    blocks, act_order, uneven and 1-step groups and 1 or several K splits; against the
//    tiles' own dequantized weight (pack::dequantize_w4_tiles) times x, summed in double. The
//    numbers are exact (power-of-two scales, activations in {-8..8} / 8), so any misplaced
//    byte shows as a difference.
#include "backend/cuda/w4a16_staged_layout.h"
#include "backend/cuda/w4a16_staged_plan.h"
#include "core/dtype.h"
#include "pack/w4_tiles.h"
#include "pack/w4_tiles_layout.h"
#include "w4_test_linear.h"

#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

namespace lowbit {
namespace {

namespace st = cuda::staged;
using test::random_w4_linear;
using test::W4Order;
using test::W4Scales;

struct Config {
  int wmt, wm;
};
// The kernel's compiled ones, and two others of the same template (their maps must hold too).
const Config kConfigs[] = {{1, 1}, {2, 1}, {4, 1}, {4, 2}, {1, 2}, {2, 2}};

TEST(W4A16StagedLayout, CopiesCoverEveryStageByteOnce) {
  for (const Config c : kConfigs) {
    const int rows = st::block_rows(c.wmt, c.wm), threads = st::threads(c.wm);
    ASSERT_EQ(rows * st::kAUnitsPerRow % threads, 0);
    std::vector<int> hits(size_t(st::a_stage_bytes(rows) / 16), 0);
    for (int u = 0; u < rows * st::kAUnitsPerRow; ++u) {
      const st::RowUnit ru = st::a_copy_unit(u);
      ASSERT_LT(ru.row, rows);
      ASSERT_LT(ru.unit, st::kAUnitsPerRow);
      const int off = st::a_offset(ru.row, ru.unit);
      ASSERT_EQ(off % 16, 0);
      ASSERT_LT(off, st::a_stage_bytes(rows));
      ++hits[size_t(off / 16)];
    }
    for (size_t i = 0; i < hits.size(); ++i) ASSERT_EQ(hits[i], 1) << "A unit " << i << " rows " << rows;
    // 8 consecutive copies (one row) land in 8 different bank groups.
    for (int u0 = 0; u0 < rows * st::kAUnitsPerRow; u0 += 8) {
      std::set<int> groups;
      for (int u = u0; u < u0 + 8; ++u) {
        const st::RowUnit ru = st::a_copy_unit(u);
        groups.insert((st::a_offset(ru.row, ru.unit) / 16) % 8);
      }
      EXPECT_EQ(groups.size(), 8u) << "copies " << u0;
    }
  }
  std::vector<int> b_hits(size_t(st::kBUnits), 0);
  for (int u = 0; u < st::kBUnits; ++u) {
    const st::BUnit bu = st::b_copy_unit(u);
    ASSERT_LT(bu.cb, st::kBlockChunks);
    ASSERT_LT(bu.kk, st::kStageSteps);
    ++b_hits[size_t(st::b_offset(bu.cb, bu.kk, bu.lane) / 16)];
  }
  for (int h : b_hits) ASSERT_EQ(h, 1);
  // A warp's B read: its 32 lanes' 16 bytes are 512 contiguous bytes (conflict-free).
  for (int cb = 0; cb < st::kBlockChunks; ++cb)
    for (int kk = 0; kk < st::kStageSteps; ++kk)
      for (int lane = 0; lane < 32; ++lane)
        ASSERT_EQ(st::b_offset(cb, kk, lane), st::b_offset(cb, kk, 0) + 16 * lane);
  std::vector<int> s_hits(size_t(st::kScaleStageBytes / 4), 0);
  for (int slot = 0; slot < st::kScaleSlots; ++slot)
    for (int u = 0; u < st::kScaleUnitsPerSlot; ++u) {
      const st::ScaleUnit su = st::scale_copy_unit(u);
      for (int w = 0; w < 4; ++w) ++s_hits[size_t(st::scale_word(slot, su.cb, su.word + w))];
    }
  for (int h : s_hits) ASSERT_EQ(h, 1);
}

TEST(W4A16StagedLayout, ScaleWordsAreTheLayoutsOfTheLanesColumns) {
  // The copy of (chunk, group) words puts global word (chunk * groups + group) * 64 + word at
  // scale_word(slot, cb, word); lane 4 g + t of the warp of block chunk cb reads words g * 8 +
  // tile: they must be scale_pos of its column 64 chunk + 8 tile + g.
  const int64_t groups = 7;
  for (int64_t chunk = 0; chunk < 9; ++chunk)
    for (int64_t group = 0; group < groups; ++group)
      for (int g = 0; g < 8; ++g)
        for (int tile = 0; tile < 8; ++tile)
          ASSERT_EQ((chunk * groups + group) * 64 + g * 8 + tile,
                    pack::w4::scale_pos(chunk * 64 + 8 * tile + g, group, groups));
}

TEST(W4A16StagedLayout, StageGroupsHoldEveryStepsGroup) {
  for (int gs = 1; gs <= 9; ++gs)
    for (int kend = 1; kend <= 40; ++kend)
      for (int step0 = 0; step0 < kend; step0 += st::kStageSteps) {
        const st::StageGroups sg = st::stage_groups(step0, kend, gs);
        ASSERT_GE(sg.count, 1);
        ASSERT_LE(sg.count, st::kScaleSlots);
        for (int s = step0; s < std::min(step0 + st::kStageSteps, kend); ++s) {
          ASSERT_GE(s / gs, sg.first);
          ASSERT_LT(s / gs, sg.first + sg.count);
        }
      }
}

// ldmatrix.x4 on the CPU: matrix i's row r is the 16 bytes at the address of lane 8 i + r;
// lane l receives, in register i, row l / 4's bf16 pair at columns 2 (l % 4), 2 (l % 4) + 1.
// `read(offset)` returns the bf16 at a byte offset of the stage.
template <typename Read>
void ldmatrix_x4(const int (&addr)[32], Read read, uint32_t (&regs)[32][4]) {
  for (int l = 0; l < 32; ++l)
    for (int i = 0; i < 4; ++i) {
      const int base = addr[8 * i + l / 4] + 4 * (l % 4);
      regs[l][i] = uint32_t(read(base)) | uint32_t(read(base + 2)) << 16;
    }
}

TEST(W4A16StagedLayout, LdmatrixGivesTheMmaAFragmentsAndReadsEachElementOnce) {
  for (const Config c : kConfigs) {
    const int rows = st::block_rows(c.wmt, c.wm);
    // A stage whose element (row, slot) holds the number row * 64 + slot, stored through the
    // copy map (logical unit -> swizzled offset).
    std::vector<uint16_t> stage(size_t(st::a_stage_bytes(rows) / 2));
    for (int row = 0; row < rows; ++row)
      for (int slot = 0; slot < 64; ++slot)
        stage[size_t((st::a_offset(row, slot / 8) + 2 * (slot % 8)) / 2)] = uint16_t(row * 64 + slot);
    const auto read = [&](int off) { return stage[size_t(off / 2)]; };
    for (int wr = 0; wr < c.wm; ++wr)
      for (int mt = 0; mt < c.wmt; ++mt)
        for (int kk = 0; kk < st::kStageSteps; ++kk) {
          const int row0 = (wr * c.wmt + mt) * 16;
          int addr[32];
          for (int lane = 0; lane < 32; ++lane) {
            const st::RowUnit u = st::a_ldmatrix_unit(row0, kk, lane);
            addr[lane] = st::a_offset(u.row, u.unit);
          }
          for (int i = 0; i < 4; ++i) {  // each 8x8 matrix: 8 different bank groups
            std::set<int> groups;
            for (int r = 0; r < 8; ++r) groups.insert((addr[8 * i + r] / 16) % 8);
            EXPECT_EQ(groups.size(), 8u) << "rows " << rows << " matrix " << i;
          }
          uint32_t regs[32][4];
          ldmatrix_x4(addr, read, regs);
          std::vector<int> seen(16 * 16, 0);
          for (int l = 0; l < 32; ++l) {
            const int g = l / 4, t = l % 4;
            // PTX ISA, mma.m16n8k16 A (bf16): a0,a1: (g, 2t..2t+1); a2,a3: (g + 8, 2t..);
            // a4,a5: (g, 2t + 8..); a6,a7: (g + 8, 2t + 8..); two per 32-bit register.
            const int frag_row[4] = {g, g + 8, g, g + 8}, frag_col[4] = {2 * t, 2 * t, 2 * t + 8, 2 * t + 8};
            for (int i = 0; i < 4; ++i)
              for (int e = 0; e < 2; ++e) {
                const int want_row = row0 + frag_row[i], want_slot = kk * 16 + frag_col[i] + e;
                const uint16_t got = uint16_t(regs[l][i] >> (16 * e));
                ASSERT_EQ(got, uint16_t(want_row * 64 + want_slot))
                    << "rows " << rows << " m-tile " << row0 / 16 << " kk " << kk << " lane " << l << " reg " << i;
                ++seen[size_t((want_row - row0) * 16 + want_slot - kk * 16)];
              }
          }
          for (int v : seen) ASSERT_EQ(v, 1);
        }
  }
}

TEST(W4A16StagedLayout, PlansCutKIntoWholeStagesAndPickACompiledBlock) {
  const auto bps = [](int rows) { return rows <= 32 ? 3 : rows == 64 ? 2 : 1; };
  for (int64_t M : {1, 16, 17, 32, 33, 64, 65, 100, 128, 129, 256, 1000})
    for (int64_t chunks : {1, 5, 64, 224, 2004})
      for (int64_t ksteps : {1, 7, 8, 13, 256, 896})
        for (int forced : {0, 1, 3, 100})
          for (int rows_forced : {0, 16, 128}) {
            const st::Plan p = st::plan(M, chunks, ksteps, 132, bps, forced, rows_forced);
            const std::string what = "M " + std::to_string(M) + " chunks " + std::to_string(chunks) + " ksteps " +
                                     std::to_string(ksteps) + " splits " + std::to_string(forced);
            ASSERT_TRUE(p.rows == 16 || p.rows == 32 || p.rows == 64 || p.rows == 128) << what;
            if (rows_forced > 0) {
              ASSERT_EQ(p.rows, rows_forced) << what;
            } else {
              ASSERT_GE(p.rows, std::min<int64_t>(M, 64)) << what;
            }
            ASSERT_EQ(p.per % st::kStageSteps, 0) << what;
            ASSERT_GE(p.splits, 1) << what;
            ASSERT_LT(int64_t(p.splits - 1) * p.per, ksteps) << what;  // no empty split
            ASSERT_GE(int64_t(p.splits) * p.per, ksteps) << what;      // all of K
            if (forced == 0) {
              ASSERT_LE(p.splits, std::max<int64_t>(1, ksteps / 16)) << what;
            }
            ASSERT_GT(p.est_us, 0.0) << what;
          }
}

// ---- The whole kernel on the CPU ----

float bf(uint16_t h) { return bf16_to_f32(h); }

// __hmul2(__hsub2(v, c), s) on one bf16 lane: the difference of two small integers is exact,
// the product is rounded once to bf16 (round to nearest even).
uint16_t dequant_lane(uint16_t v, uint16_t c, uint16_t s) { return f32_to_bf16((bf(v) - bf(c)) * bf(s)); }

uint32_t dequant_pair(uint32_t w, int pn, uint32_t c2, uint32_t s2) {
  const uint32_t v = ((w >> (4 * pn)) & 0x000f000fu) | 0x43004300u;
  return uint32_t(dequant_lane(uint16_t(v), uint16_t(c2), uint16_t(s2))) |
         uint32_t(dequant_lane(uint16_t(v >> 16), uint16_t(c2 >> 16), uint16_t(s2 >> 16))) << 16;
}

// y [M, N] (double) from x [M, lda] in slot order (bf16 bits, ksteps * 16 slots valid): the
// staged kernel's grid, ring, fragment maps and mma, replayed.
struct Emulator {
  const pack::W4Tiles& t;
  const std::vector<uint16_t>& x;
  int64_t lda;
  int M, ksteps, wmt, wm;

  std::vector<uint8_t> smem;
  std::vector<int> tag;  // per byte: the stage whose copy wrote it (-1: none yet)

  void copy16(int dst, const void* src, bool valid, int stage) {
    if (valid) std::memcpy(&smem[size_t(dst)], src, 16);
    else std::memset(&smem[size_t(dst)], 0, 16);
    for (int i = 0; i < 16; ++i) tag[size_t(dst + i)] = stage;
  }
  template <typename T>
  T load(int off, int stage) const {
    for (size_t i = 0; i < sizeof(T); ++i)
      if (tag[size_t(off) + i] != stage)
        throw std::runtime_error("shared byte " + std::to_string(off + int(i)) + " read for stage " +
                                 std::to_string(stage) + " holds stage " + std::to_string(tag[size_t(off) + i]));
    T v;
    std::memcpy(&v, &smem[size_t(off)], sizeof(T));
    return v;
  }

  std::vector<double> run(int splits) {
    const int rows = st::block_rows(wmt, wm), threads = st::threads(wm);
    const int chunks = int(t.chunks()), groups = int(t.groups), kstride = int(t.ksteps());
    const int group_steps = int(t.group_slots / 16), N = int(t.n);
    const int colblocks = (chunks + st::kBlockChunks - 1) / st::kBlockChunks, mblocks = (M + rows - 1) / rows;
    int per = (ksteps + splits - 1) / splits;  // as the launcher: whole stages, no empty split
    per = (per + st::kStageSteps - 1) / st::kStageSteps * st::kStageSteps;
    splits = (ksteps + per - 1) / per;
    const int a_stage = st::a_stage_bytes(rows);
    std::vector<double> y(size_t(M) * size_t(N), 0.0);
    smem.assign(size_t(st::smem_bytes(rows)), 0xff);  // 0xffff: a bf16 NaN
    tag.assign(smem.size(), -1);
    for (int bz = 0; bz < mblocks; ++bz)
      for (int split = 0; split < splits; ++split)
        for (int bx = 0; bx < colblocks; ++bx) {
          std::fill(smem.begin(), smem.end(), uint8_t(0xff));
          std::fill(tag.begin(), tag.end(), -1);
          const int chunk0 = bx * st::kBlockChunks, m0 = bz * rows;
          const int kbeg = split * per, kend = std::min(kbeg + per, ksteps);
          const int stages = kbeg < kend ? (kend - kbeg + st::kStageSteps - 1) / st::kStageSteps : 0;
          auto load_stage = [&](int stage) {
            const int buf = stage % st::kStages, step0 = kbeg + stage * st::kStageSteps;
            for (int tid = 0; tid < threads; ++tid) {
              for (int i = 0; i < rows * st::kAUnitsPerRow / threads; ++i) {
                const st::RowUnit u = st::a_copy_unit(tid + i * threads);
                const int row = m0 + u.row;
                const bool valid = row < M && step0 + u.unit / 2 < kend;
                const uint16_t* src =
                    valid ? &x[size_t(int64_t(row) * lda + int64_t(step0) * 16 + u.unit * 8)] : nullptr;
                copy16(buf * a_stage + st::a_offset(u.row, u.unit), src, valid, stage);
              }
              for (int i = 0; i < st::kBUnits / threads; ++i) {
                const st::BUnit u = st::b_copy_unit(tid + i * threads);
                const int c = chunk0 + u.cb, step = step0 + u.kk;
                if (c < chunks && step < kend)
                  copy16(st::b_ring_offset(rows) + buf * st::kBStageBytes + st::b_offset(u.cb, u.kk, u.lane),
                         &t.codes[((size_t(c) * kstride + step) * 32 + u.lane) * 4], true, stage);
              }
              const st::StageGroups grp = st::stage_groups(step0, kend, group_steps);
              const st::ScaleUnit su = st::scale_copy_unit(tid % st::kScaleUnitsPerSlot);
              const int c = chunk0 + su.cb;
              for (int slot = tid / st::kScaleUnitsPerSlot; slot < grp.count; slot += threads / st::kScaleUnitsPerSlot)
                if (c < chunks)
                  copy16(st::scale_ring_offset(rows) + buf * st::kScaleStageBytes +
                             4 * st::scale_word(slot, su.cb, su.word),
                         &t.scales[(size_t(c) * groups + size_t(grp.first + slot)) * 64 + su.word], true, stage);
            }
          };
          // acc[warp][mt][tile][lane][4]
          const int warps = st::kWarpsN * wm;
          std::vector<double> acc(size_t(warps * wmt * 8 * 32 * 4), 0.0);
          auto A = [&](int w, int mt, int tile, int lane, int e) -> double& {
            return acc[size_t((((w * wmt + mt) * 8 + tile) * 32 + lane) * 4 + e)];
          };
          for (int s = 0; s < st::kStages - 1; ++s)
            if (s < stages) load_stage(s);
          for (int s = 0; s < stages; ++s) {
            if (s + st::kStages - 1 < stages) load_stage(s + st::kStages - 1);
            const int buf = s % st::kStages, step0 = kbeg + s * st::kStageSteps;
            const int first_group = step0 / group_steps;
            for (int w = 0; w < warps; ++w) {
              const int wn = w % st::kWarpsN, wr = w / st::kWarpsN;
              const int live_mt = std::min(wmt, std::max(0, (M - m0 - wr * wmt * 16 + 15) / 16));
              if (chunk0 + wn >= chunks || live_mt == 0) continue;
              for (int kk = 0; kk < st::kStageSteps; ++kk) {
                const int step = step0 + kk;
                if (step >= kend) break;
                const int grp = step / group_steps;
                uint32_t s2[32][8], c2[32][8], b[32][8][2];
                for (int lane = 0; lane < 32; ++lane) {
                  for (int tile = 0; tile < 8; ++tile) {
                    const uint32_t word = load<uint32_t>(
                        st::scale_ring_offset(rows) + buf * st::kScaleStageBytes +
                            4 * st::scale_word(grp - first_group, wn, (lane / 4) * 8 + tile),
                        s);
                    s2[lane][tile] = (word & 0xffffu) * 0x10001u;
                    c2[lane][tile] = (word >> 16) * 0x10001u;
                  }
                  const int boff = st::b_ring_offset(rows) + buf * st::kBStageBytes + st::b_offset(wn, kk, lane);
                  for (int j = 0; j < 4; ++j) {
                    const uint32_t word = load<uint32_t>(boff + 4 * j, s);
                    for (int half = 0; half < 2; ++half) {
                      const int tile = 2 * j + half;
                      b[lane][tile][0] = dequant_pair(word, 2 * half, c2[lane][tile], s2[lane][tile]);
                      b[lane][tile][1] = dequant_pair(word, 2 * half + 1, c2[lane][tile], s2[lane][tile]);
                    }
                  }
                }
                for (int mt = 0; mt < live_mt; ++mt) {
                  int addr[32];
                  for (int lane = 0; lane < 32; ++lane) {
                    const st::RowUnit u = st::a_ldmatrix_unit((wr * wmt + mt) * 16, kk, lane);
                    addr[lane] = buf * a_stage + st::a_offset(u.row, u.unit);
                  }
                  uint32_t a[32][4];
                  ldmatrix_x4(addr, [&](int off) { return load<uint16_t>(off, s); }, a);
                  // The mma on the fragments of all lanes (PTX ISA layouts, w4a16_device.cuh).
                  double Am[16][16], Bm[16][8];
                  for (int l = 0; l < 32; ++l) {
                    const int g = l / 4, tt = l % 4;
                    for (int e = 0; e < 2; ++e) {
                      Am[g][2 * tt + e] = bf(uint16_t(a[l][0] >> (16 * e)));
                      Am[g + 8][2 * tt + e] = bf(uint16_t(a[l][1] >> (16 * e)));
                      Am[g][2 * tt + 8 + e] = bf(uint16_t(a[l][2] >> (16 * e)));
                      Am[g + 8][2 * tt + 8 + e] = bf(uint16_t(a[l][3] >> (16 * e)));
                    }
                  }
                  for (int tile = 0; tile < 8; ++tile) {
                    for (int l = 0; l < 32; ++l) {
                      const int g = l / 4, tt = l % 4;
                      for (int e = 0; e < 2; ++e) {
                        Bm[2 * tt + e][g] = bf(uint16_t(b[l][tile][0] >> (16 * e)));
                        Bm[2 * tt + 8 + e][g] = bf(uint16_t(b[l][tile][1] >> (16 * e)));
                      }
                    }
                    for (int l = 0; l < 32; ++l) {
                      const int g = l / 4, tt = l % 4;
                      for (int e = 0; e < 4; ++e) {
                        const int r = g + 8 * (e / 2), col = 2 * tt + e % 2;
                        double sum = 0;
                        for (int k = 0; k < 16; ++k) sum += Am[r][k] * Bm[k][col];
                        A(w, mt, tile, l, e) += sum;
                      }
                    }
                  }
                }
              }
            }
          }
          // Epilogue: C fragment (g, 2t..) and (g + 8, 2t..) of each tile.
          for (int w = 0; w < warps; ++w) {
            const int wn = w % st::kWarpsN, wr = w / st::kWarpsN, chunk = chunk0 + wn;
            if (chunk >= chunks) continue;
            for (int mt = 0; mt < wmt; ++mt)
              for (int tile = 0; tile < 8; ++tile)
                for (int l = 0; l < 32; ++l)
                  for (int e = 0; e < 4; ++e) {
                    const int row = m0 + (wr * wmt + mt) * 16 + l / 4 + 8 * (e / 2);
                    const int col = chunk * 64 + tile * 8 + 2 * (l % 4) + e % 2;
                    if (row < M && col < N) y[size_t(row) * size_t(N) + size_t(col)] += A(w, mt, tile, l, e);
                  }
          }
        }
    return y;
  }
};

struct EmuCase {
  int64_t n, k, group;
  W4Order order;
  int M, wmt, wm, splits;
};

TEST(W4A16StagedLayout, EmulatedKernelEqualsTheTilesWeightTimesX) {
  const EmuCase cases[] = {
      {300, 320, 64, W4Order::ActOrder, 17, 2, 1, 1},  // 5 chunks: a second column block of one chunk
      {300, 320, 64, W4Order::ActOrder, 33, 4, 1, 3},  // m-tiles wholly past M
      {130, 200, 128, W4Order::Plain, 64, 4, 1, 2},    // partial last group (K 200: 208 slots)
      {72, 256, 16, W4Order::Plain, 100, 4, 2, 1},     // 1-step groups: 4 groups per stage
      {72, 256, 16, W4Order::Plain, 100, 4, 2, 3},
      {70, 192, 40, W4Order::Uneven, 256, 4, 2, 2},    // uneven groups, two row blocks
      {64, 128, 128, W4Order::Plain, 5, 1, 1, 1},      // the 16-row block
      {200, 384, 32, W4Order::Plain, 130, 4, 2, 4},    // rows past 128: a second, partial row block
      {200, 384, 32, W4Order::Plain, 70, 4, 1, 2},     // two 64-row blocks, the second partial
      {130, 200, 128, W4Order::Plain, 40, 2, 2, 1},    // two warp rows of 2 m-tiles (not compiled)
  };
  std::mt19937 rng(2024);
  std::uniform_int_distribution<int> small(-8, 8);
  for (const EmuCase& c : cases) {
    const QuantizedLinear q = random_w4_linear(c.n, c.k, c.group, 4, c.order, W4Scales::PowerOfTwo, rng);
    const pack::W4Tiles t = pack::pack_w4_tiles(q, "emulator");
    const std::vector<float> w = pack::dequantize_w4_tiles(t);  // [N, K], original column order
    // x in the original column order, and in slot order as the kernel reads it (gathered;
    // padding slots 0), with a row stride wider than the slots.
    std::vector<float> x(size_t(c.M * c.k));
    for (auto& v : x) v = float(small(rng)) / 8.0f;
    const int64_t slots = t.padded_k(), lda = slots + 8;
    std::vector<uint16_t> xs(size_t(c.M * lda), f32_to_bf16(1000.0f));
    for (int m = 0; m < c.M; ++m)
      for (int64_t s = 0; s < slots; ++s) {
        const int64_t col = t.source_col.empty() ? (s < c.k ? s : -1) : t.source_col[size_t(s)];
        xs[size_t(m * lda + s)] = col >= 0 ? f32_to_bf16(x[size_t(m * c.k + col)]) : uint16_t(0);
      }
    Emulator emu{t, xs, lda, c.M, int(t.ksteps()), c.wmt, c.wm, {}, {}};
    const std::vector<double> y = emu.run(c.splits);
    const std::string what = "N " + std::to_string(c.n) + " K " + std::to_string(c.k) + " group " +
                             std::to_string(c.group) + " M " + std::to_string(c.M) + " rows " +
                             std::to_string(st::block_rows(c.wmt, c.wm)) + " splits " + std::to_string(c.splits);
    int bad = 0;
    for (int m = 0; m < c.M && bad < 5; ++m)
      for (int64_t n = 0; n < c.n && bad < 5; ++n) {
        double ref = 0;
        for (int64_t k = 0; k < c.k; ++k) ref += double(x[size_t(m * c.k + k)]) * double(w[size_t(n * c.k + k)]);
        if (y[size_t(m * c.n + n)] != ref) {
          ADD_FAILURE() << what << ": y[" << m << ", " << n << "] = " << y[size_t(m * c.n + n)] << ", expected " << ref;
          ++bad;
        }
      }
  }
}

}  // namespace
}  // namespace lowbit
