#include "train/finetune.h"

#include "backend/device_check.h"
#include "core/error.h"
#include "core/hash.h"
#include "core/process.h"
#include "formats/tokenizer.h"
#include "quant/lowbit_checkpoint.h"
#include "quant/method.h"
#include "quant/quantize.h"
#include "quant/quantized_in_memory.h"
#include "train/adapter_io.h"
#include "train/instruct_data.h"
#include "train/step_engine.h"
#include "train/train_checkpoint.h"
#include "train/trainer.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>

namespace lowbit::train {

namespace {
using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// FinetuneOptions::save_batches' file, written to a temporary and renamed.
template <typename MicroBatches>
void write_batches_jsonl(const std::string& path, int64_t steps, MicroBatches&& micro_batches) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    LB_CHECK(out.good(), "--save-batches: cannot write '{}'", tmp);
    for (int64_t s = 0; s < steps; ++s) {
      const std::vector<Batch> micro = micro_batches(s);
      for (size_t a = 0; a < micro.size(); ++a) {
        const Batch& b = micro[a];
        nlohmann::json tokens = nlohmann::json::array(), targets = nlohmann::json::array();
        for (int64_t i = 0; i < b.B; ++i) {
          tokens.push_back(std::vector<int32_t>(b.tokens.begin() + i * b.T, b.tokens.begin() + (i + 1) * b.T));
          targets.push_back(std::vector<int32_t>(b.targets.begin() + i * b.T, b.targets.begin() + (i + 1) * b.T));
        }
        out << nlohmann::json{{"step", s + 1}, {"micro", a}, {"tokens", tokens}, {"targets", targets}}.dump() << "\n";
      }
    }
    out.flush();
    LB_CHECK(out.good(), "--save-batches: failed writing '{}' (disk full?)", tmp);
  }
  std::filesystem::rename(tmp, path);
}

}  // namespace

nlohmann::json FinetuneMethod::json() const {
  std::vector<std::string> t;
  for (LinearKind k : kAllLinears)
    if (lora.targets_kind(k)) t.emplace_back(linear_name(k));
  nlohmann::json j = {{"name", name}, {"base", base_spec.empty() ? "as loaded" : base_spec}, {"r", lora.r},
                      {"alpha", lora.alpha}, {"dropout", lora.dropout}, {"targets", t}};
  // Only when on: the identity of a run without IEC stays what it was before IEC existed, so
  // that such a run still resumes.
  if (lora.iec) j["iec"] = true;
  return j;
}

std::string FinetuneMethod::canonical_options() const {
  std::vector<std::string> t;
  bool all = true;
  for (LinearKind k : kAllLinears) {
    if (lora.targets_kind(k)) t.emplace_back(linear_name(k));
    all = all && lora.targets_kind(k);
  }
  return fmt::format("r={},alpha={},dropout={},targets={},iec={}", lora.r, lora.alpha, lora.dropout,
                     all ? std::string("all") : fmt::format("{}", fmt::join(t, "+")), lora.iec ? 1 : 0);
}

FinetuneMethod parse_finetune_method(const std::string& spec) {
  FinetuneMethod m;
  const auto colon = spec.find(':');
  m.name = spec.substr(0, colon);
  LB_CHECK(m.name == "qlora" || m.name == "irqlora" || m.name == "lora",
           "--method '{}': unknown fine-tuning method '{}' (known: qlora, irqlora, lora)", spec, m.name);
  if (m.name == "qlora" || m.name == "irqlora") {
    m.base_spec = m.name == "qlora" ? "nf4:dq=1" : "icq:tau_range=0.1,tau_n=100,dq=1";
    m.lora.r = 64;
    m.lora.alpha = 16;
    m.lora.iec = m.name == "irqlora";
  }
  if (colon == std::string::npos) return m;
  std::string rest = spec.substr(colon + 1);
  size_t pos = 0;
  while (pos <= rest.size() && !rest.empty()) {
    const size_t comma = rest.find(',', pos);
    const std::string kv = rest.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
    const auto eq = kv.find('=');
    LB_CHECK(eq != std::string::npos, "--method '{}': '{}' is not key=value", spec, kv);
    const std::string k = kv.substr(0, eq), v = kv.substr(eq + 1);
    try {
      if (k == "r") {
        m.lora.r = std::stoll(v);
      } else if (k == "alpha") {
        m.lora.alpha = std::stod(v);
      } else if (k == "dropout") {
        m.lora.dropout = std::stod(v);
      } else if (k == "targets") {
        if (v == "all") {
          m.lora.targets.fill(true);
        } else {
          m.lora.targets.fill(false);
          size_t p = 0;
          while (p <= v.size()) {
            const size_t plus = v.find('+', p);
            m.lora.targets[size_t(lora_target_kind(v.substr(p, plus == std::string::npos ? plus : plus - p)))] = true;
            if (plus == std::string::npos) break;
            p = plus + 1;
          }
        }
      } else if (k == "iec") {
        LB_CHECK(v == "0" || v == "1", "--method '{}': iec must be 0 or 1, got '{}'", spec, v);
        m.lora.iec = v == "1";
      } else {
        LB_CHECK(false, "--method '{}': unknown option '{}' (known: r, alpha, dropout, targets, iec)", spec, k);
      }
    } catch (const std::logic_error&) {
      LB_CHECK(false, "--method '{}': '{}' is not a number for '{}'", spec, v, k);
    }
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }
  LB_CHECK(m.lora.r > 0, "--method '{}': r must be positive", spec);
  LB_CHECK(m.lora.dropout >= 0 && m.lora.dropout < 1, "--method '{}': dropout must be in [0, 1)", spec);
  return m;
}

