// The low-bit GEMV kernel (src/backend/cuda/gemv_lowbit.cu) emulated on the CPU through the code
// its lanes run (src/backend/cuda/gemv_lowbit_lane.h): the launches of up to 16 rows of x, the
// kernel configuration each picks (1, 4 or 16 rows of x; 2 rows of W a warp, 1 for 8-bit codes),
// every lane of every warp, the warp's shuffle butterfly in its order, the bf16 output. Used by
// tests/unit/test_gemv_lane.cpp (against the dequantized product, no GPU) and by the CUDA test
// (the GPU's output must equal it bit for bit: the same fp32 operations in the same order).
#pragma once

#include "backend/cuda/gemv_lowbit_lane.h"
#include "core/dtype.h"
#include "pack/gemv_pack.h"

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <vector>

namespace lowbit::test {

namespace gemv_emulation_detail {

template <int BITS, bool CB, int MR, int ROWS>
void launch(const cuda::gemv_lane::Params& p, const float* table, float* y, int64_t ldy) {
  for (int n0 = 0; n0 < p.N; n0 += ROWS) {
    float lanes[32][ROWS][MR];
    for (int lane = 0; lane < 32; ++lane)
      cuda::gemv_lane::lane_sums<BITS, CB, MR, ROWS>(p, n0, lane, table, lanes[lane]);
    for (int r = 0; r < ROWS; ++r)
      for (int m = 0; m < MR; ++m) {
        float v[32];
        for (int l = 0; l < 32; ++l) v[l] = lanes[l][r][m];
        // v += __shfl_xor_sync(v, off), lane by lane, all lanes at once.
        for (int off = 16; off > 0; off /= 2) {
          float nv[32];
          for (int l = 0; l < 32; ++l) nv[l] = v[l] + v[l ^ off];
          std::copy(nv, nv + 32, v);
        }
        if (m < p.M && n0 + r < p.N) y[int64_t(m) * ldy + n0 + r] = v[m];  // lane m writes row m
      }
  }
}

template <int BITS, bool CB>
void launch_rows(const cuda::gemv_lane::Params& p, const float* table, float* y, int64_t ldy) {
  constexpr int rows = BITS == 8 ? 1 : 2;
  if (p.M <= 1) launch<BITS, CB, 1, rows>(p, table, y, ldy);
  else if (p.M <= 4) launch<BITS, CB, 4, rows>(p, table, y, ldy);
  else launch<BITS, CB, 16, rows>(p, table, y, ldy);
}

}  // namespace gemv_emulation_detail

// y [M, N] fp32 sums (before the kernel's bf16 output rounding) of x [M, K] (bf16 bits, row
// stride K) times the packed weight, as the GPU's Gemv kernel computes them.
inline std::vector<float> emulate_gemv_sums(const pack::GemvPacked& w, const std::vector<uint16_t>& x, int64_t M) {
  const int64_t kp = w.padded_k();
  // The kernel's zero-padded copy of x (what it reads in place when K is whole tiles).
  std::vector<uint16_t> xp(size_t(M * kp), 0);
  for (int64_t m = 0; m < M; ++m) std::copy_n(x.begin() + m * w.k, w.k, xp.begin() + m * kp);
  std::vector<float> y(size_t(M * w.n), 0.0f);
  cuda::gemv_lane::Params p{};
  p.codes = w.codes.data();
  p.scales = w.scales.data();
  p.lda = kp;
  p.N = int(w.n);
  p.units = int(w.units());
  p.groups = int(w.groups());
  p.group_size = int(w.group_size);
  p.group_shift = cuda::gemv_lane::group_shift_of(p.group_size);
  const float* table = w.codebook.data();
  for (int64_t m0 = 0; m0 < M; m0 += 16) {
    p.M = int(std::min<int64_t>(16, M - m0));
    p.A = xp.data() + m0 * kp;
    float* yc = y.data() + m0 * w.n;
    using namespace gemv_emulation_detail;
    if (w.kind == pack::gemv::Kind::Codebook) launch_rows<4, true>(p, table, yc, w.n);
    else if (w.bits == 2) launch_rows<2, false>(p, table, yc, w.n);
    else if (w.bits == 3) launch_rows<3, false>(p, table, yc, w.n);
    else if (w.bits == 4) launch_rows<4, false>(p, table, yc, w.n);
    else if (w.bits == 8) launch_rows<8, false>(p, table, yc, w.n);
    else throw std::invalid_argument("emulate_gemv_sums: no kernel for this width");
  }
  return y;
}

// The kernel's bf16 output: the sums rounded to nearest even.
inline std::vector<uint16_t> emulate_gemv(const pack::GemvPacked& w, const std::vector<uint16_t>& x, int64_t M) {
  const std::vector<float> s = emulate_gemv_sums(w, x, M);
  std::vector<uint16_t> y(s.size());
  for (size_t i = 0; i < s.size(); ++i) y[i] = f32_to_bf16(s[i]);
  return y;
}

}  // namespace lowbit::test
