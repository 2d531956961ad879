// Where a training step runs: the one place that turns a Device into a forward_backward. The
// trainer (trainer.h), `lowbit finetune --device` and a study's fine-tuning cells all take a
// StepEngine from make_step_engine, so one training loop runs on either device.
//
//   cpu    llama_backward.h's forward_backward / forward_loss (everything they support)
//   cuda   llama_backward_cuda.h's CudaLlamaBackward: LoRA (with or without IEC) over a frozen
//          base only. Options it does not run (base weights' gradients, a custom logits loss)
//          throw lowbit::Error naming them; nothing moves to the CPU silently. (DB-LLM's
//          distillation, which needs both, has its own GPU engine over the same class:
//          fdb_train_cuda.h, chosen by FdbTrainOptions::device.)
#pragma once

#include "core/device.h"
#include "train/base_residency.h"
#include "train/compact_base.h"
#include "train/compute_precision.h"
#include "train/llama_backward.h"
#include "train/optimizer.h"

#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace lowbit::train {

// What a device engine holds on its device (none for the CPU).
struct EngineMemory {
  std::string base_layout;   // CompactBase::describe() of the frozen base as held
  std::optional<CompactLayout> layout;  // every linear's, when they share one (gpu_model_bytes)
  GpuModelBytes model;       // the model's part: linears, norms, head, scratch
  int64_t peak_allocated = 0;  // high-water of the process's device buffers (cuda_util.h)
  // The most the device showed in use (cudaMemGetInfo: total - free) after a step: the buffers
  // above plus the CUDA context, cuBLAS' workspaces and anything else on the device.
  int64_t peak_in_use = 0;
};

// Where a step's time went, one phase at a time (LOWBIT_TRAIN_PROFILE=1): seconds of device time
// between CUDA events, or host wall time for the host's phases.
struct PhaseSeconds {
  std::string name;
  double seconds = 0;
};

class StepEngine {
 public:
  virtual ~StepEngine() = default;
  // "cpu", or the GPU's name.
  virtual std::string name() const = 0;
  // The contracts of llama_backward.h's functions of the same names, on the engine's model.
  virtual StepResult forward_backward(const LoraAdapters* lora, const Batch& batch, const StepOptions& opt,
                                      LoraAdapters* lora_grads, BaseGrads* base_grads) = 0;
  virtual StepResult forward_loss(const LoraAdapters* lora, const Batch& batch) = 0;
  // The device memory the engine holds and has held; nullopt on the CPU.
  virtual std::optional<EngineMemory> memory() const { return std::nullopt; }
  // The precision of the step's matrix products (compute_precision.h).
  virtual ComputePrecision compute() const { return ComputePrecision::Fp32; }
  // Whether the frozen base is held expanded for the whole run (base_residency.h).
  virtual bool base_resident() const { return false; }
  // Phase timing: whether the engine times its phases (the GPU's does when the environment sets
  // LOWBIT_TRAIN_PROFILE=1; timing costs an event per phase change), and the seconds per phase
  // since the last call, in order of first appearance (then reset; empty when not timing).
  virtual bool profiling() const { return false; }
  virtual std::vector<PhaseSeconds> take_phase_seconds() { return {}; }

  // Training with the adapters held on the engine's device for the whole run (the GPU engine's,
  // for adapters without IEC's scalars): hold_adapters() uploads the adapters and AdamW's
  // moments once; each optimizer step then runs its micro-batches (held_forward_backward: the
  // gradients summed on the device, the first call of a step starting the sum), the global
  // gradient norm (fp64) and the clipped AdamW update (optimizer.h's operations, bit for bit) on
  // the device, and nothing goes up or comes down but the norm; download_held() gives the
  // current values when a caller needs them (checkpoints, evaluation, the end). While adapters are
  // held, forward_loss and forward_backward take only those adapters (the same LoraAdapters
  // object, whose host values may be stale: the device's are used), or none; release_adapters()
  // ends it. The defaults refuse (can_hold_adapters() false).
  virtual bool can_hold_adapters(const LoraAdapters& params) const;
  virtual void hold_adapters(const LoraAdapters& params, const AdamWState& state);
  virtual void release_adapters();
  virtual StepResult held_forward_backward(const Batch& batch, const StepOptions& opt, bool first_micro_batch);
  virtual double held_grad_norm();
  // Clips the step's gradient sum by clip_coefficient(grad_norm, max_grad_norm) and applies AdamW
  // at learning rate lr as optimizer step `step` (1-based).
  virtual void held_adamw_step(double grad_norm, double max_grad_norm, const AdamWOptions& opt, double lr,
                               int64_t step);
  // Each non-null argument (shaped like the held adapters) receives the device's values: the
  // adapters, AdamW's moments (not its step count), the step's gradient sum before clipping.
  virtual void download_held(LoraAdapters* params, AdamWState* state, LoraAdapters* grads);
};

// How an engine is built.
struct StepEngineOptions {
  // The precision of its products (fp32 unless asked: `lowbit finetune` chooses its device's
  // default through FinetuneOptions::compute).
  ComputePrecision compute = ComputePrecision::Fp32;
  // Whether the bf16 mode keeps its base expanded (base_residency.h), as resolve_base_residency
  // gives it for the device and precision (make_step_engine resolves it again: Auto where it does
  // not apply becomes Off, On is refused).
  BaseResidency base_resident = BaseResidency::Off;
  // Auto's `other`: the run's adapters and step buffers (gpu_adapter_bytes + gpu_step_bytes).
  int64_t other_bytes = 0;
};

// An engine for `model` (which must outlive it) on device `d` built as `o` says. Throws
// lowbit::Error when the device is not available in this build or on this machine, or does not
// run o.compute (the CPU runs fp32 only) or o.base_resident.
std::unique_ptr<StepEngine> make_step_engine(const Device& d, const LlamaModel& model, const StepEngineOptions& o);
// The same with o.compute = compute and the rest of StepEngineOptions' defaults.
std::unique_ptr<StepEngine> make_step_engine(const Device& d, const LlamaModel& model,
                                             ComputePrecision compute = ComputePrecision::Fp32);

// The CUDA engine (llama_backward_cuda.cpp; in a build without CUDA, a function that throws).
std::unique_ptr<StepEngine> make_cuda_step_engine(const Device& d, const LlamaModel& model,
                                                  const StepEngineOptions& o);

}  // namespace lowbit::train
