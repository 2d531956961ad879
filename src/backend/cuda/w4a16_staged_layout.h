// The shared-memory layout and the thread-to-data maps of the staged W4A16 kernel
// (W4A16Kernel::Staged, backend/cuda/w4a16_staged.cu). Read by nvcc and by the host compiler:
// the kernel computes every shared-memory address through these functions, and
// tests/unit/test_w4a16_staged_layout.cpp replays them on the CPU (every byte of a stage written
// once per stage, every A element read once per m-tile, fragments as the mma expects them,
// ldmatrix and B reads free of bank conflicts).
//
// Block tile. A block computes kRows(WMT, WM) = 16 WMT WM rows of y by kBlockChunks 64-column
// chunks (256 columns) over one split of K. Its warps form a grid of kWarpsN along N by WM along
// M: warp w owns chunk w % kWarpsN of the block and the WMT 16-row m-tiles
// (w / kWarpsN) WMT .. + WMT - 1. K is walked in stages of kStageSteps 16-slot k-steps (64 slots).
//
// One stage in shared memory (kStages of them, a cp.async ring):
//   A      kRows x 64 bf16, 128 bytes per row as 8 16-byte units; logical unit c of row r is
//          stored at unit c ^ (r % 8) (an XOR swizzle: the 8 row addresses of one ldmatrix
//          8x8 matrix hit 8 different 16-byte bank groups).
//              row r:  | u0^s | u1^s | ... | u7^s |   s = r % 8, unit u = slots 8u .. 8u + 7
//   B      [chunk cb 0..3][k-step kk 0..3][lane 0..31] x 16 bytes: the code words of
//          pack/w4_tiles_layout.h for 4 consecutive k-steps, in their global order (one lane's
//          16 bytes are its B fragments of the step's 8 column tiles).
//   scales [slot 0..3][chunk cb 0..3][g 0..7][tile 0..7] words: slot i holds the (scale,
//          128 + zero) words of group first + i, where first is the group of the stage's first
//          k-step (a stage of 4 steps touches at most 4 groups).
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define LB_STAGED_HD __host__ __device__ __forceinline__
#else
#define LB_STAGED_HD inline
#endif

