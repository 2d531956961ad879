#include "pack/packed_int.h"

#include "backend/cpu/thread_pool.h"
#include "core/error.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string_view>

namespace lowbit::pack {

int container_bits(int bits) {
  LB_CHECK(bits >= 1 && bits <= 8, "packed weights: {} bits per code is outside 1..8", bits);
  if (bits <= 2) return 2;
  if (bits <= 4) return bits;
  return 8;
}

bool can_pack_int(const QuantizedLinear& q) {
  return q.format == &kIntFormat && !q.flat_groups && q.group_size > 0 && q.bits >= 1 && q.bits <= 8;
}

int block_code(const uint8_t* b, int bits, int64_t i) {
  switch (bits) {
    case 2: return (b[i % 8] >> (2 * (i / 8))) & 3;
    case 3: {
      const uint32_t hi = uint32_t(b[8]) | uint32_t(b[9]) << 8 | uint32_t(b[10]) << 16 | uint32_t(b[11]) << 24;
      return ((b[i % 8] >> (2 * (i / 8))) & 3) | int((hi >> i) & 1) << 2;
    }
    case 4: return i < 16 ? (b[i] & 15) : (b[i - 16] >> 4);
    case 8: return int(int8_t(b[i]));
    default: LB_ASSERT(false && "unknown container");
  }
  return 0;
}

namespace {

// Writes code value c (the container's: q for 2/3/4 bits, q - 128 for 8) at element i.
void put_code(uint8_t* b, int bits, int64_t i, int c) {
  switch (bits) {
    case 2: b[i % 8] |= uint8_t((c & 3) << (2 * (i / 8))); break;
    case 3:
      b[i % 8] |= uint8_t((c & 3) << (2 * (i / 8)));
      b[8 + i / 8] |= uint8_t(((c >> 2) & 1) << (i % 8));
      break;
    case 4: i < 16 ? (b[i] |= uint8_t(c & 15)) : (b[i - 16] |= uint8_t((c & 15) << 4)); break;
    case 8: b[i] = uint8_t(int8_t(c)); break;
    default: LB_ASSERT(false && "unknown container");
  }
}

}  // namespace

PackedIntMatrix pack_int_linear(const QuantizedLinear& q, const std::string& what) {
  LB_CHECK(can_pack_int(q),
           "{}: packed execution holds format 'int' with per-row groups; this linear has format '{}'{} "
           "(run it without --packed)",
           what, q.format_name(), q.flat_groups ? " with flat groups" : "");
  LB_CHECK(int64_t(q.codes.size()) == q.rows * q.cols && int64_t(q.scales.size()) == q.num_scale_groups() &&
               q.zeros.size() == q.scales.size(),
           "{}: {} codes, {} scales and {} zero-points for a [{}, {}] weight with {} groups per row", what,
           q.codes.size(), q.scales.size(), q.zeros.size(), q.rows, q.cols, q.groups_per_row());
  PackedIntMatrix p;
  p.rows = q.rows;
  p.cols = q.cols;
  p.bits = container_bits(q.bits);
  const int64_t gpr = q.groups_per_row();
  // Columns of each group, in increasing order.
  std::vector<std::vector<int32_t>> members(static_cast<size_t>(gpr));
  for (int64_t c = 0; c < q.cols; ++c) {
    const int64_t g = q.g_idx.empty() ? c / q.group_size : q.g_idx[size_t(c)];
    LB_CHECK(g >= 0 && g < gpr, "{}: column {} is in group {} of {}", what, c, g, gpr);
    members[size_t(g)].push_back(int32_t(c));
  }
  std::vector<int32_t> order;       // padded position -> column (-1 padding)
  std::vector<int32_t> block_group;  // block -> group
  for (int64_t g = 0; g < gpr; ++g) {
    const auto& cols = members[size_t(g)];
    const int64_t nb = (int64_t(cols.size()) + kBlock - 1) / kBlock;
    for (int64_t b = 0; b < nb; ++b) block_group.push_back(int32_t(g));
    order.insert(order.end(), cols.begin(), cols.end());
    order.resize(size_t(int64_t(block_group.size()) * kBlock), -1);
  }
  p.blocks = int64_t(block_group.size());
  // One (d, m) pair per group when the groups span the first one's number of blocks, the last
  // one at most that many: block b is then in group b / G.
  p.group_blocks = std::max<int64_t>(1, (int64_t(members[0].size()) + kBlock - 1) / kBlock);
  for (int64_t b = 0; b < p.blocks && p.group_blocks > 1; ++b)
    if (block_group[size_t(b)] != b / p.group_blocks) p.group_blocks = 1;
  bool identity = p.padded() == q.cols;
  for (int64_t i = 0; identity && i < p.padded(); ++i) identity = order[size_t(i)] == i;
  if (!identity) p.source_col = order;

  const int64_t bb = block_bytes(p.bits);
  p.qs.assign(size_t(p.rows * p.blocks * bb), 0);
  p.d.resize(size_t(p.rows * p.pairs()));
  p.m.resize(size_t(p.rows * p.pairs()));
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < p.rows; ++r)
    for (int64_t b = 0; b < p.blocks; ++b) {
      const int64_t s = r * gpr + block_group[size_t(b)];
      const float scale = q.scales[size_t(s)], zero = q.zeros[size_t(s)];
      uint8_t* blk = p.qs.data() + (r * p.blocks + b) * bb;
      for (int64_t i = 0; i < kBlock; ++i) {
        const int32_t c = order[size_t(b * kBlock + i)];
        // Padding reads activation 0, so its code is irrelevant; 0 (or 0 - 128) keeps it defined.
        const int code = c < 0 ? 0 : q.codes[size_t(r * q.cols + c)];
        put_code(blk, p.bits, i, p.bits == 8 ? code - 128 : code);
      }
      p.d[p.pair(r, b)] = scale;
      p.m[p.pair(r, b)] = p.bits == 8 ? scale * (128.0f - zero) : -scale * zero;
    }
  return p;
}

