// Packed execution of a quantized checkpoint on the CPU: every quantized linear of the model runs
// from its packed codes (packed_int.h) through a LinearKernel, and no dequantized weight of it is
// ever formed. Norms, embeddings and the LM head stay as the checkpoint stores them.
#pragma once

#include "model/llama_model.h"
#include "pack/packed_int.h"

#include <cstdint>
#include <memory>
#include <string>

namespace lowbit::pack {

// How a packed linear treats its input: Q8 quantizes it to 8 bits per block of 32 and uses
// integer dot products (the fast path, ggml's Q4_0 x Q8_0 scheme); F32 multiplies the fp32
// input with the dequantized blocks (for accuracy checks: it equals the fake-quant product up to
// the summation order and the fake-quant weight's rounding to 16 bits).
enum class PackedActivations { Q8, F32 };
PackedActivations parse_packed_activations(const std::string& s);  // "q8" | "f32"

// A packed linear: all rows of a matrix, or rows [r_begin, r_end) of one that several linears
// share (q, k and v stacked, say), which it reads in place.
class PackedIntLinear final : public LinearKernel {
 public:
  PackedIntLinear(std::shared_ptr<const PackedIntMatrix> w, PackedActivations act, int64_t r_begin = 0,
                  int64_t r_end = -1)
      : w_(std::move(w)), act_(act), r0_(r_begin), r1_(r_end < 0 ? w_->rows : r_end) {}
  void apply(const float* x, float* y, int64_t rows) const override;
  int64_t in_features() const override { return w_->cols; }
  int64_t out_features() const override { return r1_ - r0_; }
  const PackedIntMatrix& matrix() const { return *w_; }
  const std::shared_ptr<const PackedIntMatrix>& shared_matrix() const { return w_; }
  bool whole() const { return r0_ == 0 && r1_ == w_->rows; }

 private:
  std::shared_ptr<const PackedIntMatrix> w_;
  PackedActivations act_;
  int64_t r0_, r1_;
};

// The LM head under packed execution: Stored keeps it as the checkpoint stores it (16-bit or fp32,
// the default: the logits of the fake-quant model); Q8 packs it at load to 8 bits per block of 32
// (ggml's Q8_0 codes, pack_q8_dense) and runs it through the integer kernels with 8-bit
// activations, as llama.cpp runs a Q8_0 output tensor. For decode speed: the head is the largest
// matrix a small model reads per token.
enum class PackedHead { Stored, Q8 };
PackedHead parse_packed_head(const std::string& s);  // "stored" | "q8"

struct PackedSummary {
  int64_t linears = 0;
  int64_t packed_bytes = 0;     // codes, (d, m) pairs and gather tables of the packed linears
  int64_t weights = 0;          // weights they hold
  int64_t head_bytes = 0;       // the packed LM head's bytes (PackedHead::Q8), else 0
};

// Replaces every quantized linear of `model` (opened from a quantized checkpoint) with its packed
// kernel: block i's weights become its norms plus the kernels. Throws lowbit::Error when the
// model is not quantized or a linear's format has no packed kernel (naming the linear). With
// PackedHead::Q8 the LM head is packed as well (its kernel runs with `act`'s activations).
PackedSummary install_packed_linears(LlamaModel& model, PackedActivations act, PackedHead head = PackedHead::Stored);

}  // namespace lowbit::pack
