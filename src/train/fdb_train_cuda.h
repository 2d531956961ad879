// The GPU side of FdbTrainer (fdb_train.h): DB-LLM's Deviation-Aware Distillation step on one CUDA
// device, computing what the CPU step computes. One CudaLlamaBackward (llama_backward_cuda.h) over
// the 16-bit model serves both sides: run as it is, it is the teacher; with a weight hook that
// dequantizes each fdb linear on the GPU right before each use (fdb_format.h's rule in fp32, then
// rounded to the linear's dequant_dtype: bit for bit the CPU's dequantize_f32) into one scratch,
// it is the student, whose embedding, norms and LM
// head are the 16-bit model's anyway. The student's weights never exist in fp32 all at once.
//
// One micro-batch:
//   1. the teacher's forward to its final norm: its normalized hidden states Xt [B*T, H] are kept
//      on the GPU (the [B*T, V] teacher logits are never stored);
//   2. the student's forward and backward with CudaStepHooks: per chunk of rows of its logits,
//      the teacher's logits of the same rows (Xt times the frozen LM head) and the DAD loss and
//      d loss / d logits (backend/cuda/fdb_train.cuh, fp64 sums as dad.cpp); per block linear,
//      dW = dy^T x reduced on the GPU to the group gradients (alpha1, alpha2, beta) as
//      fdb_group_grad does, accumulated like the CPU (fp64 per group, fp32 across micro-batches);
//   3. after the step's last micro-batch the group gradients come down to the host, where
//      FdbTrainer clips and runs AdamW exactly as on the CPU; the new group parameters go up
//      (set_linear) and are dequantized at their next use.
// With latent weights (FdbTrainOptions::latent) every linear's dW also comes down to the host (the
// latent weights, their AdamW state and the re-binarization stay on the host, as on the CPU):
// correct, but one full-weight transfer per linear per micro-batch.
//
// Precision (train/compute_precision.h, the engine's ComputePrecision): the matrix products of
// both forwards, the backward, the dW handed to the group reduction, and the teacher's and
// student's logits chunks run in it (CudaLlamaBackward's modes: fp32 SGEMM, TF32 tensor cores, or
// bf16 operands with fp32 accumulation, the dequantized fdb weight rounded to bf16 in the last).
// The DAD loss and its fp64 sums, the group-gradient reduction (fp64 per group), the dequantized
// fdb weight itself and everything on the host (clipping, AdamW) are the same in every mode.
//
// Phase timing (LOWBIT_TRAIN_PROFILE=1, CudaLlamaBackward's): take_phase_seconds() gives the
// device seconds since its last call of "teacher forward" (the teacher's whole forward to its
// final norm and the copy of its hidden states), the student's step by the engine's phases
// (forward GEMMs, backward GEMMs, attention, loss/LM head, norms/RoPE/SwiGLU/casts, base
// expansion: in bf16 the rounding of the dequantized weights, host<->device transfers), and this
// engine's own: "fdb dequantization", "fdb group gradients", "teacher logits", "DAD loss",
// "fdb latent dW download" (latent weights only), "fdb gradients download" (end_step) and "fdb
// parameters upload" (set_linear). kl_sum's work is not a step's and is not counted.
//
// Memory on the GPU: the 16-bit model as CudaLlamaBackward holds it (its compact block weights
// and LM head), the fdb planes (2 bits per weight), the group parameters and their gradients (3
// fp32 each per group, twice), three fp32 scratches of the largest linear (the dequantized fdb
// weight, its dW, the teacher's expanded weight), the engine's activations (llama_backward_cuda.h), the teacher's [B*T, H] hidden states
// and two [chunk, V] logits chunks.
#pragma once

#include "core/device.h"
#include "train/compute_precision.h"
#include "train/dad.h"
#include "train/llama_backward.h"
#include "train/step_engine.h"
#include "quant/quantized_linear.h"

#include <array>
#include <memory>
#include <string>
#include <vector>

namespace lowbit::train {

// Per [layer][LinearKind], a host vector of a linear's values.
using FdbGradBuffers = std::vector<std::array<std::vector<float>, 7>>;

class FdbCudaEngine {
 public:
  virtual ~FdbCudaEngine() = default;
  virtual std::string name() const = 0;
  // The student's linear (layer, k) becomes q's dequantized weight: q's group parameters (and
  // its planes when `planes`, i.e. after a re-binarization or at the first call) go up; the
  // next use dequantizes them.
  virtual void set_linear(int64_t layer, LinearKind k, const QuantizedLinear& q, bool planes) = 0;
  // A step's gradients: begin_step() zeroes the group gradients on the GPU, each micro_step()
  // adds a micro-batch's (fp64 per group, rounded to fp32, added in fp32: the CPU's order), and
  // end_step() adds their sums into galpha[layer][k] ([groups * 3]) on the host, one transfer per
  // step whatever the number of micro-batches.
  virtual void begin_step() = 0;
  // One micro-batch: the DAD loss with `scale` (dad_loss_backward's sums); when glatent is not
  // null, d loss / dW of every linear is added into (*glatent)[layer][k] ([out * in]) on the host.
  virtual DadSums micro_step(const Batch& b, const DadOptions& dad, double scale, FdbGradBuffers* glatent) = 0;
  virtual void end_step(FdbGradBuffers& galpha) = 0;
  // The sum over the batch's positions of KL(teacher || student), without gradients.
  virtual double kl_sum(const Batch& b) = 0;
  // The most GPU memory the process's device buffers have held (both engines, the fdb state).
  virtual double peak_device_bytes() const = 0;
  // The products' precision, and phase timing (see "Phase timing"; empty when not profiling).
  virtual ComputePrecision compute() const = 0;
  virtual bool profiling() const = 0;
  virtual std::vector<PhaseSeconds> take_phase_seconds() = 0;
};

// An engine on GPU `d` for the 16-bit `teacher` (which must outlive it) whose student linears are
// set from `linears` ([layer][LinearKind], fdb format, validated by the caller), computing its
// products in `compute`. max_chunk_rows > 0 caps the rows of each logits chunk
// (CudaStepHooks::max_chunk_rows; for tests). In a build without CUDA, throws lowbit::Error
// naming the device.
std::unique_ptr<FdbCudaEngine> make_fdb_cuda_engine(const Device& d, const LlamaModel& teacher,
                                                    const std::vector<std::array<QuantizedLinear, 7>>& linears,
                                                    int64_t max_chunk_rows = 0,
                                                    ComputePrecision compute = ComputePrecision::Fp32);

}  // namespace lowbit::train
