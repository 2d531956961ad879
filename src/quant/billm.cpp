#include "quant/billm.h"

#include "core/error.h"
#include "core/parallel_find.h"
#include "core/phase_profile.h"
#include "quant/formats/billm_format.h"
#include "quant/formats/bit_plane.h"
#include "quant/method.h"
#include "quant/reference_numerics.h"

#include <cblas.h>
#include <fmt/format.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <optional>
#include <utility>
#include <vector>

// Built with -ffp-contract=off (src/CMakeLists.txt): the reference rounds every product and sum
// on its own; the searches compare errors computed exactly as it computes them.

namespace lowbit {

namespace {

float sign_of(float x) { return x > 0.0f ? 1.0f : (x < 0.0f ? -1.0f : 0.0f); }

// BRA rows evaluated together (bra_rows) and the rows of candidate errors computed per call of a
// search's row function (candidate_mses).
constexpr int kBatchRows = 16;
constexpr int kMaxJobs = 2 * kBatchRows;

// Working rows of one thread for a batch: two masks and two reconstructions per row, the
// residuals and summed terms of every job.
struct RowScratch {
  std::vector<uint8_t> lo, hi;     // [kBatchRows * n]
  std::vector<float> ga, gb;       // [kBatchRows * n]
  std::vector<float> res, tmp;     // [kMaxJobs * n]
  explicit RowScratch(int64_t n)
      : lo(size_t(kBatchRows * n)), hi(size_t(kBatchRows * n)), ga(size_t(kBatchRows * n)),
        gb(size_t(kBatchRows * n)), res(size_t(kMaxJobs * n)), tmp(size_t(kMaxJobs * n)) {}
};

// One BRA(x, mask, order) of a row of n values: recon [n]; params [2 * order] (mu, alpha per
// order) and signs [order] rows of sign_stride (-1, 0, +1 at masked entries) when not null.
struct BraJob {
  const float* x;
  const uint8_t* m;
  float* recon;
  float* params = nullptr;
  int8_t* signs = nullptr;
  size_t sign_stride = 0;
};

// Up to kMaxJobs BRAs as binary.high_order_residual computes each, phase by phase across the
// jobs so that the dependency chains of their sums overlap. res, tmp: [njobs * n] scratch. The
// loops are branch-free selects that vectorize; each value is rounded as in the reference's
// tensors.
void bra_rows(const BraJob* jobs, int njobs, int64_t n, int order, float* res, float* tmp) {
  float cnt[kMaxJobs], mean[kMaxJobs], scale[kMaxJobs];
  for (int i = 0; i < njobs; ++i) {
    const uint8_t* m = jobs[i].m;
    int64_t c = 0;
    for (int64_t j = 0; j < n; ++j) c += m[j] != 0;
    cnt[i] = float(c);
    std::fill(jobs[i].recon, jobs[i].recon + n, 0.0f);
  }
  for (int od = 0; od < order; ++od) {
    for (int i = 0; i < njobs; ++i) {
      const float* x = jobs[i].x;
      const uint8_t* m = jobs[i].m;
      const float* so = jobs[i].recon;
      float* r = res + i * n;
      float* t = tmp + i * n;
      for (int64_t j = 0; j < n; ++j) {
        const float nm = x[j] * (m[j] ? 1.0f : 0.0f);
        r[j] = nm - so[j];
        t[j] = m[j] ? r[j] : 0.0f;  // nansum skips the NaN-filled entries
      }
    }
    for (int i = 0; i < njobs; ++i) {
      mean[i] = torch_sum_f32(tmp + i * n, n) / cnt[i];
      if (std::isnan(mean[i])) mean[i] = 0.0f;
    }
    for (int i = 0; i < njobs; ++i) {
      const uint8_t* m = jobs[i].m;
      const float* r = res + i * n;
      float* t = tmp + i * n;
      const float mu = mean[i];
      for (int64_t j = 0; j < n; ++j) t[j] = m[j] ? std::fabs(r[j] - mu) : 0.0f;
    }
    for (int i = 0; i < njobs; ++i) {
      scale[i] = torch_sum_f32(tmp + i * n, n) / cnt[i];
      if (std::isnan(scale[i])) scale[i] = 0.0f;
    }
    for (int i = 0; i < njobs; ++i) {
      const BraJob& jb = jobs[i];
      const uint8_t* m = jb.m;
      const float* r = res + i * n;
      float* so = jb.recon;
      const float mu = mean[i], sc = scale[i];
      for (int64_t j = 0; j < n; ++j) {
        // Unmasked entries: sign(NaN) = 0, so b = mean, times the mask's 0.
        const float sg = m[j] ? sign_of(r[j] - mu) : 0.0f;
        const float b = sg * sc + mu;
        so[j] = so[j] + b * (m[j] ? 1.0f : 0.0f);
      }
      if (jb.signs != nullptr)
        for (int64_t j = 0; j < n; ++j)
          if (m[j]) jb.signs[size_t(od) * jb.sign_stride + size_t(j)] = int8_t(sign_of(r[j] - mu));
      if (jb.params != nullptr) {
        jb.params[2 * od] = mu;
        jb.params[2 * od + 1] = sc;
      }
    }
  }
}

// ---- BRA across rows: one row per vector lane -------------------------------------------------
// For the searches' short rows (torch_sum_f32_lanes' range, 8 <= n < 512) a batch of kBatchRows
// rows is held transposed, [n] vectors of one value per row, and every lane runs exactly the
// scalar operations of bra_rows on its row, torch_sum_f32's additions included: no horizontal
// sums, no dependency chains through a single row.

typedef float VecR __attribute__((vector_size(kBatchRows * sizeof(float))));
typedef int32_t MaskR __attribute__((vector_size(kBatchRows * sizeof(int32_t))));

VecR abs_r(VecR v) {
  const MaskR magnitude = MaskR{} + 0x7fffffff;  // fabs clears the sign bit, as here
  return (VecR)((MaskR)v & magnitude);
}

// BRA(x, mask, order) of each lane's row: x, mf (1 or 0 per entry), recon [n]; res, tmp: [n]
// scratch; params [2 * order] (mu, alpha per order) and signs [order * n] (the signs at masked
// entries, 0 elsewhere) when not null.
void bra_lanes(const VecR* x, const VecR* mf, int64_t n, int order, VecR* recon, VecR* res, VecR* tmp,
               VecR* params = nullptr, VecR* signs = nullptr) {
  const VecR zero{}, one = zero + 1.0f, mone = zero - 1.0f;
  VecR cnt = zero;  // counts below 2^24 add exactly
  for (int64_t j = 0; j < n; ++j) cnt += mf[j];
  for (int64_t j = 0; j < n; ++j) recon[j] = zero;
  for (int od = 0; od < order; ++od) {
    for (int64_t j = 0; j < n; ++j) {
      res[j] = x[j] * mf[j] - recon[j];
      tmp[j] = mf[j] != zero ? res[j] : zero;
    }
    VecR mean = torch_sum_f32_lanes(tmp, n) / cnt;
    mean = mean != mean ? zero : mean;
    for (int64_t j = 0; j < n; ++j) tmp[j] = mf[j] != zero ? abs_r(res[j] - mean) : zero;
    VecR scale = torch_sum_f32_lanes(tmp, n) / cnt;
    scale = scale != scale ? zero : scale;
    for (int64_t j = 0; j < n; ++j) {
      const VecR d = res[j] - mean;
      const VecR sg = mf[j] != zero ? (d > zero ? one : (d < zero ? mone : zero)) : zero;
      const VecR b = sg * scale + mean;
      recon[j] = recon[j] + b * mf[j];
      if (signs != nullptr) signs[od * n + j] = sg;
    }
    if (params != nullptr) {
      params[2 * od] = mean;
      params[2 * od + 1] = scale;
    }
  }
}

bool lane_rows(int64_t n) { return torch_sum_f32_lanes_fits(n); }

// Lane working arrays of one thread, [n] vectors each (none where rows are not taken lane-wise);
// x, an, keep and g3 hold the batch of rows that starts at row `batch`.
struct LaneScratch {
  std::vector<VecR> x, an, keep, g3, ma, mb, ga, gb, res, tmp;
  int64_t batch = -1;
  explicit LaneScratch(int64_t n)
      : x(size_t(n)), an(size_t(n)), keep(size_t(n)), g3(size_t(n)), ma(size_t(n)), mb(size_t(n)), ga(size_t(n)),
        gb(size_t(n)), res(size_t(n)), tmp(size_t(n)) {}
};

// One step of transpose16 for the row pair (a, b) = (m[i], m[i + S]): lane p of the first takes
// b[p - S] where p has bit S, of the second a[p + S] where p lacks it.
template <int S, bool Second, size_t... P>
VecR swap_bit(VecR a, VecR b, std::index_sequence<P...>) {
  return __builtin_shufflevector(
      a, b, (Second ? ((P & S) ? 16 + P : P + S) : ((P & S) ? 16 + P - S : P))...);
}

template <int S>
void transpose_step(VecR* m) {
  constexpr auto lanes = std::make_index_sequence<16>{};
  for (int i = 0; i < 16; ++i)
    if ((i & S) == 0) {
      const VecR a = m[i], b = m[i + S];
      m[i] = swap_bit<S, false>(a, b, lanes);
      m[i + S] = swap_bit<S, true>(a, b, lanes);
    }
}

// The 16 x 16 block m ([k] vectors of 16) transposed in place. A transpose swaps the row and
// column index bit by bit: for each bit S, every element whose row and column differ in S moves
// to the row with the other S, one two-vector shuffle per row.
void transpose16(VecR* m) {
  static_assert(kBatchRows == 16);
  transpose_step<8>(m);
  transpose_step<4>(m);
  transpose_step<2>(m);
  transpose_step<1>(m);
}

// dst[j] lane i = src[i * ld + j] for the nr <= kBatchRows rows of src, 0 in the lanes past them.
void to_lanes(const float* src, int64_t ld, int64_t nr, int64_t n, VecR* dst) {
  int64_t j0 = 0;
  for (; j0 + kBatchRows <= n; j0 += kBatchRows) {
    VecR m[kBatchRows] = {};
    for (int64_t i = 0; i < nr; ++i) std::memcpy(&m[i], src + i * ld + j0, sizeof(VecR));
    transpose16(m);
    std::copy(m, m + kBatchRows, dst + j0);
  }
  for (; j0 < n; ++j0) {
    VecR v{};
    for (int64_t i = 0; i < nr; ++i) v[i] = src[i * ld + j0];
    dst[j0] = v;
  }
}

// e[i * n + j] = src[j] lane i for the nr rows.
void from_lanes(const VecR* src, int64_t nr, int64_t n, float* e) {
  int64_t j0 = 0;
  for (; j0 + kBatchRows <= n; j0 += kBatchRows) {
    VecR m[kBatchRows];
    std::copy(src + j0, src + j0 + kBatchRows, m);
    transpose16(m);
    for (int64_t i = 0; i < nr; ++i) std::memcpy(e + i * n + j0, &m[i], sizeof(VecR));
  }
  for (; j0 < n; ++j0)
    for (int64_t i = 0; i < nr; ++i) e[i * n + j0] = src[j0][i];
}

// BRA over a [rows, n] slice (row stride ld): recon [rows * n]; params [rows * 2 * order] and
// signs [order][rows * n] when not null.
void bra(const float* x, int64_t ld, const uint8_t* mask, int64_t rows, int64_t n, int order, float* recon,
         float* params, int8_t* signs) {
  if (lane_rows(n)) {
    const int64_t nbatch = (rows + kBatchRows - 1) / kBatchRows;
#pragma omp parallel
    {
      LaneScratch ls(n);
      std::vector<float> mf(size_t(kBatchRows * n));
      std::vector<VecR> prm(size_t(2 * order)), sgn(size_t(order * n));
#pragma omp for schedule(static)
      for (int64_t bi = 0; bi < nbatch; ++bi) {
        const int64_t r0 = bi * kBatchRows, nr = std::min(rows - r0, int64_t(kBatchRows));
        for (int64_t i = 0; i < nr * n; ++i) mf[size_t(i)] = mask[r0 * n + i] ? 1.0f : 0.0f;
        to_lanes(x + r0 * ld, ld, nr, n, ls.x.data());
        to_lanes(mf.data(), n, nr, n, ls.ma.data());
        bra_lanes(ls.x.data(), ls.ma.data(), n, order, ls.ga.data(), ls.res.data(), ls.tmp.data(), prm.data(),
                  sgn.data());
        from_lanes(ls.ga.data(), nr, n, recon + r0 * n);
        for (int64_t i = 0; i < nr; ++i) {
          const int64_t r = r0 + i;
          for (int od = 0; od < order; ++od) {
            if (params != nullptr) {
              params[r * 2 * order + 2 * od] = prm[size_t(2 * od)][i];
              params[r * 2 * order + 2 * od + 1] = prm[size_t(2 * od + 1)][i];
            }
            if (signs != nullptr)
              for (int64_t j = 0; j < n; ++j)
                if (mask[r * n + j]) signs[od * rows * n + r * n + j] = int8_t(sgn[size_t(od * n + j)][i]);
          }
        }
      }
    }
    return;
  }
  const int64_t nbatch = (rows + kMaxJobs - 1) / kMaxJobs;
#pragma omp parallel
  {
    RowScratch sc(n);
#pragma omp for schedule(static)
    for (int64_t bi = 0; bi < nbatch; ++bi) {
      const int64_t r0 = bi * kMaxJobs, r1 = std::min(rows, r0 + kMaxJobs);
      BraJob jobs[kMaxJobs];
      for (int64_t r = r0; r < r1; ++r)
        jobs[r - r0] = BraJob{x + r * ld, mask + r * n, recon + r * n,
                              params != nullptr ? params + r * 2 * order : nullptr,
                              signs != nullptr ? signs + r * n : nullptr, size_t(rows * n)};
      bra_rows(jobs, int(r1 - r0), n, order, sc.res.data(), sc.tmp.data());
    }
  }
}

// torch.mean of the squared errors of ncand candidates over a [rows, n] slice, in one parallel
// region: row_err(c, r0, r1, sc, ls, e) writes candidate c's squared errors of rows r0 .. r1 - 1
// (at most kBatchRows) into e [(r1 - r0) * n]. Each candidate's mean adds its rows * n terms in
// torch_sum_f32's order: threads take groups of rows that hold whole chunks of that sum and keep
// only each chunk's partial sums (torch_sum_from_chunks_f32), so no [ncand, rows * n] array is
// stored.
template <typename RowErr>
std::vector<float> candidate_mses(int64_t rows, int64_t n, int64_t ncand, const RowErr& row_err) {
  const int64_t numel = rows * n, chunk = torch_sum_chunk_f32(numel);
  const int64_t nchunks = numel / chunk, nrest = numel - nchunks * chunk;
  // Rows of a whole number of chunks and of batches.
  const int64_t group = std::lcm(chunk / std::gcd(n, chunk), int64_t(kBatchRows));
  const int64_t ngroups = (rows + group - 1) / group;
  std::vector<float> partials(size_t(ncand * nchunks * kTorchSumPartials)), rest(size_t(ncand * nrest));
#pragma omp parallel
  {
    RowScratch sc(n);
    LaneScratch ls(lane_rows(n) ? n : 0);
    std::vector<float> e(size_t(group * n));
    // Every (group, candidate) pair is a task of its own: a block has few groups (one chunk of
    // torch's sum spans up to 2^18 values), so the groups alone would leave most threads idle.
#pragma omp for schedule(static) collapse(2)
    for (int64_t g = 0; g < ngroups; ++g) {
      for (int64_t c = 0; c < ncand; ++c) {
        const int64_t r0 = g * group, r1 = std::min(rows, r0 + group), e0 = r0 * n, len = (r1 - r0) * n;
        for (int64_t r = r0; r < r1; r += kBatchRows)
          row_err(c, r, std::min(r1, r + kBatchRows), sc, ls, e.data() + (r - r0) * n);
        int64_t off = 0;
        for (; off + chunk <= len && e0 + off + chunk <= nchunks * chunk; off += chunk)
          torch_sum_chunk_partials_f32(e.data() + off, chunk,
                                       partials.data() + (c * nchunks + (e0 + off) / chunk) * kTorchSumPartials);
        if (off < len)
          std::copy(e.data() + off, e.data() + len, rest.data() + c * nrest + (e0 + off - nchunks * chunk));
      }
    }
  }
  std::vector<float> out(static_cast<size_t>(ncand));
  for (int64_t c = 0; c < ncand; ++c)
    out[size_t(c)] = torch_sum_from_chunks_f32(partials.data() + c * nchunks * kTorchSumPartials,
                                               rest.data() + c * nrest, numel) /
                     float(numel);
  return out;
}

// Ascending sort of magnitudes (no sign bit set: their bit patterns order as their values) by a
// three-pass radix sort of the bit patterns on all cores (each thread counts and then places its
// own slice, the slices in order: a stable pass); the sorted values are the same bits as
// std::sort's. With a NaN the order is std::sort's, whatever that makes of it.
void sort_magnitudes(std::vector<float>& v) {
  const int64_t n = int64_t(v.size());
  bool special = false;
#pragma omp parallel for schedule(static) reduction(|| : special)
  for (int64_t i = 0; i < n; ++i) special = special || std::isnan(v[size_t(i)]) || std::signbit(v[size_t(i)]);
  if (special) {
    std::sort(v.begin(), v.end());
    return;
  }
  constexpr int kBits = 11, kBuckets = 1 << kBits;
  std::vector<uint32_t> a(v.size()), b(v.size());
  std::memcpy(a.data(), v.data(), v.size() * sizeof(float));
  const int nt = std::max(1, std::min<int>(omp_get_max_threads(), int(n / 65536) + 1));
  std::vector<int64_t> start(size_t(nt) * kBuckets);
  for (int shift = 0; shift < 32; shift += kBits) {
#pragma omp parallel num_threads(nt)
    {
      const int t = omp_get_thread_num(), nth = omp_get_num_threads();
      const int64_t i0 = n * t / nth, i1 = n * (t + 1) / nth;
      int64_t* cnt = start.data() + size_t(t) * kBuckets;
      std::fill(cnt, cnt + kBuckets, 0);
      for (int64_t i = i0; i < i1; ++i) ++cnt[(a[size_t(i)] >> shift) & (kBuckets - 1)];
#pragma omp barrier
#pragma omp single
      {
        // Bucket-major, then thread order: each thread's first slot for each bucket.
        int64_t pos = 0;
        for (int k = 0; k < kBuckets; ++k)
          for (int u = 0; u < nth; ++u) {
            int64_t& c = start[size_t(u) * kBuckets + size_t(k)];
            const int64_t here = c;
            c = pos;
            pos += here;
          }
      }
      for (int64_t i = i0; i < i1; ++i) {
        const uint32_t k = a[size_t(i)];
        b[size_t(cnt[(k >> shift) & (kBuckets - 1)]++)] = k;
      }
    }
    a.swap(b);
  }
  std::memcpy(v.data(), a.data(), v.size() * sizeof(float));
}

// The searches on the host's cores: candidate_mses over (row group, candidate) tasks, rows
// lane-wise where they fit (lane_rows) and by bra_rows otherwise.
class HostSearches final : public BillmSearches {
 public:
  std::vector<float> salient_errors(const float* s, int64_t rows, int64_t n, const int32_t* rank,
                                    int64_t nk) override {
    const bool lanes = lane_rows(n);
    // Every row's masks are the same two column masks.
    std::vector<uint8_t> colmask(size_t(2 * nk * n));  // [k - 1][salient, rest][n]
    for (int64_t k = 1; k <= nk; ++k)
      for (int64_t j = 0; j < n; ++j) {
        colmask[size_t((2 * (k - 1)) * n + j)] = rank[j] < k;
        colmask[size_t((2 * (k - 1) + 1) * n + j)] = rank[j] >= k;
      }
    return candidate_mses(rows, n, nk, [&](int64_t c, int64_t r0, int64_t r1, RowScratch& sc, LaneScratch& ls,
                                        float* e) {
      const uint8_t* sal = colmask.data() + 2 * c * n;
      const uint8_t* other = sal + n;
      if (lanes) {
        if (ls.batch != r0) {
          to_lanes(s + r0 * n, n, r1 - r0, n, ls.x.data());
          ls.batch = r0;
        }
        const VecR zero{};
        for (int64_t j = 0; j < n; ++j) {
          ls.ma[size_t(j)] = zero + (sal[j] ? 1.0f : 0.0f);
          ls.mb[size_t(j)] = zero + (other[j] ? 1.0f : 0.0f);
        }
        bra_lanes(ls.x.data(), ls.ma.data(), n, 2, ls.ga.data(), ls.res.data(), ls.tmp.data());
        bra_lanes(ls.x.data(), ls.mb.data(), n, 2, ls.gb.data(), ls.res.data(), ls.tmp.data());
        for (int64_t j = 0; j < n; ++j) {
          const VecR d = ls.x[size_t(j)] - (ls.gb[size_t(j)] + ls.ga[size_t(j)]);
          ls.tmp[size_t(j)] = d * d;
        }
        from_lanes(ls.tmp.data(), r1 - r0, n, e);
        return;
      }
      BraJob jobs[kMaxJobs];
      int nj = 0;
      for (int64_t r = r0; r < r1; ++r) {
        const float* x = s + r * n;
        jobs[nj++] = BraJob{x, sal, sc.ga.data() + (r - r0) * n};
        jobs[nj++] = BraJob{x, other, sc.gb.data() + (r - r0) * n};
      }
      bra_rows(jobs, nj, n, 2, sc.res.data(), sc.tmp.data());
      const float* x = s + r0 * n;
      for (int64_t i = 0; i < (r1 - r0) * n; ++i) {
        const float d = x[i] - (sc.gb[size_t(i)] + sc.ga[size_t(i)]);
        e[i] = d * d;
      }
    });
  }

