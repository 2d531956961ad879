#include "train/distill.h"

#include "backend/device_check.h"
#include "core/error.h"
#include "quant/method.h"
#include "train/fdb_train.h"

#include <fmt/format.h>

#include <chrono>
#include <cmath>

namespace lowbit::train {

namespace {
using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }
}  // namespace

void check_distill_options(const DistillOptions& o) {
  auto method = make_method(o.method);  // bad specs and options fail before any work
  LB_CHECK(method->spec().method() == "dbllm", "--method '{}': distill trains DB-LLM's fdb weights; give a dbllm spec",
           o.method);
  LB_CHECK(o.steps >= 0 && o.batch > 0 && o.grad_accum > 0, "--steps must be >= 0, --batch and --grad-accum positive");
  LB_CHECK(o.lr > 0 && std::isfinite(o.lr), "--lr {} must be positive", o.lr);
  LB_CHECK(o.gamma > 0, "--gamma {} must be positive", o.gamma);
  (void)parse_dad_weight(o.dad);
  (void)parse_device(o.device);
  LB_CHECK(o.data == "calib" || o.data == "generated", "--data '{}' is not one of calib, generated", o.data);
  check_gen_data_options(o.gen);
  LB_CHECK(o.data != "generated" || o.gen.nsamples >= o.batch, "--gen-nsamples {} is fewer than one batch of {}",
           o.gen.nsamples, o.batch);
  (void)distill_compute(o);
}

ComputePrecision distill_compute(const DistillOptions& o) {
  const ComputePrecision p = o.compute.empty() ? ComputePrecision::Fp32 : parse_compute_precision(o.compute);
  check_compute_precision(parse_device(o.device), p);
  return p;
}

DistillResult run_distill(const std::string& model_path, const DistillOptions& o, const Calibration* calib_in,
                          const DistillEvents& events) {
  check_distill_options(o);
  const bool generated = o.data == "generated";
  LB_CHECK(generated || calib_in != nullptr, "run_distill: data = calib needs the calibration windows");
  auto method = make_method(o.method);
  FdbTrainOptions topt;
  topt.dad.weight = parse_dad_weight(o.dad);
  topt.dad.gamma = o.gamma;
  topt.adamw.lr = o.lr;
  topt.max_grad_norm = o.max_grad_norm;
  topt.warmup_ratio = o.warmup_ratio;
  topt.total_steps = std::max<int64_t>(1, o.steps);
  topt.train_beta = o.train_beta;
  topt.latent = o.latent;
  topt.latent_lr_scale = o.latent_lr_scale;
  // The training device (parsed, so a malformed name is refused even without steps); with no
  // steps nothing trains, so the trainer stays on the host and no GPU is asked for.
  const Device train_device = parse_device(o.device);
  if (o.steps > 0) topt.device = train_device;
  // Likewise the products' precision (checked against the device by check_distill_options).
  if (o.steps > 0) topt.compute = distill_compute(o);
  LB_CHECK(generated || calib_in->nsamples >= o.batch, "--nsamples {} is fewer than one batch of {}",
           calib_in->nsamples, o.batch);
  // A GPU that this build or machine lacks is refused here, before the initialization.
  if (o.steps > 0) check_device_available(topt.device);

  LlamaModel teacher(open_model(model_path));
  LB_CHECK(teacher.checkpoint().quantization.is_null(),
           "model '{}' is already quantized; distill starts from its 16-bit source", model_path);
  const LlamaConfig& c = teacher.config();
  method->check_shapes(c);

  // Generated windows: written by the teacher (on the CPU, whatever the training device) before
  // the initialization, which calibrates on them too when it calibrates at all.
  Calibration gen;
  if (generated) {
    const auto t_gen = Clock::now();
    gen = generate_distill_data(teacher, o.gen, events.on_generate);
    if (events.on_generated) events.on_generated(since(t_gen));
  }
  const Calibration& calib = generated ? gen : *calib_in;

  // The fdb initialization, on a model of its own (quantization rewrites its blocks).
  DistillResult res;
  LlamaModel qsrc(open_model(model_path));
  DriverCallbacks cb;
  res.qm = quantize_model(qsrc, *method, method->needs_calibration() ? &calib : nullptr, cb);
  // A calibrating initialization records its data as the generation's identity: the windows'
  // Calibration::identity() names none of the sampling options that chose them.
  if (generated && method->needs_calibration()) res.qm.calibration = gen_data_identity(o.gen);
  res.init_seconds = res.qm.seconds;
  if (events.on_init) events.on_init(res.init_seconds);

  FdbLinears lin(size_t(c.num_hidden_layers));
  for (int64_t l = 0; l < c.num_hidden_layers; ++l)
    for (LinearKind k : kAllLinears) lin[size_t(l)][size_t(k)] = *res.qm.blocks[size_t(l)].linear[size_t(k)];
  LlamaModel student(open_model(model_path));
  FdbTrainer trainer(student, teacher, std::move(lin), topt);

  auto window_batch = [&](int64_t first) {
    Batch b;
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
  nlohmann::json log = nlohmann::json::array(), elapsed = nlohmann::json::array();
  int64_t next = 0;
  for (int64_t s = 0; s < o.steps; ++s) {
    std::vector<Batch> micro;
    for (int64_t a = 0; a < o.grad_accum; ++a, next += o.batch) micro.push_back(window_batch(next));
    const FdbStepStats st = trainer.step(micro);
    nlohmann::json rec = {{"step", s + 1}, {"loss", st.loss}, {"kl", st.kl}, {"weight", st.weight},
                          {"grad_norm", st.grad_norm}, {"lr", st.lr}};
    log.push_back(rec);
    const double el = since(t_train);
    elapsed.push_back(el);
    if (events.on_step)
      events.on_step({s + 1, o.steps, rec, el, el / double(s + 1) * double(o.steps - s - 1), st.phases});
  }
  res.train_seconds = since(t_train);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l)
    for (LinearKind k : kAllLinears)
      res.qm.blocks[size_t(l)].linear[size_t(k)] = trainer.linears()[size_t(l)][size_t(k)];
  res.training = {
      {"algorithm", o.steps > 0 ? "DB-LLM: FDB + Deviation-Aware Distillation" : "none (FDB initialization only)"},
      {"steps", o.steps}, {"batch", o.batch}, {"grad_accum", o.grad_accum}, {"lr", o.lr},
      {"schedule", "constant after linear warmup"}, {"warmup_ratio", o.warmup_ratio},
      {"max_grad_norm", o.max_grad_norm}, {"optimizer", "AdamW(beta1 0.9, beta2 0.999, eps 1e-8, wd 0)"},
      {"dad_weight", dad_weight_name(topt.dad.weight)}, {"dad_gamma", o.gamma}, {"temperature", 1},
      {"train_beta", o.train_beta}, {"latent", o.latent}, 
      {"device", o.steps > 0 ? device_display_name(topt.device) : "cpu"},
      {"compute", compute_precision_name(topt.compute)}, {"latent_lr_scale", o.latent_lr_scale},
      {"data", generated ? gen_data_identity(o.gen) : calib.identity()}, {"windows_seen", next},
      {"seconds", res.train_seconds}, {"log", log},
      {"elapsed", elapsed}};
  if (topt.device.is_cuda()) res.training["peak_gpu_bytes"] = trainer.peak_device_bytes();
  if (o.steps > 0 && tf32_attention(topt.compute))
    res.training["attention"] = "tf32";  // LOWBIT_TRAIN_ATTENTION=tf32
  res.qm.method["training"] = res.training;
  return res;
}

}  // namespace lowbit::train
