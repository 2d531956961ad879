#include "export/export_gguf_types.h"

#include "core/error.h"
#include "formats/ggml_quants.h"

#include <cstring>

namespace lowbit {

namespace {

enum class Kind { Q8_0, Q4_0, Q4_1, None };

Kind kind_of(const QuantizedLinear& q, bool sym) {
  if (q.bits == 8 && sym) return Kind::Q8_0;
  if (q.bits == 4) return sym ? Kind::Q4_0 : Kind::Q4_1;
  return Kind::None;
}

bool all_zeros_are(const QuantizedLinear& q, float z) {
  for (float v : q.zeros)
    if (v != z) return false;
  return true;
}

}  // namespace

std::string gguf_block_problem(const QuantizedLinear& q) {
  if (!q.g_idx.empty()) return "it has an act-order group map (g_idx), which ggml blocks lack";
  const int64_t gs = q.group_size >= q.cols ? q.cols : q.group_size;
  if (gs % kQK4 != 0) return fmt::format("groups of {} columns are not whole 32-element ggml blocks", gs);
  const bool sym = all_zeros_are(q, float(1 << (q.bits - 1)));
  if (kind_of(q, sym) == Kind::None)
    return fmt::format("ggml blocks hold 8-bit symmetric (Q8_0) and 4-bit (Q4_0, Q4_1) grids, not {}-bit {}", q.bits,
                       sym ? "symmetric" : "asymmetric");
  return "";
}

GgufBlocks pack_gguf_blocks(const QuantizedLinear& q) {
  LB_CHECK(gguf_block_problem(q).empty(), "gguf: {}", gguf_block_problem(q));
  const Kind k = kind_of(q, all_zeros_are(q, float(1 << (q.bits - 1))));
  GgufBlocks out;
  const int64_t nblocks = q.rows * q.cols / kQK4;
  auto scale_of = [&](int64_t r, int64_t c) { return q.scales[size_t(q.scale_index(r, c))]; };
  auto zero_of = [&](int64_t r, int64_t c) { return q.zeros[size_t(q.scale_index(r, c))]; };
  auto code = [&](int64_t r, int64_t c) { return q.codes[size_t(r * q.cols + c)]; };
  auto emit = [&](const auto& block) {
    const auto* p = reinterpret_cast<const uint8_t*>(&block);
    out.bytes.insert(out.bytes.end(), p, p + sizeof(block));
  };
  switch (k) {
    case Kind::Q8_0: out.type = uint32_t(GgmlType::Q8_0); out.bytes.reserve(size_t(nblocks * sizeof(BlockQ8_0))); break;
    case Kind::Q4_0: out.type = uint32_t(GgmlType::Q4_0); out.bytes.reserve(size_t(nblocks * sizeof(BlockQ4_0))); break;
    case Kind::Q4_1: out.type = uint32_t(GgmlType::Q4_1); out.bytes.reserve(size_t(nblocks * sizeof(BlockQ4_1))); break;
    case Kind::None: LB_ASSERT(false);
  }
  for (int64_t r = 0; r < q.rows; ++r)
    for (int64_t c0 = 0; c0 < q.cols; c0 += kQK4) {
      // One group covers the whole block (group sizes are multiples of 32).
      const float d = scale_of(r, c0);
      if (k == Kind::Q8_0) {
        BlockQ8_0 b{};
        b.d = f32_to_f16(d);
        for (int j = 0; j < kQK4; ++j) b.qs[j] = int8_t(int(code(r, c0 + j)) - 128);
        emit(b);
      } else if (k == Kind::Q4_0) {
        BlockQ4_0 b{};
        b.d = f32_to_f16(d);
        for (int j = 0; j < kQK4 / 2; ++j) b.qs[j] = uint8_t(code(r, c0 + j) | (code(r, c0 + j + 16) << 4));
        emit(b);
      } else {
        BlockQ4_1 b{};
        b.d = f32_to_f16(d);
        b.m = f32_to_f16(-d * zero_of(r, c0));
        for (int j = 0; j < kQK4 / 2; ++j) b.qs[j] = uint8_t(code(r, c0 + j) | (code(r, c0 + j + 16) << 4));
        emit(b);
      }
    }
  return out;
}

}  // namespace lowbit