  std::vector<float> split_errors(const float* s, const float* absn, const uint8_t* not3, const float* g3,
                                  int64_t rows, int64_t n, const std::vector<float>& splits) override {
    const bool lanes = lane_rows(n);
    const int64_t numel = rows * n;
    std::vector<float> keepf(static_cast<size_t>(numel));
    for (int64_t i = 0; i < numel; ++i) keepf[size_t(i)] = not3[i] ? 1.0f : 0.0f;
    return candidate_mses(rows, n, int64_t(splits.size()), [&](int64_t c, int64_t r0, int64_t r1, RowScratch& sc,
                                                            LaneScratch& ls, float* e) {
      const float p = splits[size_t(c)];
      const int64_t len = (r1 - r0) * n;
      const float* x = s + r0 * n;
      const float* an = absn + r0 * n;
      const uint8_t* nt = not3 + r0 * n;
      if (lanes) {
        if (ls.batch != r0) {
          to_lanes(x, n, r1 - r0, n, ls.x.data());
          to_lanes(an, n, r1 - r0, n, ls.an.data());
          to_lanes(keepf.data() + r0 * n, n, r1 - r0, n, ls.keep.data());
          to_lanes(g3 + r0 * n, n, r1 - r0, n, ls.g3.data());
          ls.batch = r0;
        }
        const VecR zero{}, one = zero + 1.0f, pv = zero + p;
        for (int64_t j = 0; j < n; ++j) {
          const VecR a = ls.an[size_t(j)];
          const MaskR keep = ls.keep[size_t(j)] != zero;
          ls.ma[size_t(j)] = (a < pv) & keep ? one : zero;   // below the split
          ls.mb[size_t(j)] = (a >= pv) & keep ? one : zero;  // at or above it
        }
        bra_lanes(ls.x.data(), ls.ma.data(), n, 1, ls.ga.data(), ls.res.data(), ls.tmp.data());
        bra_lanes(ls.x.data(), ls.mb.data(), n, 1, ls.gb.data(), ls.res.data(), ls.tmp.data());
        for (int64_t j = 0; j < n; ++j) {
          const VecR d = ls.x[size_t(j)] - ((ls.ga[size_t(j)] + ls.gb[size_t(j)]) + ls.g3[size_t(j)]);
          ls.tmp[size_t(j)] = d * d;
        }
        from_lanes(ls.tmp.data(), r1 - r0, n, e);
        return;
      }
      uint8_t* lo = sc.lo.data();  // below the split
      uint8_t* hi = sc.hi.data();  // at or above it
      for (int64_t i = 0; i < len; ++i) {
        lo[i] = an[i] < p && nt[i];
        hi[i] = an[i] >= p && nt[i];
      }
      BraJob jobs[kMaxJobs];
      int nj = 0;
      for (int64_t r = 0; r < r1 - r0; ++r) {
        jobs[nj++] = BraJob{x + r * n, lo + r * n, sc.ga.data() + r * n};
        jobs[nj++] = BraJob{x + r * n, hi + r * n, sc.gb.data() + r * n};
      }
      bra_rows(jobs, nj, n, 1, sc.res.data(), sc.tmp.data());
      const float* g3r = g3 + r0 * n;
      for (int64_t i = 0; i < len; ++i) {
        const float d = x[i] - ((sc.ga[size_t(i)] + sc.gb[size_t(i)]) + g3r[i]);
        e[i] = d * d;
      }
    });
  }
};

struct BlockMasks {
  std::vector<uint8_t> m1, m2, m3;  // [rows * n]
  BillmBlock info;
};

// structural_guassian_distribution on the saliency s [rows, n].
BlockMasks search_masks(const std::vector<float>& s, int64_t rows, int64_t n, int64_t up_lim,
                        BillmSearches& searches) {
  const int64_t numel = rows * n;
  std::vector<float> a(static_cast<size_t>(numel)), colsum(static_cast<size_t>(n));
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < numel; ++i) a[size_t(i)] = std::fabs(s[size_t(i)]);
  torch_column_sums_f32(a.data(), rows, n, colsum.data());
  std::vector<int64_t> top(static_cast<size_t>(n));
  std::vector<int32_t> rank(static_cast<size_t>(n));
  std::iota(top.begin(), top.end(), 0);
  std::stable_sort(top.begin(), top.end(), [&](int64_t x, int64_t y) { return colsum[size_t(x)] > colsum[size_t(y)]; });
  for (int64_t i = 0; i < n; ++i) rank[size_t(top[size_t(i)])] = int32_t(i);

