// The GPU twin of llama_backward.h for LoRA training over a frozen base: the same forward,
// backward, loss and gradient checkpointing, on one CUDA device (backend/cuda/ops_backward.cuh).
//
// Contract: that of forward_backward / forward_loss in llama_backward.h, restricted to
//   - a frozen base (base_grads must be null),
//   - cross-entropy over the batch's targets with StepOptions::loss_scale (no logits_loss),
// each refused otherwise with a lowbit::Error naming the option. forward_backward_hooked
// (CudaStepHooks) is the GPU way to train other parameters: a logits loss computed on the device
// and each linear's weight gradient handed to the caller on the device (DB-LLM's distillation,
// fdb_train_cuda.h). Adapters may carry IR-QLoRA's
// IEC scalars (iec.h): their gradients come down with A's and B's (each a fixed-order fp64 sum
// over the tokens, as on the CPU). LoRA dropout draws the CPU's
// counter-based masks bit for bit (same seed, layer, linear and element), so a GPU step and a
// CPU step see the same masks and differ only by fp32 summation order.
//
// Precision (train/compute_precision.h; chosen per engine, fp32 unless asked):
//   fp32  everything is fp32, the adapters' math and the base alike; GEMMs are cuBLAS SGEMM
//         without TF32. The base is the very fp32 function the CPU trains over (for QLoRA, the
//         dequantized NF4 values), so the parity tests hold at fp32 tolerances.
//   tf32  the same fp32 buffers; every product of the step (the base linears, the adapters' A and
//         B, the LM head) on tensor cores with CUBLAS_COMPUTE_32F_FAST_TF32, set per call
//         (backend/cuda/mixed_gemm.cuh), so nothing else on the cuBLAS handle changes.
//   Both fast modes run the attention's products as fp32 strided-batched SGEMMs
//   (ops_backward.cuh's attention_gemm_f32: the fp32 mode's arithmetic in another summation
//   order) instead of the fp32 mode's one-thread-per-output kernels; with
//   LOWBIT_TRAIN_ATTENTION=tf32 in the environment when the engine is built, the same calls on
//   tensor cores with TF32 operands and fp32 accumulation (PEFT's bf16 autocast runs them with
//   bf16 operands; the softmax, its gradient and every buffer stay fp32).
//   bf16  the frozen base is expanded into a bf16 scratch (the bf16 rounding of the fp32 weight
//         above: exact for bases whose dequantized values are bf16 already, as QLoRA's NF4 of a
//         bf16 checkpoint is), the LM head is held in bf16, and every product takes bf16 operands
//         with fp32 accumulation and fp32 output (cublasGemmEx, CUBLAS_COMPUTE_32F). The
//         adapters' products run in bf16 too, as PEFT's autocast runs them: x, A, B, the product
//         t = x A^T, the upstream gradient dy and dt are rounded to bf16 as operands, while t, dt,
//         dx, dA and dB themselves are fp32 (each product accumulates its fp32 output; dx of the
//         base and the adapter path add in fp32). The choice: the adapters' products are ~3% of a
//         step's multiply-adds at r 64 on LLaMA-3-8B but in fp32 would take about a third of the
//         GEMM time, and PEFT's bf16 LoRA is the reference being matched. The master weights A,
//         B (and IEC's scalars), their gradients and AdamW's moments stay fp32 (on the host),
//         as do the residual stream, RMSNorm, RoPE, attention and its softmax, SwiGLU, the
//         cross-entropy and IEC's group means.
//   Hooks (CudaStepHooks) run in every mode: hooks->weight's fp32 weight is what the fp32 and
//   tf32 products read, and what the bf16 mode rounds into its bf16 block scratch (cached while
//   the block is in use within one call, never across calls); the weight gradient handed to
//   hooks->weight_grad is an fp32 dW from the mode's product (bf16: x and dy rounded to bf16);
//   the logits handed to hooks->logits_loss are fp32 from the mode's head product, and the
//   gradient it writes there is rounded like the cross-entropy's in the bf16 mode. Fusion (below)
//   applies to hooked calls as to the others, with the same values: a hook's weight is rounded
//   into the scratch like the model's, its dW reads the products' bf16 operands (the fused up
//   projection's dy from dyb2), and a hook's logits gradient is rounded from the fp32 it writes.
//   hooks->weight is refused on an engine with a resident base (its block linears live in the
//   resident buffer, no scratch is held for a hook's): DB-LLM's engine (fdb_train_cuda.h) is
//   built with the base per block (BaseResidency::Off), its teacher's linears expanded per visit.
//
// Fusion (bf16 mode): the kernels that produce a product's fp32 input also write its bf16 operand
// (RMSNorm's output for Q, K, V or gate and up and for the LM head, SwiGLU's for the down
// projection, SwiGLU's backward's dgate and dup for theirs), and an input already rounded is not
// rounded again by the next product that reads it (Q, K and V share x1's, gate and up x2's, the
// backward's LoRA A products reuse what the recomputation left), the cross-entropy writes the
// logits' gradient as the LM head backward's bf16 operand only, and each RMSNorm's backward adds
// its gradient into the residual stream's in the same pass. The fp32 values are computed by
// the same kernels' code (and rounded as to_bf16 rounds them, added as add_f32 adds them), so a
// fused step equals the one-launch-at-a-time step bit for bit; LOWBIT_TRAIN_FUSE=0 in the
// environment when the engine is built runs the latter (for tests and timing).
//
// Phase timing: with LOWBIT_TRAIN_PROFILE=1 in the environment the engine records a CUDA event at
// every change of phase (forward GEMMs, backward GEMMs, base expansion, attention, loss/LM head,
// the other elementwise kernels, host<->device transfers) and take_phase_seconds() hands out the
// sums; without it, no event is recorded. A hooks' user marks its own work with mark_phase (a
// hook's work is timed under the phase it marks until the engine marks its next one).
//
// The frozen base is held compact (train/compact_base.h): a quantized checkpoint's linears ("int",
// "codebook" i.e. NF4, "icq") as their codes (4 bits for codes of up to 4 bits) and fp32 scales,
// an unquantized linear stored in BF16/F16 as those 16 bits, anything else in fp32. Right before
// each use, forward and backward, a linear is expanded into one shared fp32 scratch
// (backend/cuda/compact_weight.cuh), bit for bit the fp32 weight the CPU uses (the bf16 mode:
// into a bf16 scratch of one block's seven linears, kept while the block is in use, so the
// recomputation of a block and its backward expand it once). For QLoRA on
// LLaMA-3-8B that is ~3.9 GB of linears instead of ~28 GB. The bf16 mode with a resident base
// (train/base_residency.h) expands every block once, when the engine is built, into one bf16
// buffer [layers, resident_block_elements()] kept for the engine's life, and drops the compact
// form: the same values (the same kernel), so the same losses and gradients bit for bit, without
// a step's expansions. The norms and the LM head are fp32
// ([V, H]: 2.1 GB for LLaMA-3's vocabulary); the embedding table stays on the host (a step
// gathers its rows there and uploads the [B*T, H] result). gpu_model_bytes() gives the total for a
// configuration; model_bytes() what was allocated.
//
// Memory besides the weights: each block's input [B*T, H] for every block (the checkpoints),
// one block's intermediates, the attention's [nh, T, T] probabilities and their gradient for one
// sequence at a time (the attention materializes its scores; fine for T <= 2048), and the logits
// of a chunk of rows (the [B*T, V] logits never exist at once).
//
// The trainer (trainer.h, TrainOptions::optimizer_on_device) normally has the engine hold the
// adapters: they, their gradient sum and AdamW's moments stay on the device for the whole run and
// AdamW runs there (backend/cuda/adamw.cuh), nothing but the gradient norm coming down per step.
// Otherwise (adapters with IEC's scalars, or optimizer_on_device off), adapters go up and
// gradients come down on every call (AdamW on the host), except within one optimizer step: a call with
// StepOptions::adapters_unchanged reuses the adapters already uploaded, and one with
// more_micro_batches keeps its gradients on the GPU, summed there in call order, until the step's
// last call downloads the sum (bit for bit the host's sum into zeroed buffers).
#pragma once

