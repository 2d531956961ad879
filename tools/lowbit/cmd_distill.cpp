// lowbit distill --model M --method dbllm:g=128 --calib ptb --steps N -o OUT
//
// DB-LLM end to end: the fdb initialization (the dbllm method, quant/dbllm.h), then its group
// parameters (and optionally latent weights) trained by Deviation-Aware Distillation from the
// 16-bit model on calibration windows (train/fdb_train.h), written as a quantized checkpoint
// whose metadata records the training. --steps 0 writes the initialization alone.
#include "commands.h"
#include "progress.h"

#include "backend/ops.h"
#include "core/error.h"
#include "core/process.h"
#include "quant/formats/fdb_format.h"
#include "quant/lowbit_checkpoint.h"
#include "quant/method.h"
#include "quant/quantize.h"
#include "train/fdb_train.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cmath>
#include <filesystem>

namespace lowbit::cli {

namespace {

using Clock = std::chrono::steady_clock;

struct Options {
  std::string model, method = "dbllm:g=128", out, dad = "cross";
  CalibrationFlags cal;
  int64_t steps = 100, batch = 1, grad_accum = 4;
  double lr = 1e-4, warmup_ratio = 0.0, max_grad_norm = 1.0, gamma = 1.0, latent_lr_scale = 1.0;
  bool train_beta = true, latent = false, force = false;
  int threads = 0;
};

void run(const Options& o) {
  set_num_threads(o.threads);
  const auto t0 = Clock::now();
  auto method = make_method(o.method);  // bad specs and options fail before any work
  LB_CHECK(method->spec().method() == "dbllm", "--method '{}': distill trains DB-LLM's fdb weights; give a dbllm spec",
           o.method);
  LB_CHECK(o.steps >= 0 && o.batch > 0 && o.grad_accum > 0, "--steps must be >= 0, --batch and --grad-accum positive");
  LB_CHECK(o.lr > 0 && std::isfinite(o.lr), "--lr {} must be positive", o.lr);
  LB_CHECK(o.gamma > 0, "--gamma {} must be positive", o.gamma);
  train::FdbTrainOptions topt;
  topt.dad.weight = train::parse_dad_weight(o.dad);
  topt.dad.gamma = o.gamma;
  topt.adamw.lr = o.lr;
  topt.max_grad_norm = o.max_grad_norm;
  topt.warmup_ratio = o.warmup_ratio;
  topt.total_steps = std::max<int64_t>(1, o.steps);
  topt.train_beta = o.train_beta;
  topt.latent = o.latent;
  topt.latent_lr_scale = o.latent_lr_scale;
  LB_CHECK(!std::filesystem::exists(o.out) || o.force, "output '{}' exists; remove it or pass --force", o.out);

  Checkpoint ck = open_model(o.model);
  LB_CHECK(ck.quantization.is_null(), "model '{}' is already quantized; distill starts from its 16-bit source", o.model);
  const Calibration calib = load_calibration(o.cal, ck, o.model);
  LB_CHECK(calib.nsamples >= o.batch, "--nsamples {} is fewer than one batch of {}", calib.nsamples, o.batch);
  LlamaModel teacher(std::move(ck));
  const LlamaConfig& c = teacher.config();
  method->check_shapes(c);
  fmt::print(stderr, "distill: {} with {}; data {} ({}), {} windows of {} tokens, seed {}\n", o.model,
             method->spec().resolved(), calib.set.name, calib.set.convention, calib.nsamples, calib.seqlen, calib.seed);

  // The fdb initialization, on a model of its own (quantization rewrites its blocks).
  LlamaModel qsrc(open_model(o.model));
  DriverCallbacks cb;
  QuantizedModel qm = quantize_model(qsrc, *method, method->needs_calibration() ? &calib : nullptr, cb);
  fmt::print(stderr, "fdb init: {:.1f} s\n", qm.seconds);

  train::FdbLinears lin(size_t(c.num_hidden_layers));
  for (int64_t l = 0; l < c.num_hidden_layers; ++l)
    for (LinearKind k : kAllLinears) lin[size_t(l)][size_t(k)] = *qm.blocks[size_t(l)].linear[size_t(k)];
  LlamaModel student(open_model(o.model));
  train::FdbTrainer trainer(student, teacher, std::move(lin), topt);

  auto window_batch = [&](int64_t first) {
    train::Batch b;
    b.B = o.batch;
    b.T = calib.seqlen;
    for (int64_t i = 0; i < o.batch; ++i) {
      const auto& w = calib.windows[size_t((first + i) % calib.nsamples)];
      b.tokens.insert(b.tokens.end(), w.begin(), w.end());
    }
    b.targets.assign(b.tokens.size(), 0);
    return b;
  };
  const auto t_train = Clock::now();
  nlohmann::json log = nlohmann::json::array();
  int64_t next = 0;
  for (int64_t s = 0; s < o.steps; ++s) {
    std::vector<train::Batch> micro;
    for (int64_t a = 0; a < o.grad_accum; ++a, next += o.batch) micro.push_back(window_batch(next));
    const train::FdbStepStats st = trainer.step(micro);
    log.push_back({{"step", s + 1}, {"loss", st.loss}, {"kl", st.kl}, {"weight", st.weight},
                   {"grad_norm", st.grad_norm}, {"lr", st.lr}});
    const double el = std::chrono::duration<double>(Clock::now() - t_train).count();
    fmt::print(stderr, "step {}/{}: DAD loss {:.5f}, KL {:.5f}, mean weight {:.3f}, grad norm {:.4g}, lr {:.3g}, "
               "{} elapsed, ETA {}\n", s + 1, o.steps, st.loss, st.kl, st.weight, st.grad_norm, st.lr,
               format_duration(el), format_duration(el / double(s + 1) * double(o.steps - s - 1)));
  }
  const double train_seconds = std::chrono::duration<double>(Clock::now() - t_train).count();
  for (int64_t l = 0; l < c.num_hidden_layers; ++l)
    for (LinearKind k : kAllLinears) qm.blocks[size_t(l)].linear[size_t(k)] = trainer.linears()[size_t(l)][size_t(k)];
  const nlohmann::json training = {
      {"algorithm", o.steps > 0 ? "DB-LLM: FDB + Deviation-Aware Distillation" : "none (FDB initialization only)"},
      {"steps", o.steps}, {"batch", o.batch}, {"grad_accum", o.grad_accum}, {"lr", o.lr},
      {"schedule", "constant after linear warmup"}, {"warmup_ratio", o.warmup_ratio},
      {"max_grad_norm", o.max_grad_norm}, {"optimizer", "AdamW(beta1 0.9, beta2 0.999, eps 1e-8, wd 0)"},
      {"dad_weight", train::dad_weight_name(topt.dad.weight)}, {"dad_gamma", o.gamma}, {"temperature", 1},
      {"train_beta", o.train_beta}, {"latent", o.latent}, {"latent_lr_scale", o.latent_lr_scale},
      {"data", calib.identity()}, {"windows_seen", next}, {"seconds", train_seconds}, {"log", log}};
  qm.method["training"] = training;
  const nlohmann::json extra = {{"peak_rss_bytes", peak_rss_bytes()}, {"threads", num_threads()},
                                {"device", "cpu"}, {"training", training}};
  write_quantized_checkpoint(o.out, teacher, qm, extra, o.force);
  fmt::print("wrote {}: {} steps of DAD in {:.1f} s ({:.1f} s in all), peak memory {}\n", o.out, o.steps,
             train_seconds, std::chrono::duration<double>(Clock::now() - t0).count(),
             human_bytes(double(peak_rss_bytes())));
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
  cmd->add_option("--threads", o->threads, "CPU threads (0: all cores)")->check(CLI::NonNegativeNumber);
  cmd->add_flag("--force", o->force, "replace the output directory if it exists");
  cmd->callback([o] { run(*o); });
}

}  // namespace lowbit::cli