  // Salient columns: k = 1 .. up_lim - 1, the k top-scoring columns (order 2) against the rest
  // (order 2).
  const std::vector<float> ek = searches.salient_errors(s.data(), rows, n, rank.data(), up_lim - 1);
  BlockMasks out;
  float best = std::numeric_limits<float>::infinity();
  for (int64_t k = 1; k < up_lim; ++k)
    if (ek[size_t(k - 1)] < best) {
      best = ek[size_t(k - 1)];
      out.info.salient = k;
    }
  std::vector<uint8_t> m3(static_cast<size_t>(numel)), not3(static_cast<size_t>(numel));
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < n; ++j) {
      m3[size_t(r * n + j)] = rank[size_t(j)] < out.info.salient;
      not3[size_t(r * n + j)] = !m3[size_t(r * n + j)];
    }
  std::vector<float> g3(static_cast<size_t>(numel));
  bra(s.data(), n, m3.data(), rows, n, 2, g3.data(), nullptr, nullptr);

  // The split: quantiles of |S| with the salient entries 0.
  std::vector<float> absn(static_cast<size_t>(numel));
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < numel; ++i) absn[size_t(i)] = std::fabs(s[size_t(i)] * (not3[size_t(i)] ? 1.0f : 0.0f));
  std::vector<float> sorted = absn;
  sort_magnitudes(sorted);
  const std::vector<float> levels = torch_linspace_f32(0.10f, 0.90f, 81);
  std::vector<float> splits(levels.size());
  for (size_t li = 0; li < levels.size(); ++li) splits[li] = numpy_quantile_f32(sorted, levels[li]);
  const std::vector<float> ep = searches.split_errors(s.data(), absn.data(), not3.data(), g3.data(), rows, n, splits);
  best = std::numeric_limits<float>::infinity();
  for (size_t li = 0; li < levels.size(); ++li)
    if (ep[li] < best) {
      best = ep[li];
      out.info.split_index = int64_t(li);
      out.info.split = splits[li];
    }
  out.m1.resize(size_t(numel));
  out.m2.resize(size_t(numel));
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < numel; ++i) {
    out.m2[size_t(i)] = absn[size_t(i)] >= out.info.split && not3[size_t(i)];
    out.m1[size_t(i)] = absn[size_t(i)] < out.info.split && not3[size_t(i)];
  }
  out.m3 = std::move(m3);
  return out;
}

}  // namespace