#include "train/compact_base.h"
#include "train/compute_precision.h"
#include "train/llama_backward.h"
#include "train/step_engine.h"

#include <array>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace lowbit::cuda {
class Context;
}

namespace lowbit::train {

// Hooks through which a trainer of parameters other than LoRA adapters (DB-LLM's fdb scales:
// train/fdb_train_cuda.h) drives a GPU step without the logits or weight gradients leaving the
// device. Device pointers; the hooks run on the engine's stream (context().stream()) and must
// enqueue their work there.
struct CudaStepHooks {
  // Replaces the cross-entropy: called for consecutive row chunks [row0, row0 + rows) of the
  // [B*T, V] logits, in order, with the chunk's logits [rows, V] on the device; overwrites them
  // with d loss / d logits and returns the chunk's loss. The step's loss_sum is the sum of the
  // returns (num_targets stays the batch's target count).
  std::function<double(int64_t row0, int64_t rows, int64_t V, float* logits)> logits_loss;
  // Called in the backward with each block linear's weight gradient dW [out, in] = dy^T x for
  // this batch (device memory valid during the call only).
  std::function<void(int64_t layer, LinearKind k, const float* dw)> weight_grad;
  // Replaces the model's base weights: called before each use of block `layer`'s linear k
  // (forward, recomputation, backward) for the fp32 weight [out, in] to compute with, valid
  // until the next call. The embedding, norms and LM head stay the model's.
  std::function<const float*(int64_t layer, LinearKind k)> weight;
  // At most this many rows of logits per chunk (0: the engine's 256 MiB chunks); the same losses
  // and gradients in more calls of logits_loss (tests reach chunk edges with it).
  int64_t max_chunk_rows = 0;
};

class CudaLlamaBackward {
 public:
  // Uploads `model`'s weights to GPU `device` for steps computing in `compute` (see
  // "Precision"). The model must outlive this object.
  CudaLlamaBackward(const LlamaModel& model, int device, ComputePrecision compute = ComputePrecision::Fp32);
  // The same with the bf16 mode's base resident as `o` says (base_residency.h; o.base_resident
  // as resolve_base_residency gives it: On or Auto in the bf16 mode only). On throws
  // lowbit::Error naming --base-resident and both sizes when the device's free memory cannot
  // take the bf16 base.
  CudaLlamaBackward(const LlamaModel& model, int device, const StepEngineOptions& o);
  ~CudaLlamaBackward();
  CudaLlamaBackward(const CudaLlamaBackward&) = delete;
  CudaLlamaBackward& operator=(const CudaLlamaBackward&) = delete;