namespace lowbit::cuda::staged {

inline constexpr int kWarpsN = 4;            // warps along N per block
inline constexpr int kBlockChunks = kWarpsN;  // one 64-column chunk per warp column
inline constexpr int kStageSteps = 4;        // 16-slot k-steps per stage
inline constexpr int kStages = 4;            // stages in the cp.async ring
inline constexpr int kScaleSlots = kStageSteps;  // groups one stage can touch
inline constexpr int kAUnitsPerRow = kStageSteps * 16 * 2 / 16;  // 16-byte units in a row: 8

LB_STAGED_HD constexpr int threads(int wm) { return 32 * kWarpsN * wm; }
LB_STAGED_HD constexpr int block_rows(int wmt, int wm) { return 16 * wmt * wm; }

inline constexpr int kRowBytes = kAUnitsPerRow * 16;                    // 128
inline constexpr int kBStageBytes = kBlockChunks * kStageSteps * 32 * 16;  // 8192
inline constexpr int kBUnits = kBStageBytes / 16;                        // 512
inline constexpr int kScaleSlotWords = kBlockChunks * 64;                 // 256 words = 1 KiB
inline constexpr int kScaleStageBytes = kScaleSlots * kScaleSlotWords * 4;  // 4096
inline constexpr int kScaleUnitsPerSlot = kScaleSlotWords * 4 / 16;       // 64

LB_STAGED_HD constexpr int a_stage_bytes(int rows) { return rows * kRowBytes; }
LB_STAGED_HD constexpr int stage_bytes(int rows) { return a_stage_bytes(rows) + kBStageBytes + kScaleStageBytes; }
// Dynamic shared memory of a block: the ring of A stages, then of B stages, then of scale stages.
LB_STAGED_HD constexpr int smem_bytes(int rows) { return kStages * stage_bytes(rows); }
LB_STAGED_HD constexpr int b_ring_offset(int rows) { return kStages * a_stage_bytes(rows); }
LB_STAGED_HD constexpr int scale_ring_offset(int rows) { return b_ring_offset(rows) + kStages * kBStageBytes; }

// Byte offset, within an A stage, of logical 16-byte unit `unit` (slots 8 unit .. + 7) of `row`.
LB_STAGED_HD int a_offset(int row, int unit) { return row * kRowBytes + ((unit ^ (row & 7)) << 4); }

// The A unit that cp.async number u (0 <= u < rows * 8) of a stage copies: 8 consecutive u read
// the 128 contiguous global bytes of one row.
struct RowUnit {
  int row, unit;
};
LB_STAGED_HD RowUnit a_copy_unit(int u) { return RowUnit{u / kAUnitsPerRow, u % kAUnitsPerRow}; }

// The row and unit whose address `lane` gives to ldmatrix.x4 for the 16 x 16 A tile at rows
// row0 .. row0 + 15 and k-step kk of the stage. Lanes 8i .. 8i + 7 address matrix i, whose
// register i of lane 4 g + t receives its row g, columns 2t, 2t + 1; matrices 0..3 are
// (rows +0, slots +0), (rows +8, slots +0), (rows +0, slots +8), (rows +8, slots +8), which makes
// registers 0..3 the mma's A fragment {A[g][2t..]}, {A[g+8][2t..]}, {A[g][2t+8..]}, {A[g+8][2t+8..]}.
LB_STAGED_HD RowUnit a_ldmatrix_unit(int row0, int kk, int lane) {
  return RowUnit{row0 + (lane & 7) + 8 * ((lane >> 3) & 1), 2 * kk + (lane >> 4)};
}

// B: byte offset within a B stage of lane `lane`'s 16 bytes of k-step kk of block chunk cb.
LB_STAGED_HD int b_offset(int cb, int kk, int lane) { return ((cb * kStageSteps + kk) * 32 + lane) * 16; }

// The B unit that cp.async number u (0 <= u < kBUnits) copies: 32 consecutive u read the 512
// contiguous bytes of one (chunk, k-step), 128 consecutive u the 2 KiB of one chunk's 4 steps.
struct BUnit {
  int cb, kk, lane;
};
LB_STAGED_HD BUnit b_copy_unit(int u) { return BUnit{u / (kStageSteps * 32), (u / 32) % kStageSteps, u % 32}; }

// Scales: word offset within a scale stage of word `word` (g * 8 + tile) of block chunk cb in
// slot `slot`; a lane reads its 8 words (g * 8 ..) as two 16-byte loads.
LB_STAGED_HD int scale_word(int slot, int cb, int word) { return (slot * kBlockChunks + cb) * 64 + word; }

// The scale unit that cp.async number u (0 <= u < kScaleUnitsPerSlot) of a slot copies: words
// 4 (u % 16) .. + 3 of chunk u / 16 (16 consecutive u read one chunk's 256 contiguous bytes).
struct ScaleUnit {
  int cb, word;
};
LB_STAGED_HD ScaleUnit scale_copy_unit(int u) { return ScaleUnit{u / 16, 4 * (u % 16)}; }

// The groups a stage touches: k-steps step0 .. min(step0 + kStageSteps, kend) - 1 lie in groups
// first .. first + count - 1 (count <= kScaleSlots).
struct StageGroups {
  int first, count;
};
LB_STAGED_HD StageGroups stage_groups(int step0, int kend, int group_steps) {
  const int last = (step0 + kStageSteps < kend ? step0 + kStageSteps : kend) - 1;
  return StageGroups{step0 / group_steps, last / group_steps - step0 / group_steps + 1};
}

}  // namespace lowbit::cuda::staged