std::unique_ptr<BillmSearches> billm_host_searches() { return std::make_unique<HostSearches>(); }

BillmResult billm_quantize(const float* w, int64_t rows, int64_t cols, const ObsHinv& hinv, const BillmOptions& opt,
                           DType dtype, BillmSearches* searches) {
  std::unique_ptr<BillmSearches> host;
  if (!searches) searches = (host = billm_host_searches()).get();
  LB_CHECK(int64_t(hinv.u.size()) == cols * cols && int64_t(hinv.dead.size()) == cols,
           "billm: inverse Hessian factor of {} entries for {} columns", hinv.u.size(), cols);
  LB_CHECK(opt.block > 0 && cols % opt.block == 0, "billm: block {} does not divide {} columns", opt.block, cols);
  LB_CHECK(opt.up_lim >= 2 && opt.up_lim <= opt.block, "billm: up_lim {} must lie in 2..block ({})", opt.up_lim,
           opt.block);
  const std::vector<float>& u = hinv.u;
  const int64_t B = opt.block, nblk = cols / B;
  BillmResult res;
  res.damp = hinv.damp;
  res.dead_columns = hinv.dead_columns;

  // Row-major working copy with dead columns zeroed.
  std::vector<float> wk(size_t(rows * cols));
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) wk[size_t(r * cols + c)] = hinv.dead[size_t(c)] ? 0.0f : w[r * cols + c];

  res.w.assign(size_t(rows * cols), 0.0f);
  res.group.assign(size_t(rows * cols), 0);
  res.params.assign(size_t(rows * nblk * 8), 0.0f);
  std::vector<uint8_t> sign1(size_t(rows * cols), 0), colsal(static_cast<size_t>(cols), 0);
  std::vector<int8_t> sgn2(size_t(rows * cols), 0);
  std::vector<int32_t> at_list{0};
  std::vector<int8_t> at_state(size_t(rows * cols * 2), 0);
  double loss = 0;
  for (int64_t b = 0; b < nblk; ++b) {
    const int64_t st = b * B, numel = rows * B;
    // a. Saliency of the current block.
    std::vector<float> s(static_cast<size_t>(numel));
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = 0; j < B; ++j) {
        const float v = wk[size_t(r * cols + st + j)];
        s[size_t(r * B + j)] = opt.hessian_metric ? obs_saliency(v, u[size_t((st + j) * cols + st + j)]) : v;
      }
    // b-c. Masks.
    std::optional<PhaseScope> phase(std::in_place, "billm solve/searches");
    BlockMasks bm = search_masks(s, rows, B, opt.up_lim, *searches);
    phase.reset();
    res.blocks.push_back(bm.info);
    // d. The block quantized once, on the weights.
    std::vector<float> p1(static_cast<size_t>(numel)), p2(static_cast<size_t>(numel)), p3(static_cast<size_t>(numel));
    std::vector<float> prm1(size_t(rows * 2)), prm2(size_t(rows * 2)), prm3(size_t(rows * 4));
    std::vector<int8_t> s1(static_cast<size_t>(numel), 0), s2(static_cast<size_t>(numel), 0), s3(size_t(numel * 2), 0);
    const float* wb = wk.data() + st;
    bra(wb, cols, bm.m1.data(), rows, B, 1, p1.data(), prm1.data(), s1.data());
    bra(wb, cols, bm.m2.data(), rows, B, 1, p2.data(), prm2.data(), s2.data());
    bra(wb, cols, bm.m3.data(), rows, B, 2, p3.data(), prm3.data(), s3.data());
    // e. Errors without updates inside the block; rows in parallel, each row's loss summed on its
    // own and the rows' sums added in order.
    std::vector<float> err(static_cast<size_t>(numel));
    std::vector<double> row_loss(static_cast<size_t>(rows), 0.0);
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      float* pr = res.params.data() + (r * nblk + b) * 8;
      pr[0] = prm1[size_t(2 * r)];
      pr[1] = prm1[size_t(2 * r + 1)];
      pr[2] = prm2[size_t(2 * r)];
      pr[3] = prm2[size_t(2 * r + 1)];
      for (int i = 0; i < 4; ++i) pr[4 + i] = prm3[size_t(4 * r + i)];
      for (int64_t j = 0; j < B; ++j) {
        const size_t i = size_t(r * B + j), f = size_t(r * cols + st + j);
        float q = 0.0f;
        q += p1[i] * (bm.m1[i] ? 1.0f : 0.0f);
        q += p2[i] * (bm.m2[i] ? 1.0f : 0.0f);
        q += p3[i] * (bm.m3[i] ? 1.0f : 0.0f);
        const float d = u[size_t((st + j) * cols + st + j)];
        const float diff = wb[r * cols + j] - q;
        row_loss[size_t(r)] += double((diff * diff) / (d * d));
        err[i] = diff / d;
        res.w[f] = q;
        const int8_t first = bm.m1[i] ? s1[i] : bm.m2[i] ? s2[i] : s3[i];
        sign1[f] = first > 0;
        at_state[2 * f] = first == 0;
        if (bm.m3[i]) {
          sgn2[f] = s3[size_t(numel) + i];
          at_state[2 * f + 1] = sgn2[f] == 0;
        }
        res.group[f] = bm.m1[i] ? 1 : bm.m2[i] ? 2 : 3;
      }
    }
    for (double l : row_loss) loss += l;
    for (int64_t j = 0; j < B; ++j) colsal[size_t(st + j)] = bm.m3[size_t(j)];
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = 0; j < B; ++j) wk[size_t(r * cols + st + j)] = res.w[size_t(r * cols + st + j)];
    if (st + B < cols)
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, blasint(rows), blasint(cols - st - B), blasint(B), -1.0f,
                  err.data(), blasint(B), u.data() + st * cols + st + B, blasint(cols), 1.0f, wk.data() + st + B,
                  blasint(cols));
  }
  res.loss = loss / 2.0;

  // The stored form (formats/billm_format.h).
  QuantizedLinear& q = res.q;
  q.rows = rows;
  q.cols = cols;
  q.format = &kBillmFormat;
  q.bits = 1;
  q.group_size = B;
  q.dequant_dtype = dtype;
  q.codes = sign1;
  std::vector<int64_t> sal_cols;
  for (int64_t c = 0; c < cols; ++c)
    if (colsal[size_t(c)]) sal_cols.push_back(c);
  const int64_t nsal = int64_t(sal_cols.size());
  std::vector<uint8_t> grp2(size_t(rows * cols)), s2bits(size_t(rows * nsal));
  // Rows on all cores; the at-mean list in ascending order from each row's count.
  std::vector<int64_t> at_start(size_t(rows + 1), 0);
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) grp2[size_t(r * cols + c)] = res.group[size_t(r * cols + c)] == 2;
    for (int64_t i = 0; i < nsal; ++i) s2bits[size_t(r * nsal + i)] = sgn2[size_t(r * cols + sal_cols[size_t(i)])] > 0;
    int64_t n = 0;
    for (int64_t e = 2 * r * cols; e < 2 * (r + 1) * cols; ++e) n += at_state[size_t(e)] != 0;
    at_start[size_t(r + 1)] = n;
  }
  for (int64_t r = 0; r < rows; ++r) at_start[size_t(r + 1)] += at_start[size_t(r)];
  at_list.resize(size_t(1 + at_start[size_t(rows)]));
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    int32_t* dst = at_list.data() + 1 + at_start[size_t(r)];
    for (int64_t e = 2 * r * cols; e < 2 * (r + 1) * cols; ++e)
      if (at_state[size_t(e)]) *dst++ = int32_t(e);
  }
  at_list[0] = int32_t(at_list.size() - 1);
  q.extras["salient"] = pack_plane(colsal, 1, cols);
  q.extras["group"] = pack_plane(grp2, rows, cols);
  q.extras["sign2"] = pack_plane(s2bits, rows, nsal);
  Tensor at = Tensor::empty(DType::I32, {int64_t(at_list.size())});
  std::copy(at_list.begin(), at_list.end(), at.mutable_data_as<int32_t>());
  q.extras["at_mean"] = at;
  Tensor prm = Tensor::empty(DType::F32, {rows, nblk, 8});
  std::copy(res.params.begin(), res.params.end(), prm.mutable_data_as<float>());
  q.extras["params"] = prm;
  return res;
}

