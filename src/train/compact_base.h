// The frozen base of LoRA training in the compact form the GPU holds it in (llama_backward_cuda.h):
// each linear as its quantized codes and scales (or its stored 16-bit values), expanded into one
// reusable fp32 scratch right before each use. The expansion gives, bit for bit, the fp32 weight
// the CPU trains over (LlamaModel::block_weights: the format's dequantized value, rounded to the
// checkpoint's 16-bit dtype), so training numerics do not depend on the layout.
//
// One linear W [rows = out, cols = in], by kind:
//
//   F32       w[i] = f32[i]                                 (4 bytes a weight; the fallback for
//                                                            formats without a compact form)
//   Half16    w[i] = widen(half[i])                          (BF16 or F16 storage: 2 bytes)
//   Int       w[i] = round(scale[s] * (code[i] - zero[s]))   (quant format "int": RTN, GPTQ, AWQ)
//   Codebook  w[i] = round(codebook[code[i]] * scale[s] (+ tau[i / group_size]))
//                                                           ("codebook": NF4; "icq": with tau)
//
// i = r * cols + c (row-major), s = QuantizedLinear::scale_index(r, c) (flat blocks of group_size
// elements, or per-row groups with an optional g_idx), round() = rounding to `round_to` (BF16/F16
// round to nearest even; F32 none). Each product and sum is one fp32 operation, rounded, in this
// order (no fused multiply-add), as the formats' CPU dequantization computes it. tau is IR-QLoRA's
// decoded shift per block, map[tau_q[b]] * tau_absmax[b / tau_group] (quant/formats/icq_format.cpp),
// computed once on the host.
//
// Codes are packed by element index i: code_bits 4 puts element i in byte i / 2, the low nibble
// for even i, the high nibble for odd i; code_bits 8 is one byte per element. Codes of up to 4
// bits use the nibble form, wider ones (up to 8) the byte form.
//
//      byte i/2:  [ 7 6 5 4 | 3 2 1 0 ]
//                   code i+1   code i     (i even)
#pragma once

#include "core/dtype.h"
#include "formats/llama_config.h"
#include "formats/llama_tensors.h"
#include "train/compute_precision.h"

#include <array>
#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace lowbit {
class LlamaModel;
struct QuantizedLinear;
}  // namespace lowbit

namespace lowbit::train {

enum class CompactKind : uint8_t { F32, Half16, Int, Codebook };
const char* compact_kind_name(CompactKind k);

struct CompactLinear {
  CompactKind kind = CompactKind::F32;
  int64_t rows = 0, cols = 0;
  std::vector<float> f32;        // F32: [rows * cols]
  std::vector<uint16_t> half;    // Half16: [rows * cols] bit patterns of `half_dtype`
  DType half_dtype = DType::BF16;
  int code_bits = 4;             // Int / Codebook: 4 (two codes a byte) or 8
  std::vector<uint8_t> codes;    // [ceil(rows * cols * code_bits / 8)]
  std::vector<float> scales;     // [scale groups]
  std::vector<float> zeros;      // Int: [scale groups], in code units
  std::vector<float> codebook;   // Codebook: [2^bits]
  std::vector<float> tau;        // Codebook from "icq": [rows * cols / group_size]; else empty
  std::vector<int32_t> g_idx;    // [cols] or empty
  int64_t group_size = 0;
  bool flat_groups = false;
  DType round_to = DType::F32;   // the checkpoint's dtype for dequantized weights

