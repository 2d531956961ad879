// LoRA fine-tuning end to end, as `lowbit finetune` runs it and a study's LoRA-FT cells run it:
// the instruction data read and tokenized, the frozen base loaded (and quantized, for QLoRA and
// IR-QLoRA), the adapters trained step by step, optionally checkpointed. One function, so that a
// study cell and the command with the same options give the same adapters, byte for byte.
#pragma once

#include "model/llama_model.h"
#include "train/lora.h"
#include "train/step_engine.h"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

namespace lowbit::train {

// A fine-tuning method spec: "qlora:..." (the base quantized with NF4 + double quantization,
// QLoRA's frozen base), "irqlora:..." (IR-QLoRA: the base quantized with ICQ,
// icq:tau_range=0.1,tau_n=100,dq=1 as its training script, and IEC's two scalars per adapted
// linear) or "lora:..." (the base as loaded), with r, alpha, dropout, targets (all, or names
// joined by '+', e.g. q_proj+v_proj) and iec (0 or 1; irqlora's default 1, the others' 0).
struct FinetuneMethod {
  std::string name, base_spec;  // base_spec empty: the base as loaded
  LoraConfig lora;
  // {"name", "base", "r", "alpha", "dropout", "targets", ["iec": true]}: the run's identity.
  nlohmann::json json() const;
  // "r=64,alpha=16,dropout=0,targets=all,iec=0": every LoRA option, defaults included.
  std::string canonical_options() const;
};

// Throws lowbit::Error naming the spec for an unknown method, option or value.
FinetuneMethod parse_finetune_method(const std::string& spec);

struct FinetuneOptions {
  std::string model, method = "qlora:r=64,alpha=16", data, spm = "auto";
  int64_t steps = 100, batch = 1, grad_accum = 16, source_max = 384, target_max = 128, eval_size = 0,
          eval_every = 0, limit = 0;
  double lr = 2e-4, warmup_ratio = 0.03, max_grad_norm = 0.3, weight_decay = 0.0, beta1 = 0.9, beta2 = 0.999,
         adam_eps = 1e-8;
  uint64_t seed = 0, data_seed = 42;
  // Checkpointing: out empty, none. A checkpoint (adapters, AdamW state, loss log) goes to
  // OUT/checkpoint every save_every steps and at the end; resume continues the one there (the
  // same options, checked); stop_after > 0 stops after that many steps of this call.
  std::string out;
  int64_t save_every = 50, stop_after = 0;
  bool resume = false;
  // Start from this PEFT adapter directory's A and B (and IEC scalars when it holds them) instead
  // of the seeded init; its r, alpha and targets must be the method's (load_init_adapter). Part
  // of the run's identity (its path and the SHA-256 of its tensors).
  std::string init_adapter;
  // Outside references of the same training; neither changes the result.
  // save_batches: a JSON-lines file, written before the first step, with every micro-batch of the
  // whole run in the order training reads them, one per line:
  //   {"step": s (1-based), "micro": a (0-based), "tokens": [[id, ...] x batch], "targets": [[...]]}
  // tokens right-padded to the micro-batch's longest sequence; targets[b][t] is the token that
  // position t predicts (tokens[b][t+1] inside the response), -100 where no loss is taken.
  // dump_grads: a safetensors file with the gradient of the first step this call runs, before
  // clipping (of the mean loss over the step's target tokens), under PEFT's parameter names.
  std::string save_batches, dump_grads;
  // Where the steps run: "cpu", "cuda" or "cuda:N" (step_engine.h); the base is loaded and
  // quantized on the host either way. Part of the run's identity when it is not the CPU.
  std::string device = "cpu";
  // The precision of the steps' matrix products (compute_precision.h): "fp32", "tf32", "bf16", or
  // empty for the device's default (bf16 on a GPU, fp32 on the CPU, which takes nothing else).
  // Part of the run's identity when it is not fp32.
  std::string compute;
  // Whether the bf16 mode keeps its base expanded for the run (base_residency.h): "auto", "on" or
  // "off". auto is off on the CPU and for fp32 or tf32 compute; on is refused there. Not part of
  // the run's identity: a resident base gives the same numbers bit for bit, so a run may resume
  // with another choice. The choice made is recorded in the summary (base_resident).
  std::string base_resident = "auto";
};

// Throws lowbit::Error for options no run can take (non-positive steps, batch, ..., a device
// string that names no device, a --compute the device does not run, a --base-resident that is
// not auto, on or off, or on where it does not apply).
void check_finetune_options(const FinetuneOptions& o);

// The precision run_finetune computes in: o.compute on o.device, or the device's default.
ComputePrecision finetune_compute(const FinetuneOptions& o);

// What run_finetune asks of its engine for the base (resolve_base_residency of o.base_resident on
// o.device at finetune_compute(o)): Off, On, or Auto for the engine to decide.
BaseResidency finetune_base_residency(const FinetuneOptions& o);

struct FinetuneStep {
  int64_t step = 0, steps = 0;  // step: 1-based
  nlohmann::json record;        // {"step", "loss", "lr", "grad_norm", "targets", "tokens"[, "eval_loss"]}
  double tokens_per_second = 0, eta_seconds = 0;
  std::vector<PhaseSeconds> phases;  // where the step's time went (LOWBIT_TRAIN_PROFILE=1), else empty
};

struct FinetuneEvents {
  std::function<void(const std::string&)> on_note;  // one line of what happens (data, base, resume)
  std::function<void(const FinetuneStep&)> on_step;
};

struct FinetuneResult {
  // The frozen base the adapters were trained over (quantized in memory for qlora and irqlora,
  // its quantized forward installed); the adapters are not merged into it.
  std::unique_ptr<LlamaModel> model;
  LoraAdapters adapters;
  // What lowbit_adapter.json records: {"base", "run" (every option), "compute" (the products'
  // precision, also in "run" when it is not fp32), "base_resident" (true: the bf16 base was held
  // expanded for the run, base_residency.h), "optimizer" ("device": AdamW ran on the GPU
  // with the adapters held there, trainer.h; "host" otherwise), "log" (one record per step),
  // "peak_rss_bytes", "train_seconds", "step_seconds" (wall time of each step of this
  // call), "tokens_this_call", "tokens_per_second" (theirs over the steps' time)[,
  // "base_quantization"][, "eval_loss"][, "gpu_memory"]}. gpu_memory (on a GPU): {"device",
  // "base_layout", "model_bytes" and "model_bytes_predicted" ({"linears", "norms", "head",
  // "scratch", "resident", "total"}: as allocated, and gpu_model_bytes()' for the configuration
  // and layout),
  // "adapter_bytes" (gpu_adapter_bytes() at the longest micro-batch), "peak_allocated_bytes" (the
  // device buffers' high-water), "peak_in_use_bytes" (cudaMemGetInfo's total - free after a step,
  // the CUDA context and cuBLAS' workspaces included)}.
  nlohmann::json summary;
  bool finished = true;  // false: stopped by stop_after before the last step
  double quantize_seconds = 0;  // the base's quantization (0 for lora)
  double train_seconds = 0;     // the optimizer steps of this call
};

// Runs the fine-tuning. The data is read before the model is loaded, and the LoRA configuration
// checked against the model before the base is quantized, so that bad input fails before any
// work.
FinetuneResult run_finetune(const FinetuneOptions& o, const FinetuneEvents& events = {});

}  // namespace lowbit::train