namespace {

class Billm : public QuantMethod {
 public:
  explicit Billm(QuantSpec s) : QuantMethod(std::move(s)) {
    opt_.block = spec_.take_int("block", 128, 2, 1 << 16, "columns per block (salient search, split search, "
                                "binarization parameters, lazy update)");
    opt_.hessian_metric = spec_.take_choice("metric", "hessian", {"hessian", "magnitude"},
                                            "saliency: w^2 / U_jj^2 (U: upper Cholesky factor of the damped inverse "
                                            "Hessian) or w") == "hessian";
    opt_.damp = spec_.take_double("damp", 0.01, 0.0, 10.0, "damping, a fraction of the mean Hessian diagonal");
    opt_.up_lim = spec_.take_int("up_lim", 50, 2, 1 << 16, "salient columns searched: k = 1 .. up_lim - 1 of the "
                                 "up_lim top-scoring (the reference hard-codes 50)");
    spec_.finish();
    LB_CHECK(opt_.up_lim <= opt_.block, "billm: option up_lim={} exceeds block={} (the search takes the top up_lim "
             "columns of a block)", opt_.up_lim, opt_.block);
  }
  bool needs_calibration() const override { return true; }
  double weight_bits() const override { return 1.1; }
  int64_t group_size() const override { return opt_.block; }
  void check_shapes(const LlamaConfig& c) const override {
    for (LinearKind k : kAllLinears) {
      const int64_t in = linear_in_features(c, k);
      LB_CHECK(in % opt_.block == 0, "billm: option block={} does not divide {}'s {} input features", opt_.block,
               linear_name(k), in);
    }
  }

