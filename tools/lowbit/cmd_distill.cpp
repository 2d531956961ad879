// lowbit distill --model M --method dbllm:g=128 --calib ptb --steps N -o OUT
//
// DB-LLM end to end: the fdb initialization (the dbllm method, quant/dbllm.h), then its group
// parameters (and optionally latent weights) trained by Deviation-Aware Distillation from the
// 16-bit model on calibration windows (train/fdb_train.h), written as a quantized checkpoint
// whose metadata records the training. --steps 0 writes the initialization alone. --device cuda
// runs the training steps on the GPU (train/fdb_train_cuda.h); the initialization stays on the CPU.
// --compute tf32|bf16 runs the GPU step's matrix products faster (fp32, the default, is the CPU's
// arithmetic); LOWBIT_TRAIN_PROFILE=1 prints each GPU step's time per phase.
#include "commands.h"
#include "progress.h"

#include "backend/device_check.h"
#include "backend/ops.h"
#include "core/error.h"
#include "core/process.h"
#include "quant/formats/fdb_format.h"
#include "quant/lowbit_checkpoint.h"
#include "quant/method.h"
#include "quant/quantize.h"
#include "train/distill.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <string>

namespace lowbit::cli {

namespace {

using Clock = std::chrono::steady_clock;

struct Options : train::DistillOptions {
  std::string model, out;
  CalibrationFlags cal;
  bool force = false;
  int threads = 0;
};

void run(const Options& o) {
  set_num_threads(o.threads);
  const auto t0 = Clock::now();
  train::check_distill_options(o);  // bad specs and options fail before any work
  LB_CHECK(!std::filesystem::exists(o.out) || o.force, "output '{}' exists; remove it or pass --force", o.out);
  // The training device is refused before the model and calibration are read.
  if (o.steps > 0) check_device_available(parse_device(o.device));

  Checkpoint ck = open_model(o.model);
  LB_CHECK(ck.quantization.is_null(), "model '{}' is already quantized; distill starts from its 16-bit source", o.model);
  const Calibration calib = load_calibration(o.cal, ck, o.model);
  LB_CHECK(calib.nsamples >= o.batch, "--nsamples {} is fewer than one batch of {}", calib.nsamples, o.batch);
  fmt::print(stderr, "distill: {} with {}; data {} ({}), {} windows of {} tokens, seed {}\n", o.model,
             make_method(o.method)->spec().resolved(), calib.set.name, calib.set.convention, calib.nsamples,
             calib.seqlen, calib.seed);
  if (o.steps > 0 && parse_device(o.device).is_cuda()) {
    const char* profile = std::getenv("LOWBIT_TRAIN_PROFILE");
    fmt::print(stderr, "training on {} ({} compute{})\n", o.device,
               train::compute_precision_name(train::distill_compute(o)),
               profile != nullptr && std::string(profile) == "1" ? "; timing its phases" : "");
  }
  train::DistillEvents ev;
  ev.on_init = [](double seconds) { fmt::print(stderr, "fdb init: {:.1f} s\n", seconds); };
  ev.on_step = [](const train::DistillStep& st) {
    const auto& rec = st.record;
    fmt::print(stderr, "step {}/{}: DAD loss {:.5f}, KL {:.5f}, mean weight {:.3f}, grad norm {:.4g}, lr {:.3g}, "
               "{} elapsed, ETA {}\n", st.step, st.steps, rec["loss"].get<double>(), rec["kl"].get<double>(),
               rec["weight"].get<double>(), rec["grad_norm"].get<double>(), rec["lr"].get<double>(),
               format_duration(st.elapsed), format_duration(st.eta));
    if (!st.phases.empty()) {
      double total = 0;
      for (const auto& p : st.phases) total += p.seconds;
      std::string line;
      for (const auto& p : st.phases) line += fmt::format("{}{} {:.4f} s", line.empty() ? "" : ", ", p.name, p.seconds);
      fmt::print(stderr, "step {} phases: {} (sum {:.4f} s)\n", st.step, line, total);
    }
  };
  train::DistillResult r = train::run_distill(o.model, o, calib, ev);
  LlamaModel teacher(std::move(ck));
  const nlohmann::json extra = {{"peak_rss_bytes", peak_rss_bytes()}, {"threads", num_threads()},
                                {"device", r.training["device"]}, {"training", r.training}};
  write_quantized_checkpoint(o.out, teacher, r.qm, extra, o.force);
  fmt::print("wrote {}: {} steps of DAD on {} in {:.1f} s ({:.1f} s in all), peak memory {}{}\n", o.out, o.steps,
             r.training["device"].get<std::string>(), r.train_seconds,
             std::chrono::duration<double>(Clock::now() - t0).count(), human_bytes(double(peak_rss_bytes())),
             r.training.contains("peak_gpu_bytes")
                 ? fmt::format(", peak GPU memory {}", human_bytes(r.training["peak_gpu_bytes"].get<double>()))
                 : "");
}

}  // namespace

void register_distill(CLI::App& app) {
  auto o = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand(
      "distill", "DB-LLM: fdb initialization, then Deviation-Aware Distillation of its scales from the 16-bit model");
  cmd->add_option("--model", o->model, "the 16-bit model (teacher and source)")->required();
  cmd->add_option("--method", o->method, "dbllm spec of the initialization (see `lowbit methods`)")->capture_default_str();
  cmd->add_option("-o,--output", o->out, "output directory (quantized checkpoint)")->required();
  add_calibration_options(cmd, o->cal);
  cmd->add_option("--steps", o->steps, "optimizer steps (0: write the initialization)")->capture_default_str();
  cmd->add_option("--batch", o->batch, "windows per micro-batch")->capture_default_str();
  cmd->add_option("--grad-accum", o->grad_accum, "micro-batches per optimizer step")->capture_default_str();
  cmd->add_option("--lr", o->lr, "AdamW learning rate of the scales (constant after warmup)")->capture_default_str();
  cmd->add_option("--warmup-ratio", o->warmup_ratio, "warmup steps = ceil(ratio * steps)")->capture_default_str();
  cmd->add_option("--max-grad-norm", o->max_grad_norm, "clip to this global L2 norm (0: off)")->capture_default_str();
  cmd->add_option("--dad", o->dad, "DAD weight per position: none (plain KL), teacher (H(p)), cross (H(p, q))")
      ->capture_default_str();
  cmd->add_option("--gamma", o->gamma, "exponent of the DAD weight")->capture_default_str();
  cmd->add_option("--train-beta", o->train_beta, "train the per-group offsets too (weights with offsets)")
      ->capture_default_str();
  cmd->add_option("--latent", o->latent, "also train latent fp32 weights, re-binarized every step (STE)")
      ->capture_default_str();
  cmd->add_option("--latent-lr-scale", o->latent_lr_scale, "latent weights' learning rate / the scales'")
      ->capture_default_str();
  add_device_option(cmd, o->device);
  cmd->add_option("--compute", o->compute,
                  "precision of the GPU step's matrix products: fp32 (the CPU's arithmetic; the CPU's only mode), "
                  "tf32 or bf16 (bf16 operands, fp32 accumulation; the DAD loss, group gradients and AdamW as in "
                  "fp32) [default: fp32]; LOWBIT_TRAIN_PROFILE=1 prints each GPU step's time per phase")
      ->check(CLI::IsMember({"fp32", "tf32", "bf16"}));
  cmd->add_option("--threads", o->threads, "CPU threads (0: all cores)")->check(CLI::NonNegativeNumber);
  cmd->add_flag("--force", o->force, "replace the output directory if it exists");
  cmd->callback([o] { run(*o); });
}

}  // namespace lowbit::cli