PackedIntMatrix pack_q8_dense(DType dtype, const void* w, int64_t rows, int64_t cols) {
  LB_CHECK(dtype == DType::F32 || dtype == DType::BF16 || dtype == DType::F16,
           "8-bit packing of a dense matrix: dtype {} is not f32, bf16 or f16", dtype_name(dtype));
  LB_CHECK(rows > 0 && cols > 0, "8-bit packing of a dense matrix: shape [{}, {}]", rows, cols);
  PackedIntMatrix p;
  p.rows = rows;
  p.cols = cols;
  p.bits = 8;
  p.blocks = (cols + kBlock - 1) / kBlock;
  if (p.padded() != cols) {
    p.source_col.assign(size_t(p.padded()), -1);
    for (int64_t c = 0; c < cols; ++c) p.source_col[size_t(c)] = int32_t(c);
  }
  p.qs.assign(size_t(rows * p.blocks * kBlock), 0);
  p.d.resize(size_t(rows * p.blocks));
  const int64_t row_bytes = cols * dtype_size(dtype);
#pragma omp parallel
  {
    std::vector<float> row(static_cast<size_t>(p.padded()), 0.0f);
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      convert_to_f32(dtype, static_cast<const uint8_t*>(w) + r * row_bytes, row.data(), cols);
      for (int64_t b = 0; b < p.blocks; ++b) {
        const float* x = row.data() + b * kBlock;
        float amax = 0;
        for (int64_t i = 0; i < kBlock; ++i) amax = std::max(amax, std::fabs(x[i]));
        // ggml's order of operations (quantize_row_q8_0_ref): the codes come from the reciprocal.
        const float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        int8_t* q = reinterpret_cast<int8_t*>(p.qs.data()) + (r * p.blocks + b) * kBlock;
        for (int64_t i = 0; i < kBlock; ++i) q[i] = int8_t(std::round(x[i] * id));
        p.d[size_t(r * p.blocks + b)] = d;
      }
    }
  }
  return p;
}