  void quantize_block(BlockContext& ctx, QuantizedBlock& out) override {
    StatsRequest req;
    req.hessian = true;
    const auto stats = ctx.collect(kAllLinears, req);
    // The searches on the context's GPU where it has one, else on the host.
    std::unique_ptr<BillmSearches> searches = billm_searches_on(ctx);
    if (!searches) searches = billm_host_searches();
    for (LinearKind k : kAllLinears) {
      const auto t0 = std::chrono::steady_clock::now();
      const Tensor& w = ctx.weights()[k];
      const InputStats& st = *stats.at(k);
      const ObsHinv hinv = obs_hinv_on(ctx, st, w.dim(1), opt_.damp);
      std::optional<PhaseScope> solve(std::in_place, "billm solve");
      BillmResult r = billm_quantize(w.data_as<float>(), w.dim(0), w.dim(1), hinv, opt_,
                                     linear_storage_dtype(ctx.model(), ctx.layer(), k), searches.get());
      const std::string what = fmt::format("layer {} {}", ctx.layer(), linear_name(k));
      r.q.validate(what);
      std::vector<float> deq(r.w.size());
      billm_dequantize(r.q, deq.data());
      const int64_t first =
          first_index_where(int64_t(deq.size()), [&](int64_t i) { return !(deq[size_t(i)] == r.w[size_t(i)]); });
      LB_CHECK(first < 0, "{}: the billm format does not reproduce weight {} ({} vs {})", what, first,
               deq[size_t(first)], r.w[size_t(first)]);
      std::string sal;
      int64_t total = 0;
      for (const BillmBlock& b : r.blocks) {
        sal += fmt::format("{}{}", sal.empty() ? "" : ",", b.salient);
        total += b.salient;
      }
      std::string note = fmt::format("loss {:.4g}, {:.3f} stored bits/weight, salient columns per block {} "
                                     "(mean {:.2f} of {})", r.loss, billm_bits_per_weight(r.q), sal,
                                     double(total) / double(r.blocks.size()), opt_.block);
      if (r.damp != opt_.damp) note += fmt::format(", damping raised to {} (the reference would fail)", r.damp);
      if (r.dead_columns) note += fmt::format(", {} dead inputs", r.dead_columns);
      solve.reset();
      finish_linear(ctx, k, std::move(r.q), out, t0, &st, note);
    }
  }

 private:
  BillmOptions opt_;
};

}  // namespace

std::unique_ptr<QuantMethod> make_billm(QuantSpec spec) { return std::make_unique<Billm>(std::move(spec)); }

}  // namespace lowbit
