// Packed integer weights for CPU execution: the "int" format's codes (w = scale * (code - zero)),
// repacked into blocks of 32 consecutive inputs with one fp32 pair (d, m) per group, and the
// matrix products that read them directly (never materializing the dequantized weight).
//
// Layout. The input dimension is reordered and padded once at packing time:
//   - columns are visited group by group (in g_idx order for GPTQ's act_order, where group g
//     holds the columns c with g_idx[c] == g, in increasing c; else group g is columns
//     [g*group_size, min((g+1)*group_size, cols)));
//   - each group is padded with empty positions up to a multiple of 32, so that every block of
//     32 positions lies in exactly one group and one (scale, zero) pair covers it.
// `source_col[p]` is the column of the input x read at padded position p (-1: padding, read as
// 0); it is empty when the order is the identity and cols is a multiple of 32 with no padding.
// The activations are gathered into this order once per product (a GPTQ act_order weight costs
// one gather, not a permuted weight).
//
// Block of 32 codes, for a weight row r and block b (all blocks of a row are contiguous):
//   w[r, p] = d[r, b / G] * c_p + m[r, b / G]   for the 32 positions p of block b
// where c_p is the code value stored (below) and, for the group's scale s and zero-point z,
// d = s and m = -s * z (m = s * (128 - z) for the 8-bit container, which stores q - 128).
// G (group_blocks) is the number of blocks the groups of a row span when all but the last span
// the same number and the last no more (act_order or not; the last group is the partial one when
// the group size does not divide the columns): one (d, m) pair per group, so a 4-bit weight with
// groups of 128 costs 16 bytes of codes per block and 8 bytes of (d, m) per four blocks (4.5 bits
// per weight, as ggml's Q4_1 at group 32). Otherwise G = 1: a pair per block.
//
// Containers (codes of 1..8 bits go into the smallest that holds them: 1-2 -> 2, 3 -> 3,
// 4 -> 4, 5-8 -> 8). Element i of the block is c_i:
//   2 bits, 8 bytes   byte j (j < 8):  bits 2k+1..2k = c_{j + 8k}, k = 0..3
//                       byte j: [ c_{j+24} | c_{j+16} | c_{j+8} | c_j ]   (MSB .. LSB, 2 bits each)
//   3 bits, 12 bytes  bytes 0..7: the low 2 bits as in the 2-bit container;
//                     bytes 8..11: a little-endian uint32 whose bit i is bit 2 of c_i
//   4 bits, 16 bytes  byte j (j < 16): [ c_{j+16} (high nibble) | c_j (low nibble) ]
//   8 bits, 32 bytes  byte i: int8 value c_i = q_i - 128
// The split orders (element j with j+8/j+16 in one byte) let SIMD code unpack a block with
// shifts and masks into 32 consecutive bytes, as ggml's Q4_0 does with its nibbles.
//
// Activations for the integer products are quantized per block of 32 padded positions (ggml's
// Q8_0 with the block sum of Q8_1): a = ad * qa, ad = max|a| / 127, qa = round(a / ad) in
// [-127, 127], and isum = sum of the block's qa. One row's output is then
//   y[r] = sum_b ad_b * (d[r, b] * sum_i c_i qa_i + m[r, b] * isum_b)
// with the inner sum in exact int32 arithmetic.
#pragma once