std::optional<PackedIntMatrix> stack_rows(const std::vector<const PackedIntMatrix*>& parts) {
  LB_ASSERT(!parts.empty());
  const PackedIntMatrix& first = *parts.front();
  PackedIntMatrix out;
  out.cols = first.cols;
  out.bits = first.bits;
  out.blocks = first.blocks;
  out.group_blocks = first.group_blocks;
  out.source_col = first.source_col;
  size_t total = 0;
  for (const PackedIntMatrix* p : parts) total += p->qs.size();
  out.qs.reserve(total);
  for (const PackedIntMatrix* p : parts) {
    if (p->cols != first.cols || p->bits != first.bits || p->blocks != first.blocks ||
        p->group_blocks != first.group_blocks || p->m.empty() != first.m.empty() || p->source_col != first.source_col)
      return std::nullopt;
    out.rows += p->rows;
    out.qs.insert(out.qs.end(), p->qs.begin(), p->qs.end());
    out.d.insert(out.d.end(), p->d.begin(), p->d.end());
    out.m.insert(out.m.end(), p->m.begin(), p->m.end());
  }
  return out;
}

void gather_padded(const PackedIntMatrix& w, const float* x, int64_t n, float* out) {
  const int64_t P = w.padded();
  for (int64_t j = 0; j < n; ++j) {
    const float* xr = x + j * w.cols;
    float* o = out + j * P;
    if (w.source_col.empty()) {
      std::memcpy(o, xr, size_t(P) * sizeof(float));
    } else {
      for (int64_t p = 0; p < P; ++p) {
        const int32_t c = w.source_col[size_t(p)];
        o[p] = c < 0 ? 0.0f : xr[c];
      }
    }
  }
}

void quantize_activations(const PackedIntMatrix& w, const float* x, int64_t n, Q8Activations& a) {
  const int64_t P = w.padded();
  a.n = n;
  a.blocks = w.blocks;
  a.d.resize(size_t(n * w.blocks));
  a.isum.resize(size_t(n * w.blocks));
  a.qs.resize(size_t(n * P));
  a.dsum.resize(size_t(n * w.blocks));
  a.gsum.assign(size_t(n * w.pairs()), 0.0f);
  a.qs4.resize(size_t(n * P));
#pragma omp parallel for schedule(static) if (n * P > 65536)
  for (int64_t j = 0; j < n; ++j) {
    float buf[kBlock];
    const float* xr = x + j * w.cols;
    for (int64_t b = 0; b < w.blocks; ++b) {
      for (int64_t i = 0; i < kBlock; ++i) {
        const int64_t p = b * kBlock + i;
        const int32_t c = w.source_col.empty() ? int32_t(p) : w.source_col[size_t(p)];
        buf[i] = c < 0 ? 0.0f : xr[c];
      }
      float amax = 0;
      for (float v : buf) amax = std::max(amax, std::fabs(v));
      const float d = amax / 127.0f;
      const float id = d != 0.0f ? 1.0f / d : 0.0f;
      int8_t* q = a.qs.data() + j * P + b * kBlock;
      int32_t sum = 0;
      for (int64_t i = 0; i < kBlock; ++i) {
        q[i] = int8_t(std::round(buf[i] * id));  // halves away from zero, as ggml's Q8_0 (roundf)
        sum += q[i];
      }
      a.d[size_t(j * w.blocks + b)] = d;
      a.isum[size_t(j * w.blocks + b)] = sum;
      a.dsum[size_t(j * w.blocks + b)] = d * float(sum);
      a.gsum[size_t(j * w.pairs() + b / w.group_blocks)] += d * float(sum);
    }
    const int8_t* q = a.qs.data() + j * P;
    int8_t* q4 = a.qs4.data() + j * P;
    const int64_t whole = w.blocks / 4 * 4;
    for (int64_t g = 0; g < whole; g += 4)
      for (int64_t k = 0; k < 4; ++k) {
        std::memcpy(q4 + g * kBlock + k * 16, q + (g + k) * kBlock, 16);
        std::memcpy(q4 + g * kBlock + 64 + k * 16, q + (g + k) * kBlock + 16, 16);
      }
    std::memcpy(q4 + whole * kBlock, q + whole * kBlock, size_t((w.blocks - whole) * kBlock));
  }
}