  std::string device_name() const;

  StepResult forward_backward(const LoraAdapters* lora, const Batch& batch, const StepOptions& opt,
                              LoraAdapters* lora_grads, BaseGrads* base_grads);
  StepResult forward_loss(const LoraAdapters* lora, const Batch& batch);

  // For CudaStepHooks' users (no adapters; any compute precision).
  // forward_backward with the hooks; any may be empty (then the step's default: the
  // cross-entropy over the targets with StepOptions' loss_scale of 0, no weight gradients, the
  // model's weights).
  StepResult forward_backward_hooked(const Batch& batch, const CudaStepHooks& hooks);
  // The forward up to the final norm (with hooks->weight's weights when given): the normalized
  // hidden states [B*T, H] on the device, valid until the next call on this object. The logits
  // are these times lm_head()^T.
  const float* forward_hidden(const Batch& batch, const CudaStepHooks* hooks = nullptr);
  // The LM head [V, H] on the device (fp32 and tf32 modes; the bf16 mode holds it in bf16 only
  // and refuses).
  const float* lm_head() const;
  // logits [rows, V] = hidden [rows, H] (device) times the LM head, as the step computes its
  // logits in this engine's precision (bf16: the rows rounded to bf16, the bf16 head, fp32
  // accumulation and output). Runs on the stream, timed under the phase marked last.
  void head_logits(const float* hidden, float* logits, int64_t rows);
  ComputePrecision compute() const;
  // Phase timing for hooks' users: what the stream runs from here to the next mark counts as
  // `name` (a string that lives as long as this object). Nothing without profiling().
  void mark_phase(const char* name);
  // Whether the base is held expanded in bf16 (base_residency.h).
  bool base_resident() const;
  // Phase timing (see above): whether LOWBIT_TRAIN_PROFILE=1 was set when this object was built,
  // and the device seconds per phase since the last call (then reset; phases marked since a
  // step's end are collected first).
  bool profiling() const;
  std::vector<PhaseSeconds> take_phase_seconds();

  // Held adapters: StepEngine's contract of the same names (step_engine.h). The adapters, the
  // step's gradient sum (acc) and AdamW's moments live in this object's buffers between steps;
  // the norm is the one fp64 value that comes down per step. Adapters with IEC's scalars are
  // not held (their scalars' values are kernel arguments taken from the host).
  bool can_hold_adapters(const LoraAdapters& params) const;
  void hold_adapters(const LoraAdapters& params, const AdamWState& state);
  void release_adapters();
  StepResult held_forward_backward(const Batch& batch, const StepOptions& opt, bool first_micro_batch);
  double held_grad_norm();
  void held_adamw_step(double grad_norm, double max_grad_norm, const AdamWOptions& opt, double lr, int64_t step);
  void download_held(LoraAdapters* params, AdamWState* state, LoraAdapters* grads);
  const cuda::Context& context() const;
  // The device bytes the model holds (measured from its buffers; gpu_model_bytes() predicts
  // them), the base's layout, and the most cudaMemGetInfo showed in use after any step so far.
  GpuModelBytes model_bytes() const;
  std::string base_layout() const;
  std::optional<CompactLayout> uniform_layout() const;  // nullopt: the linears' layouts differ
  int64_t peak_in_use_bytes() const;
  // The weight [out, in] of block `layer`'s linear `k` as the GPU computes with it (expanded from
  // its compact form like every use, or read from the resident base; in the bf16 mode the bf16
  // values, widened), downloaded: for tests.
  std::vector<float> download_weight(int64_t layer, LinearKind k);

 private:
  // Throws lowbit::Error for hooks->weight on an engine with a resident base (see "Hooks").
  void check_hooks(const CudaStepHooks* hooks) const;
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace lowbit::train
