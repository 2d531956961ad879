// Training DB-LLM's fdb weights (quant/formats/fdb_format.h) by Deviation-Aware Distillation
// (train/dad.h) from the 16-bit teacher: the student is the same LlamaModel architecture whose
// block linears are the fdb weights' dequantized values, refreshed after every optimizer step.
//
// Trained parameters (choices of lowbit's; the paper states that the FDB scales are learnable
// and trained with straight-through gradients, and releases no code):
//   - per group alpha1, alpha2 and, when the weight has offsets and train_beta is on, beta:
//       d L / d alpha1[s] = sum_{group s} dL/dW * b1,  d alpha2 = sum dL/dW * b2,  d beta = sum dL/dW
//     where dL/dW is the gradient at the dequantized weight (which is rounded to the model's
//     dtype: the rounding is passed straight through);
//   - optionally (latent = true) the latent fp32 weights W~ too, initialized from the teacher's
//     weights and re-binarized after every step with the paper's rule
//       x = W~ - beta,  b1 = H(x - (alpha1 + alpha2) / 2),  b2 = H(-(x - alpha1 b1 - alpha2 / 2)),
//     H(x) = 1 for x >= 0; their gradient is dL/dW passed straight through (identity STE).
//     The planes stay those of the initialization until the first step.
// The embeddings, norms and LM head stay frozen (the 16-bit model's).
//
// Device (FdbTrainOptions::device): the CPU runs llama_backward.h's forward_backward with the DAD
// loss as its logits loss; a GPU runs the same step in fdb_train_cuda.h's engine (forward,
// backward, DAD loss and the group gradients on the GPU; clipping, AdamW and, with latent
// weights, their update and re-binarization on the host, as on the CPU). With a GPU the
// student model's host weights are not refreshed: the student lives on the GPU. A GPU step's
// matrix products run in FdbTrainOptions::compute (train/compute_precision.h; fdb_train_cuda.h
// says which); the CPU computes in fp32 only.
//
// Optimizer: AdamW (optimizer.h) on every trained vector, clipping by the global norm of all
// of them, constant learning rate after a linear warmup. Each step's loss is the DAD loss
// averaged over all positions of its micro-batches (every position of a window is distilled).
#pragma once

#include "core/device.h"
#include "model/llama_model.h"
#include "quant/quantized_linear.h"
#include "train/compute_precision.h"
#include "train/dad.h"
#include "train/fdb_train_cuda.h"
#include "train/llama_backward.h"
#include "train/optimizer.h"

#include <array>
#include <span>
#include <vector>

namespace lowbit::train {

// d L / d (alpha1, alpha2, beta) of every group of q ([groups, 3], overwritten) from dL/dW
// [rows, cols] at its dequantized weight.
void fdb_group_grad(const QuantizedLinear& q, const float* dw, float* dalpha);

// The paper's binarization of latent weights w [rows, cols] with q's current group parameters,
// written into q's planes.
void fdb_rebinarize(QuantizedLinear& q, const float* w);

struct FdbTrainOptions {
  AdamWOptions adamw;
  double max_grad_norm = 1.0;  // <= 0: no clipping
  double warmup_ratio = 0.0;
  int64_t total_steps = 1;
  bool train_beta = true;
  bool latent = false;
  double latent_lr_scale = 1.0;  // the latent weights' learning rate relative to the scales'
  DadOptions dad;
  Device device;  // cpu, or the GPU the step runs on (checked available by the constructor)
  // The GPU step's products (fp32: the CPU's arithmetic up to summation order); anything but
  // fp32 on the CPU is refused by the constructor.
  ComputePrecision compute = ComputePrecision::Fp32;
};

struct FdbStepStats {
  double loss = 0;      // DAD loss, mean over positions
  double kl = 0;        // plain KL(teacher || student), mean over positions, before the update
  double weight = 0;    // mean DAD weight
  int64_t positions = 0;
  double grad_norm = 0;  // before clipping
  double lr = 0;
  // On a GPU with LOWBIT_TRAIN_PROFILE=1: the step's device seconds per phase (fdb_train_cuda.h,
  // "Phase timing") and the host's clipping, AdamW and re-binarization ("host clipping and
  // AdamW", wall time); empty otherwise.
  std::vector<PhaseSeconds> phases;
};

using FdbLinears = std::vector<std::array<QuantizedLinear, 7>>;  // [layer][LinearKind]

class FdbTrainer {
 public:
  // student: a model of the teacher's architecture whose block linears this trainer overwrites;
  // linears: every block's seven fdb weights (validated; shapes must match the model).
  FdbTrainer(LlamaModel& student, const LlamaModel& teacher, FdbLinears linears, FdbTrainOptions opt);

  // One optimizer step over the micro-batches (every position of every sequence distilled;
  // targets are ignored). A non-finite loss or gradient throws and leaves the parameters alone.
  FdbStepStats step(std::span<const Batch> micro);
  // Mean KL(teacher || student) over the batch's positions, without gradients.
  double eval_kl(const Batch& batch) const;

  const FdbLinears& linears() const { return q_; }
  // On a GPU, the most device memory held so far (bytes); 0 on the CPU.
  double peak_device_bytes() const { return gpu_ ? gpu_->peak_device_bytes() : 0.0; }
  int64_t steps_done() const { return step_; }

 private:
  std::vector<float> teacher_logits(const Batch& b) const;
  void refresh(int64_t layer);
  // One micro-batch on the CPU: galpha (and glatent when not null) += its gradients.
  DadSums cpu_micro_step(const Batch& b, double scale, FdbGradBuffers& galpha, FdbGradBuffers* glatent);

  LlamaModel& student_;
  const LlamaModel& teacher_;
  FdbLinears q_;
  FdbTrainOptions opt_;
  struct Moments {
    std::vector<float> m, v;
  };
  std::vector<std::array<Moments, 7>> alpha_m_;
  std::vector<std::array<std::vector<float>, 7>> latent_;
  std::vector<std::array<Moments, 7>> latent_m_;
  int64_t step_ = 0, warmup_ = 0;
  BaseGrads cpu_grads_;                 // the CPU step's dW (empty on a GPU)
  std::unique_ptr<FdbCudaEngine> gpu_;  // null on the CPU
};

}  // namespace lowbit::train