namespace detail {

void rows_q8_scalar(const PackedIntMatrix& w, const Q8Activations& a, float* y, int64_t r0, int64_t r1, int64_t j0,
                    int64_t j1) {
  const int64_t bb = block_bytes(w.bits), P = w.padded();
  for (int64_t r = r0; r < r1; ++r)
    for (int64_t j = j0; j < j1; ++j) {
      float acc = 0;
      for (int64_t b = 0; b < w.blocks; ++b) {
        const uint8_t* blk = w.qs.data() + (r * w.blocks + b) * bb;
        const int8_t* q = a.qs.data() + j * P + b * kBlock;
        int32_t dot = 0;
        for (int64_t i = 0; i < kBlock; ++i) dot += block_code(blk, w.bits, i) * int32_t(q[i]);
        const size_t wb = w.pair(r, b), ab = size_t(j * w.blocks + b);
        acc += a.d[ab] * (w.d[wb] * float(dot) + w.m_at(r, b) * float(a.isum[ab]));
      }
      y[j * w.rows + r] = acc;
    }
}

}  // namespace detail

namespace {

Isa detect_isa() {
  Isa best = Isa::Scalar;
#if defined(__x86_64__) || defined(_M_X64)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) best = Isa::Avx2;
  if (best == Isa::Avx2 && __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512bw"))
    best = Isa::Avx512Vnni;
#endif
  return best;
}

}  // namespace

bool isa_supported(Isa isa) {
  static const Isa hw = detect_isa();
  return int(isa) <= int(hw);
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Scalar: return "scalar";
    case Isa::Avx2: return "avx2";
    case Isa::Avx512Vnni: return "avx512vnni";
  }
  return "?";
}

Isa best_isa() {
  static const Isa chosen = [] {
    Isa isa = detect_isa();
    if (const char* env = std::getenv("LOWBIT_CPU_KERNELS"); env != nullptr && *env != '\0') {
      const std::string_view v(env);
      Isa want = isa;
      if (v == "scalar") want = Isa::Scalar;
      else if (v == "avx2") want = Isa::Avx2;
      else if (v == "avx512vnni") want = Isa::Avx512Vnni;
      else throw Error(fmt::format("LOWBIT_CPU_KERNELS='{}' is not one of scalar, avx2, avx512vnni", v));
      if (int(want) < int(isa)) isa = want;
    }
    return isa;
  }();
  return chosen;
}

int64_t min_parallel_blocks() {
  // Below this many block products (some microseconds on one core) splitting a product gains
  // less than the claims and the wait for the last chunk cost. At decode every product of
  // SmolLM2-135M runs on all threads, and all of testbed-44m's but its attention output (512 rows
  // of 16 blocks).
  static const int64_t n = [] {
    const char* env = std::getenv("LOWBIT_PACKED_PARALLEL_BLOCKS");
    if (env == nullptr || *env == '\0') return int64_t(8192);
    char* end = nullptr;
    const long long v = std::strtoll(env, &end, 10);
    LB_CHECK(end != env && *end == '\0' && v >= 0,
             "LOWBIT_PACKED_PARALLEL_BLOCKS='{}' is not a non-negative number of blocks", env);
    return int64_t(v);
  }();
  return n;
}