void check_finetune_options(const FinetuneOptions& o) {
  (void)parse_finetune_method(o.method);
  (void)parse_device(o.device);
  LB_CHECK(o.steps > 0 && o.batch > 0 && o.grad_accum > 0, "--steps, --batch and --grad-accum must be positive");
  LB_CHECK(o.source_max > 0 && o.target_max > 0, "--source-max-len and --target-max-len must be positive");
  LB_CHECK(o.lr > 0 && std::isfinite(o.lr), "--lr {} must be positive", o.lr);
  LB_CHECK(o.eval_size >= 0 && o.limit >= 0, "--eval-size and --limit must be 0 or more");
  (void)finetune_compute(o);
  (void)finetune_base_residency(o);
}

ComputePrecision finetune_compute(const FinetuneOptions& o) {
  return resolve_compute_precision(parse_device(o.device), o.compute);
}

BaseResidency finetune_base_residency(const FinetuneOptions& o) {
  return resolve_base_residency(parse_device(o.device), finetune_compute(o), parse_base_residency(o.base_resident));
}

FinetuneResult run_finetune(const FinetuneOptions& o, const FinetuneEvents& ev) {
  auto note = [&](const std::string& s) {
    if (ev.on_note) ev.on_note(s);
  };
  const auto t_start = Clock::now();
  const FinetuneMethod method = parse_finetune_method(o.method);
  check_finetune_options(o);
  const Device device = parse_device(o.device);
  const ComputePrecision compute = finetune_compute(o);
  check_device_available(device);

  // Data first: bad records fail before the model is loaded or quantized.
  const auto records = read_alpaca_json(o.data);
  Checkpoint source = open_model(o.model);
  // Before the base is quantized: IEC's rank must divide the adapted linears.
  check_lora_config(source.config, method.lora);
  // The adapter to start from, if any: its shapes and configuration are checked here too.
  LoraAdapters given;
  if (!o.init_adapter.empty()) given = load_init_adapter(o.init_adapter, source.config, method.lora);
  LB_CHECK(!source.tokenizer_path.empty(), "model '{}' has no tokenizer beside it", o.model);
  TokenizerOptions topt;
  topt.spm = parse_spm_convention(o.spm);
  auto tok = load_tokenizer(source.tokenizer_path, topt);
  const int64_t n_records = o.limit > 0 ? std::min<int64_t>(o.limit, int64_t(records.size())) : int64_t(records.size());
  std::vector<InstructExample> examples;
  examples.reserve(size_t(n_records));
  int64_t src_trunc = 0, tgt_trunc = 0;
  for (int64_t i = 0; i < n_records; ++i) {
    examples.push_back(tokenize_example(*tok, records[size_t(i)], {o.source_max, o.target_max}));
    src_trunc += examples.back().source_truncated;
    tgt_trunc += examples.back().target_truncated;
  }
  const Split split = split_indices(n_records, o.eval_size, o.data_seed);
  LB_CHECK(!split.train.empty(), "'{}': no records left to train on ({} records, {} held out)", o.data, n_records,
           split.held_out.size());
  const int32_t pad = tok->eos_id().value_or(0);  // never seen by the loss
  note(fmt::format("finetune: {} records of {} ({} held out); truncated to {}/{} tokens: {} sources, {} targets",
                   n_records, o.data, split.held_out.size(), o.source_max, o.target_max, src_trunc, tgt_trunc));

  FinetuneResult res;
  const std::string weights_sha = weights_sha256(source);
  if (method.base_spec.empty()) {
    res.model = std::make_unique<LlamaModel>(std::move(source));
  } else {
    LB_CHECK(source.quantization.is_null(), "--method {} quantizes the base; model '{}' is already quantized",
             method.name, o.model);
    auto qmethod = make_method(method.base_spec);
    const auto tq = Clock::now();
    LlamaModel work(source);
    QuantizedModel qm = quantize_model(work, *qmethod, nullptr, {});
    const nlohmann::json source_id = {{"path", o.model}, {"format", source.format}, {"sha256", weights_sha}};
    res.model = std::make_unique<LlamaModel>(quantized_checkpoint_in_memory(source, std::move(qm), source_id));
    res.quantize_seconds = since(tq);
    note(fmt::format("base: {} quantized with {} in {:.1f} s (frozen)", o.model, method.base_spec,
                     res.quantize_seconds));
  }
  LlamaModel& model = *res.model;
  install_quantized_forward(model);
  // The training forward reads the (dequantized) weights only; it has no activation quantization.
  LB_CHECK(model.forward_hooks() == nullptr,
           "model '{}' quantizes activations; fine-tuning runs weight-only quantized bases", o.model);
  const LlamaConfig& c = model.config();
  LoraAdapters init = o.init_adapter.empty() ? LoraAdapters::peft_init(c, method.lora, o.seed) : std::move(given);
  if (!o.init_adapter.empty()) check_adapter_base(o.init_adapter, model, weights_sha);

  // Everything that changes the result; a resumed run must match it.
  nlohmann::json run_id = {
      {"model", o.model},           {"weights_sha256", weights_sha},  {"method", method.json()},
      {"data", o.data},             {"data_sha256", sha256_file(o.data)}, {"records", n_records},
      {"held_out", o.eval_size},    {"source_max_len", o.source_max}, {"target_max_len", o.target_max},
      {"steps", o.steps},           {"batch", o.batch},               {"grad_accum", o.grad_accum},
      {"lr", o.lr},                 {"warmup_ratio", o.warmup_ratio}, {"max_grad_norm", o.max_grad_norm},
      {"weight_decay", o.weight_decay}, {"adam_betas", {o.beta1, o.beta2}}, {"adam_eps", o.adam_eps},
      {"seed", o.seed},             {"data_seed", o.data_seed}};
  // Only off the CPU: a CPU run keeps the identity it had before the option.
  if (device.is_cuda()) run_id["device"] = device_kind_name(device.kind);
  // Only off fp32: an fp32 run (every CPU run) keeps the identity it had before the option.
  if (compute != ComputePrecision::Fp32) run_id["compute"] = compute_precision_name(compute);
  // Only when asked (LOWBIT_TRAIN_ATTENTION=tf32 in a fast mode): other runs keep their identity.
  if (tf32_attention(compute)) run_id["attention"] = "tf32";
  // Only when given: a run from the seeded init keeps the identity it had before the option.
  if (!o.init_adapter.empty())
    run_id["init_adapter"] = {{"path", o.init_adapter},
                              {"sha256", sha256_file(o.init_adapter + "/adapter_model.safetensors")}};

  TrainOptions topts;
  topts.adamw = {o.lr, o.beta1, o.beta2, o.adam_eps, o.weight_decay};
  topts.warmup_ratio = o.warmup_ratio;
  topts.max_grad_norm = o.max_grad_norm;
  topts.total_steps = o.steps;
  topts.dropout_seed = o.seed;
  StepEngineOptions eopts;
  eopts.compute = compute;
  eopts.base_resident = finetune_base_residency(o);
  // auto's `other`: the adapters (held, with their moments) and a step's buffers at the longest
  // micro-batch.
  eopts.other_bytes = gpu_adapter_bytes(c, method.lora.r, method.lora.targets, o.batch * (o.source_max + o.target_max),
                                        compute, true) +
                      gpu_step_bytes(c, o.batch, o.source_max + o.target_max, compute);
  const std::unique_ptr<StepEngine> engine = make_step_engine(device, model, eopts);
  if (device.is_cuda())
    note(fmt::format("training on {} ({} compute: {}{})", engine->name(), compute_precision_name(compute),
                     engine->base_resident() ? "the base expanded into bf16 once and kept (--base-resident "
                                               + std::string(base_residency_name(eopts.base_resident)) + ")"
                     : compute == ComputePrecision::Bf16 ? "the base expanded per block and step"
                                                         : "the base expanded per linear",
                     engine->profiling() ? "; timing its phases" : ""));
  const std::optional<EngineMemory> mem0 = engine->memory();
  if (mem0) {
    constexpr double GiB = double(int64_t(1) << 30);
    const GpuModelBytes& m = mem0->model;
    note(fmt::format("GPU holds the model in {:.2f} GiB: base {} {:.2f} GiB{}, norms {:.3f} GiB, LM head {:.2f} "
                     "GiB, scratch {:.2f} GiB (embedding on the host)",
                     double(m.total()) / GiB, mem0->base_layout, double(m.linears) / GiB,
                     m.resident > 0 ? fmt::format(" (dropped), resident bf16 base {:.2f} GiB", double(m.resident) / GiB)
                                    : std::string(),
                     double(m.norms) / GiB, double(m.head) / GiB, double(m.scratch) / GiB));
    if (mem0->layout)
      note(fmt::format("gpu_model_bytes() for this configuration and layout: {:.2f} GiB",
                       double(gpu_model_bytes(c, *mem0->layout, compute, engine->base_resident()).total()) / GiB));
  }
  LoraTrainer trainer(model, std::move(init), topts, engine.get());
  if (device.is_cuda())
    note(trainer.optimizer_on_device()
             ? "AdamW on the device: the adapters, their gradients and the moments stay there for the run"
             : "AdamW on the host (adapters with IEC's scalars): the adapters go up and the gradients come down "
               "every step");
  nlohmann::json log = nlohmann::json::array();
  const std::string ckdir = o.out.empty() ? std::string() : o.out + "/checkpoint";
  if (o.resume) {
    LB_CHECK(!ckdir.empty(), "--resume needs an output directory");
    auto ck = load_train_checkpoint(ckdir, c, run_id);
    LB_CHECK(ck.has_value(), "--resume: no checkpoint in '{}'", ckdir);
    LB_CHECK(ck->params.config.r == method.lora.r, "--resume: the checkpoint's rank is {}, --method's {}",
             ck->params.config.r, method.lora.r);
    LB_CHECK(ck->params.config.iec == method.lora.iec, "--resume: the checkpoint's adapters {} IEC scalars, --method "
             "'{}' {}", ck->params.config.iec ? "have" : "lack", o.method, method.lora.iec ? "has them" : "does not");
    ck->params.config = method.lora;
    trainer.restore(std::move(ck->params), std::move(ck->state));
    log = ck->log;
    note(fmt::format("resumed from '{}' at step {}", ckdir, trainer.steps_done()));
  }
  note(fmt::format("LoRA r={} alpha={} dropout={}{} on {} ({} trainable parameters); {} steps x {} x {} sequences, "
                   "lr {} (warmup {} steps), max grad norm {}, {} threads",
                   method.lora.r, method.lora.alpha, method.lora.dropout, method.lora.iec ? " + IEC" : "",
                   method.json()["targets"].dump(), trainer.adapters().num_parameters(), o.steps, o.batch,
                   o.grad_accum, o.lr, warmup_steps(o.warmup_ratio, o.steps), o.max_grad_norm, num_threads()));

  const int64_t ntrain = int64_t(split.train.size());
  int64_t cached_epoch = -1;
  std::vector<int64_t> order;
  auto example_at = [&](int64_t cursor) -> const InstructExample* {
    const int64_t epoch = cursor / ntrain;
    if (epoch != cached_epoch) {
      order = epoch_order(split.train, o.data_seed, epoch);
      cached_epoch = epoch;
    }
    return &examples[size_t(order[size_t(cursor % ntrain)])];
  };
  auto eval_loss = [&]() {
    double sum = 0;
    int64_t n = 0;
    for (size_t i = 0; i < split.held_out.size(); i += size_t(o.batch)) {
      std::vector<const InstructExample*> part;
      for (size_t j = i; j < std::min(split.held_out.size(), i + size_t(o.batch)); ++j)
        part.push_back(&examples[size_t(split.held_out[j])]);
      const auto r = engine->forward_loss(&trainer.adapters(), make_batch(part, pad));
      sum += r.loss_sum;
      n += r.num_targets;
    }
    return n ? sum / double(n) : NAN;
  };

  auto micro_batches = [&](int64_t s) {
    std::vector<Batch> micro;
    for (int64_t a = 0; a < o.grad_accum; ++a) {
      std::vector<const InstructExample*> part;
      for (int64_t b = 0; b < o.batch; ++b) part.push_back(example_at((s * o.grad_accum + a) * o.batch + b));
      micro.push_back(make_batch(part, pad));
    }
    return micro;
  };
  if (!o.save_batches.empty()) {
    write_batches_jsonl(o.save_batches, o.steps, micro_batches);
    note(fmt::format("wrote the {} steps' batches to '{}'", o.steps, o.save_batches));
  }

  const auto t_loop = Clock::now();
  const int64_t first = trainer.steps_done();
  int64_t tokens_run = 0;
  int64_t done_this_run = 0;
  std::vector<double> step_seconds;  // of this call's steps
  for (int64_t s = first; s < o.steps; ++s) {
    const auto t_step = Clock::now();
    const std::vector<Batch> micro = micro_batches(s);
    const bool dump = !o.dump_grads.empty() && done_this_run == 0;
    LoraAdapters grad;
    const StepStats st = trainer.step(micro, dump ? &grad : nullptr);
    if (dump) {
      save_lora_tensors(o.dump_grads, grad);
      note(fmt::format("wrote step {}'s gradient (before clipping) to '{}'", s + 1, o.dump_grads));
    }
    tokens_run += st.tokens;
    ++done_this_run;
    step_seconds.push_back(since(t_step));
    const double elapsed = since(t_loop);
    nlohmann::json rec = {{"step", s + 1}, {"loss", st.loss}, {"lr", st.lr}, {"grad_norm", st.grad_norm},
                          {"targets", st.targets}, {"tokens", st.tokens}};
    if (o.eval_every > 0 && !split.held_out.empty() && (s + 1) % o.eval_every == 0) rec["eval_loss"] = eval_loss();
    log.push_back(rec);
    if (ev.on_step)
      ev.on_step({s + 1, o.steps, rec, double(tokens_run) / elapsed,
                  elapsed / double(done_this_run) * double(o.steps - s - 1), st.phases});
    const bool last = s + 1 == o.steps;
    const bool stop = o.stop_after > 0 && done_this_run == o.stop_after;
    if (!ckdir.empty() && (last || stop || (o.save_every > 0 && (s + 1) % o.save_every == 0)))
      save_train_checkpoint(ckdir, trainer.adapters(), trainer.optimizer_state(), run_id, log);
    if (stop && !last) {
      res.finished = false;
      break;
    }
  }
  res.train_seconds = since(t_loop);
  res.summary = {{"base", base_identity(model, weights_sha)}, {"run", run_id},
                 {"compute", compute_precision_name(compute)}, {"base_resident", engine->base_resident()},
                 {"optimizer", trainer.optimizer_on_device() ? "device" : "host"}, {"log", log},
                 {"peak_rss_bytes", peak_rss_bytes()}, {"train_seconds", since(t_start)},
                 {"step_seconds", step_seconds}, {"tokens_this_call", tokens_run},
                 {"tokens_per_second", res.train_seconds > 0 ? double(tokens_run) / res.train_seconds : 0.0}};
  if (!method.base_spec.empty()) res.summary["base_quantization"] = method.base_spec;
  if (res.finished && !split.held_out.empty()) res.summary["eval_loss"] = eval_loss();
  if (const auto mem = engine->memory()) {
    const auto bytes_json = [](const GpuModelBytes& b) {
      return nlohmann::json{{"linears", b.linears}, {"norms", b.norms},       {"head", b.head},
                            {"scratch", b.scratch}, {"resident", b.resident}, {"total", b.total()}};
    };
    nlohmann::json g = {{"device", engine->name()},
                        {"base_layout", mem->base_layout},
                        {"model_bytes", bytes_json(mem->model)},
                        {"adapter_bytes", gpu_adapter_bytes(c, method.lora.r, method.lora.targets,
                                                            o.batch * (o.source_max + o.target_max), compute,
                                                            trainer.optimizer_on_device())},
                        {"peak_allocated_bytes", mem->peak_allocated},
                        {"peak_in_use_bytes", mem->peak_in_use}};
    if (mem->layout)
      g["model_bytes_predicted"] = bytes_json(gpu_model_bytes(c, *mem->layout, compute, engine->base_resident()));
    res.summary["gpu_memory"] = g;
  }
  res.adapters = trainer.adapters();
  return res;
}

}  // namespace lowbit::train