  int64_t numel() const { return rows * cols; }
  // Bytes of every vector above: what the GPU holds for this linear.
  int64_t bytes() const;
  // Whether a use expands it into the scratch (every kind but F32, which is used in place).
  bool needs_scratch() const { return kind != CompactKind::F32; }
};

// The compact form of a quantized linear, when its format has one ("int", "codebook", "icq" with
// codes of up to 8 bits); an F32 linear of its dequantized weight otherwise.
CompactLinear compact_linear(const QuantizedLinear& q);

// out [rows * cols] = the fp32 weight (the scalar reference of the GPU's expansion,
// backend/cuda/compact_weight.cuh).
void expand_compact_linear(const CompactLinear& w, float* out);

// What the GPU holds for a model: every block's seven linears and two norms, the final norm, the
// LM head ([V, H]) and the one scratch a linear expands into. The embedding table stays on the
// host (a training step gathers its rows there and uploads the [B*T, H] result). By the step's
// precision (compute_precision.h): fp32 and tf32 hold the head in fp32 and expand into an fp32
// scratch the size of the largest linear that needs one (F32 linears are used in place); bf16
// holds the head in bf16 and expands every linear, F32 ones too, into a bf16 scratch of one
// block's seven linears (a block's expansions serve its recomputation and its backward). The
// bf16 mode with a resident base (base_residency.h) holds instead every block's seven linears
// expanded into bf16, [layers, resident_block_elements()], and neither the compact linears nor a
// scratch.
struct GpuModelBytes {
  int64_t linears = 0;  // codes, scales, zeros, codebooks, taus, g_idx (or 16-/32-bit weights)
  int64_t norms = 0;    // fp32
  int64_t head = 0;     // fp32 (bf16 in the bf16 mode)
  int64_t scratch = 0;  // the expanded linear in use (0 when none is expanded)
  int64_t resident = 0; // the resident bf16 base (0 unless resident)
  int64_t total() const { return linears + norms + head + scratch + resident; }
};

// The elements one block takes in a resident bf16 base: its seven linears' out * in, in
// LinearKind order, rounded up to a multiple of 128 (256 bytes: each block starts at cudaMalloc's
// alignment, as the per-block scratch does, so cuBLAS sees the same operand alignment either way).
int64_t resident_block_elements(const LlamaConfig& c);

// The layout of every linear of a base, for gpu_model_bytes(): what a quantization spec yields.
struct CompactLayout {
  CompactKind kind = CompactKind::F32;
  int code_bits = 4, bits = 4;     // storage width, code width (codebook of 2^bits values)
  int64_t group_size = 64;         // elements (flat) or columns (per row) per scale
  bool flat_groups = true;
  bool g_idx = false, tau = false;
  bool operator==(const CompactLayout&) const = default;
};

struct CompactBase {
  std::vector<std::array<CompactLinear, 7>> layers;  // [layer][LinearKind]
  // resident: the bf16 mode's resident base (base_residency.h; ignored in the other modes).
  GpuModelBytes bytes(const LlamaConfig& c, ComputePrecision p = ComputePrecision::Fp32, bool resident = false) const;
  // "codebook (4-bit storage, flat blocks of 64)", kinds joined by " + " when they differ: for
  // the log.
  std::string describe() const;
  // The distinct kinds describe() joins (for combining the descriptions of several bases).
  std::set<std::string> kind_names() const;
  // The layout every linear shares; nullopt when they differ.
  std::optional<CompactLayout> uniform_layout() const;
};

// The compact base of `model`'s linears. A quantized checkpoint's linears (QuantizedWeightSource)
// take their compact form; an unquantized linear stored in BF16/F16 is Half16; anything else, and
// every block whose weights were replaced in memory (LlamaModel::set_block_weights: merged
// adapters, rewritten blocks), is F32 from block_weights(). Reads one linear at a time.
CompactBase make_compact_base(const LlamaModel& model);
// The same for block `layer` alone (what the GPU uploads one block at a time).
std::array<CompactLinear, 7> make_compact_block(const LlamaModel& model, int64_t layer);

// The GPU bytes of the model part of LoRA training for configuration `c` with every linear in
// layout `l`, computing in precision `p` (the formula CompactBase::bytes() gives for such a base),
// with the bf16 mode's base resident when `resident` (ignored in the other modes).
GpuModelBytes gpu_model_bytes(const LlamaConfig& c, const CompactLayout& l,
                              ComputePrecision p = ComputePrecision::Fp32, bool resident = false);

// The GPU bytes of a step's buffers besides the model and the adapters, for micro-batches of B
// sequences of T tokens (N = B T): the hidden state, its gradient and the block's intermediates
// and their gradients ([N, H], [N, q heads * head dim], [N, kv heads * head dim], [N, F] each),
// two [N, max(H, F, q dim)] dropout buffers, every block's input ([L, N, H], the checkpoints), one
// sequence's attention probabilities and their gradient ([heads, T, T] each), a chunk of logits
// (at most 256 MiB), the RoPE tables, the rows' losses and targets; in the bf16 mode, the
// products' bf16 operands. An upper bound of what llama_backward_cuda.cpp allocates for such a
// batch, less the adapters' [N, r] buffers beyond gpu_adapter_bytes' (dt and its bf16 copies: 8 N r
// bytes a step): base_residency.h's `other` with gpu_adapter_bytes.
int64_t gpu_step_bytes(const LlamaConfig& c, int64_t B, int64_t T, ComputePrecision p = ComputePrecision::Fp32);

// The GPU bytes of the adapters (A, B, their gradients and the gradients' sums over a step's
// micro-batches, the [N, r] products a forward keeps for N = batch * sequence tokens, two
// gradient slots for IEC's scalars; with `moments`, AdamW's two moments of adapters held on the
// device; in the bf16 mode, A and B rounded to bf16) of rank r on the `targets` linears of every
// block, with gradient accumulation (without it and without held adapters, the sums are not
// allocated: 4 r (in + out) bytes less a linear).
int64_t gpu_adapter_bytes(const LlamaConfig& c, int64_t r, const std::array<bool, 7>& targets, int64_t tokens,
                          ComputePrecision p = ComputePrecision::Fp32, bool moments = false);

}  // namespace lowbit::train