void matmul_q8(const PackedIntMatrix& w, const Q8Activations& a, float* y, Isa isa, int64_t r_begin, int64_t r_end) {
  if (r_end < 0) r_end = w.rows;
  LB_ASSERT(0 <= r_begin && r_begin <= r_end && r_end <= w.rows);
  LB_CHECK(a.blocks == w.blocks, "packed product: activations have {} blocks per row, the weight {}", a.blocks,
           w.blocks);
  LB_CHECK(isa_supported(isa), "packed product: this CPU lacks {}", isa_name(isa));
  const detail::RowsQ8Fn fn = isa == Isa::Avx512Vnni ? detail::rows_q8_avx512vnni
                              : isa == Isa::Avx2     ? detail::rows_q8_avx2
                                                     : detail::rows_q8_scalar;
  // Weight rows in parallel on the thread pool (backend/cpu/thread_pool.h), in chunks of a multiple
  // of 16 rows (a thread's outputs rarely share cache lines) holding at least kChunkBlocks block
  // products (some microseconds: a claim costs a contended atomic, so decode's small products get
  // a few chunks, not one per 16 rows: SmolLM2-135M's decode has 3 for q/k/v, 2 for o, 7 for
  // gate/up, 4 for down and 106 for the Q8 LM head, and ran 8% faster at 2 threads than with
  // chunks of half the size; twice the size was 3% slower). Within a chunk, activation rows go in
  // tiles of 64: a tile (64 x padded bytes) stays in cache while the chunk's weights stream past
  // it, instead of every weight row streaming all activations. A row's result does not depend on the chunking.
  const int64_t work = (r_end - r_begin) * w.blocks * a.n;
  constexpr int64_t kRowStep = 16, kActTile = 64, kChunkBlocks = 8192;
  const int64_t step_blocks = std::max<int64_t>(1, kRowStep * w.blocks * a.n);
  const int64_t chunk_rows = kRowStep * std::max<int64_t>(1, (kChunkBlocks + step_blocks - 1) / step_blocks);
  const int64_t nchunks = (r_end - r_begin + chunk_rows - 1) / chunk_rows;
  auto chunk = [&](int64_t c) {
    const int64_t r0 = r_begin + c * chunk_rows, r1 = std::min(r_end, r0 + chunk_rows);
    for (int64_t j0 = 0; j0 < a.n; j0 += kActTile) fn(w, a, y, r0, r1, j0, std::min(a.n, j0 + kActTile));
  };
  if (work > min_parallel_blocks()) {
    parallel_chunks(nchunks, chunk);
  } else {
    for (int64_t c = 0; c < nchunks; ++c) chunk(c);
  }
}

void matmul_f32(const PackedIntMatrix& w, const float* xp, int64_t n, float* y, int64_t r_begin, int64_t r_end) {
  if (r_end < 0) r_end = w.rows;
  LB_ASSERT(0 <= r_begin && r_begin <= r_end && r_end <= w.rows);
  const int64_t bb = block_bytes(w.bits), P = w.padded();
#pragma omp parallel for schedule(static)
  for (int64_t r = r_begin; r < r_end; ++r) {
    std::vector<float> row(static_cast<size_t>(P));
    for (int64_t b = 0; b < w.blocks; ++b) {
      const uint8_t* blk = w.qs.data() + (r * w.blocks + b) * bb;
      const float d = w.d[w.pair(r, b)], m = w.m_at(r, b);
      for (int64_t i = 0; i < kBlock; ++i) row[size_t(b * kBlock + i)] = d * float(block_code(blk, w.bits, i)) + m;
    }
    for (int64_t j = 0; j < n; ++j) {
      const float* x = xp + j * P;
      double acc = 0;
      for (int64_t p = 0; p < P; ++p) acc += double(row[size_t(p)]) * double(x[p]);
      y[j * w.rows + r] = float(acc);
    }
  }
}

}  // namespace lowbit::pack
