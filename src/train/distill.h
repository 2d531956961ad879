// DB-LLM end to end, as `lowbit distill` runs it and a study's DB-LLM cells run it: the fdb
// initialization (the dbllm method, quant/dbllm.h), then its group parameters (and optionally
// latent weights) trained by Deviation-Aware Distillation from the 16-bit model on calibration
// windows (fdb_train.h). One function, so that a study cell and the command with the same
// options and calibration give the same weights, bit for bit.
#pragma once

#include "calib/calib_data.h"
#include "quant/quantize.h"
#include "train/compute_precision.h"
#include "train/step_engine.h"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <string>

namespace lowbit::train {

struct DistillOptions {
  std::string method = "dbllm:g=128";  // the initialization's dbllm spec
  std::string dad = "cross";           // DAD weight: cross, teacher, none (dad.h)
  int64_t steps = 100, batch = 1, grad_accum = 4;  // steps 0: the initialization alone
  double lr = 1e-4, warmup_ratio = 0.0, max_grad_norm = 1.0, gamma = 1.0, latent_lr_scale = 1.0;
  bool train_beta = true, latent = false;
  // Where the training steps run: "cpu" or a GPU ("cuda", "cuda:N"; fdb_train_cuda.h). The fdb
  // initialization (2-bit RTN by default) runs on the CPU either way. Not part of a study
  // cell's key: both devices compute the same step up to fp32 summation order.
  std::string device = "cpu";
  // The precision of a GPU step's matrix products (train/compute_precision.h; "" means fp32 on
  // every device, unlike fine-tuning's bf16 on a GPU: a distillation's default stays the
  // arithmetic its results and checkpoints were made with). tf32 and bf16 are GPU modes; with
  // them a study cell's key names the mode.
  std::string compute;
};

// The precision o's training steps compute in: o.compute parsed, or fp32 when it is empty.
// Throws lowbit::Error naming --compute and the device for a mode the device does not run.
ComputePrecision distill_compute(const DistillOptions& o);

// Throws lowbit::Error naming the option for values no run can take (a method that is not
// dbllm, steps < 0, lr <= 0, an unknown DAD weight, a device string that names no device, ...).
// Whether the device is present is checked by run_distill before any work.
void check_distill_options(const DistillOptions& o);

struct DistillStep {
  int64_t step = 0, steps = 0;  // step: 1-based
  nlohmann::json record;        // {"step", "loss", "kl", "weight", "grad_norm", "lr"}
  double elapsed = 0, eta = 0;  // seconds
  std::vector<PhaseSeconds> phases;  // where the step's time went (LOWBIT_TRAIN_PROFILE=1 on a GPU), else empty
};

struct DistillEvents {
  std::function<void(double seconds)> on_init;  // the fdb initialization is done
  std::function<void(const DistillStep&)> on_step;
};

struct DistillResult {
  // The trained fdb model; its method JSON holds "training" (every option, the data's identity,
  // the loss log, "elapsed": the seconds from the first step's start to each step's end, the
  // device, "compute" (the products' precision) and, on a GPU, "peak_gpu_bytes").
  QuantizedModel qm;
  nlohmann::json training;
  double init_seconds = 0, train_seconds = 0;
};

// Runs the initialization and `o.steps` steps of DAD on `model_path` (a 16-bit model: teacher
// and source) with the windows of `calib`.
DistillResult run_distill(const std::string& model_path, const DistillOptions& o, const Calibration& calib,
                          const DistillEvents& events = {});

}  // namespace lowbit::train
