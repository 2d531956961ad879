// One LoRA optimizer step at a time over a frozen base model: gradient accumulation over
// micro-batches, clipping, the warmup schedule and AdamW (optimizer.h).
//
// Accumulation follows transformers' Trainer (num_items_in_batch): each micro-batch's summed
// target-token loss is divided by the number of target tokens in the whole accumulated batch, so
// the step's gradient is that of the mean loss over all its target tokens, however the tokens
// fall into micro-batches.
#pragma once

#include "train/llama_backward.h"
#include "train/optimizer.h"
#include "train/step_engine.h"

#include <memory>
#include <span>
#include <vector>

namespace lowbit::train {

struct TrainOptions {
  AdamWOptions adamw;
  double warmup_ratio = 0.03;
  double max_grad_norm = 0.3;  // <= 0: no clipping
  int64_t total_steps = 1;     // for the warmup's length
  uint64_t dropout_seed = 0;
  // When the engine can hold the adapters on its device (StepEngine::can_hold_adapters: the GPU
  // engine, adapters without IEC's scalars), they, their gradient sum and AdamW's moments stay
  // there for the whole run: no upload or download per step, the clipping and AdamW on the
  // device (the host's operations; the global norm's fp64 sum in another order). false: AdamW
  // on the host, the adapters going up and their gradients coming down every step.
  bool optimizer_on_device = true;
};

struct StepStats {
  double loss = 0;         // mean over the step's target tokens
  int64_t targets = 0;     // target tokens in the step
  int64_t tokens = 0;      // all tokens processed (padding included)
  double grad_norm = 0;    // before clipping
  double lr = 0;           // the learning rate applied
  // When the engine times its phases (StepEngine::profiling): its device phases over the step's
  // micro-batches (with the device's AdamW when it holds the adapters), then "host AdamW" (the
  // host's gradient clipping and AdamW update, wall time) when the host runs it.
  std::vector<PhaseSeconds> phases;
};

class LoraTrainer {
 public:
  // engine: where the forward and backward run (step_engine.h; it must outlive the trainer);
  // null: on the CPU.
  LoraTrainer(const LlamaModel& model, LoraAdapters init, TrainOptions opt, StepEngine* engine = nullptr);
  ~LoraTrainer();
  LoraTrainer(const LoraTrainer&) = delete;
  LoraTrainer& operator=(const LoraTrainer&) = delete;

  // One optimizer step over the micro-batches (their gradients accumulated). A non-finite loss
  // or gradient norm throws lowbit::Error and leaves the adapters and optimizer state as they
  // were before the step. `gradient`, when given, receives the step's gradient before clipping
  // (of the mean loss over the step's target tokens; shaped like the adapters).
  StepStats step(std::span<const Batch> micro, LoraAdapters* gradient = nullptr);

  // The current adapters and AdamW state (downloaded first when the engine holds them and they
  // changed since the last call).
  const LoraAdapters& adapters() const;
  const AdamWState& optimizer_state() const;
  // Whether the engine holds the adapters and AdamW's moments (TrainOptions::optimizer_on_device).
  bool optimizer_on_device() const { return held_; }
  const TrainOptions& options() const { return opt_; }
  int64_t steps_done() const { return state_.step; }
  // Continues from a saved state (checkpoint.h): the adapters and AdamW's moments and step.
  void restore(LoraAdapters params, AdamWState state);

 private:
  const LlamaModel& model_;
  std::unique_ptr<StepEngine> own_engine_;  // the CPU's, when none is given
  StepEngine* engine_ = nullptr;
  // With held_, the engine's values are the current ones: params_ and state_'s moments are
  // refreshed from it when stale (adapters(), optimizer_state()).
  mutable LoraAdapters params_;
  LoraAdapters grads_;
  mutable AdamWState state_;
  bool held_ = false;
  mutable bool host_stale_ = false;
  void hold();
  void sync() const;
  StepStats step_on_device(std::span<const Batch> micro, LoraAdapters* gradient, StepStats st);
  // What both kinds of step share: micro-batch i's dropout seed in this step, and the stop on a
  // non-finite loss or gradient norm (before the update, so the last good adapters stay).
  uint64_t dropout_seed(size_t micro_batch) const;
  void check_finite(const StepStats& st) const;
  TrainOptions opt_;
  int64_t warmup_ = 0;
};

}  // namespace lowbit::train