#include "core/tensor.h"
#include "quant/quantized_linear.h"

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace lowbit::pack {

inline constexpr int64_t kBlock = 32;


// The container for codes of `bits` (1..8) bits: 2, 3, 4 or 8.
int container_bits(int bits);
// Bytes per block of 32 codes in a container.
constexpr int64_t block_bytes(int container) { return container * kBlock / 8; }

struct PackedIntMatrix {
  int64_t rows = 0, cols = 0;        // the logical weight [rows = out, cols = in]
  int bits = 4;                      // the container (2, 3, 4 or 8)
  int64_t blocks = 0;                // blocks per row; the padded input has blocks * 32 positions
  int64_t group_blocks = 1;          // G above: blocks per (d, m) pair (the last pair's may be fewer)
  std::vector<int32_t> source_col;   // [blocks * 32] or empty (identity), see above
  std::vector<uint8_t> qs;           // [rows, blocks, block_bytes(bits)]
  std::vector<float> d, m;           // [rows, pairs()]; m empty: all zero (pack_q8_dense)
  int64_t padded() const { return blocks * kBlock; }
  int64_t pairs() const { return (blocks + group_blocks - 1) / group_blocks; }
  // Index into d and m of block b of row r.
  size_t pair(int64_t r, int64_t b) const { return size_t(r * pairs() + b / group_blocks); }
  float m_at(int64_t r, int64_t b) const { return m.empty() ? 0.0f : m[pair(r, b)]; }
  size_t nbytes() const { return qs.size() + (d.size() + m.size()) * sizeof(float) + source_col.size() * 4; }
};

// Packs a QuantizedLinear of format "int" with per-row groups (the layout RTN, GPTQ (act_order
// included), AWQ and SmoothQuant write). Throws lowbit::Error naming `what` for other formats.
PackedIntMatrix pack_int_linear(const QuantizedLinear& q, const std::string& what);
// Whether pack_int_linear accepts q.
bool can_pack_int(const QuantizedLinear& q);

// A dense matrix w [rows, cols] (stored as `dtype`: f32, bf16 or f16, row-major) quantized to 8
// bits per block of 32 columns, as ggml's Q8_0: d = max|w| / 127 over the block, codes
// round(w / d) in [-127, 127] (halves away from zero), in the 8-bit container with m = 0 (not
// stored: m is empty). d stays
// fp32 (Q8_0 stores it in fp16; the codes are the same). Columns are padded to whole blocks with
// zeros. For the LM head of packed execution (packed_model.h), which is not a quantized linear.
PackedIntMatrix pack_q8_dense(DType dtype, const void* w, int64_t rows, int64_t cols);

// The matrices stacked along their rows (outputs), when they read the same input the same way:
// equal cols, container, blocks, group_blocks and gather order (any act_order permutation differing between
// them keeps them apart). Empty when they do not.
std::optional<PackedIntMatrix> stack_rows(const std::vector<const PackedIntMatrix*>& parts);

// The code value c_i of element i of a block (scalar unpacking, the layouts' definition).
int block_code(const uint8_t* block, int bits, int64_t i);

// Activations quantized per block of 32 padded positions (see the header comment).
//
// qs4 holds the same int8 values as qs, reordered for the 4-bit kernels, which unpack four blocks
// of nibbles (64 bytes) at once into their low nibbles (elements 0..15 of each block) and high
// nibbles (16..31): within each whole group of four blocks b0..b3 (128 bytes of a row),
//   bytes   0.. 63: elements 0..15 of b0, then of b1, b2, b3
//   bytes  64..127: elements 16..31 of b0, then of b1, b2, b3
// The last blocks % 4 blocks of a row stay in qs's order.
struct Q8Activations {
  int64_t n = 0, blocks = 0;
  std::vector<float> d;       // [n, blocks]
  std::vector<int32_t> isum;  // [n, blocks]
  std::vector<float> dsum;    // [n, blocks]: d * isum, the factor of a block's zero-point term
  std::vector<float> gsum;    // [n, w.pairs()]: dsum summed over each (d, m) pair's blocks
  std::vector<int8_t> qs;     // [n, blocks * 32]
  std::vector<int8_t> qs4;    // [n, blocks * 32], qs in the 4-bit kernels' order (above)
};

// x [n, cols] gathered into w's padded order (fp32, padding 0): out [n, padded()].
void gather_padded(const PackedIntMatrix& w, const float* x, int64_t n, float* out);
// x [n, cols] gathered and quantized to 8 bits per block.
void quantize_activations(const PackedIntMatrix& w, const float* x, int64_t n, Q8Activations& out);

// Which implementation runs the products. Best is chosen at run time from the CPU's features
// (AVX-512 VNNI with VL -> Avx512Vnni, else AVX2 with FMA -> Avx2, else Scalar); the environment
// variable LOWBIT_CPU_KERNELS=scalar|avx2|avx512vnni lowers it (never above what the CPU has).
enum class Isa { Scalar, Avx2, Avx512Vnni };
Isa best_isa();
bool isa_supported(Isa isa);
const char* isa_name(Isa isa);

// The number of block products (rows x blocks x activation rows) above which matmul_q8 splits its
// rows over the thread pool (backend/cpu/thread_pool.h): 8,192, or LOWBIT_PACKED_PARALLEL_BLOCKS
// (read once; a bad value throws). Smaller products run on the calling thread.
int64_t min_parallel_blocks();

// y[n, rows] = the int8-activation product (above) for activations a (from quantize_activations).
// With a row range [r_begin, r_end), only those outputs are computed (the rest of y is left as it
// is): a view of some rows of a stacked matrix.
void matmul_q8(const PackedIntMatrix& w, const Q8Activations& a, float* y, Isa isa = best_isa(), int64_t r_begin = 0,
               int64_t r_end = -1);
// y[n, rows] = xp[n, padded] @ W^T in fp32 (the dequantized weight times the fp32 activations,
// gathered by gather_padded): the accuracy reference for the integer path. Row range as above.
void matmul_f32(const PackedIntMatrix& w, const float* xp, int64_t n, float* y, int64_t r_begin = 0,
                int64_t r_end = -1);

namespace detail {
// y[j, r] for weight rows [r0, r1) and activation rows [j0, j1); one implementation per ISA.
using RowsQ8Fn = void (*)(const PackedIntMatrix& w, const Q8Activations& a, float* y, int64_t r0, int64_t r1,
                          int64_t j0, int64_t j1);
void rows_q8_scalar(const PackedIntMatrix& w, const Q8Activations& a, float* y, int64_t r0, int64_t r1, int64_t j0,
                    int64_t j1);
void rows_q8_avx2(const PackedIntMatrix& w, const Q8Activations& a, float* y, int64_t r0, int64_t r1, int64_t j0,
                  int64_t j1);
void rows_q8_avx512vnni(const PackedIntMatrix& w, const Q8Activations& a, float* y, int64_t r0, int64_t r1,
                        int64_t j0, int64_t j1);
}  // namespace detail

}  // namespace lowbit::pack
