// lowbit finetune --model M --method 'qlora:r=64,alpha=16' --data alpaca.json --steps N -o OUT
#include "commands.h"
#include "progress.h"

#include "backend/ops.h"
#include "core/error.h"
#include "core/hash.h"
#include "core/process.h"
#include "formats/tokenizer.h"
#include "model/llama_model.h"
#include "quant/lowbit_checkpoint.h"
#include "quant/quantize.h"
#include "quant/quantized_in_memory.h"
#include "train/adapter_io.h"
#include "train/instruct_data.h"
#include "train/train_checkpoint.h"
#include "train/trainer.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>

namespace lowbit::cli {

namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

struct Options {
  std::string model, method = "qlora:r=64,alpha=16", data, out, spm = "auto";
  int64_t steps = 100, batch = 1, grad_accum = 16, source_max = 384, target_max = 128, eval_size = 0,
          eval_every = 0, save_every = 50, stop_after = 0, limit = 0;
  double lr = 2e-4, warmup_ratio = 0.03, max_grad_norm = 0.3, weight_decay = 0.0, beta1 = 0.9, beta2 = 0.999,
         adam_eps = 1e-8;
  uint64_t seed = 0, data_seed = 42;
  int threads = 0;
  bool resume = false, force = false;
};

// The --method spec: "qlora:..." (the base quantized with NF4 + double quantization, QLoRA's
// frozen base), "irqlora:..." (IR-QLoRA: the base quantized with ICQ, icq:tau_range=0.1,tau_n=100
// as its training script, and IEC's two scalars per adapted linear) or "lora:..." (the base as
// loaded), with r, alpha, dropout, targets (all, or names joined by '+', e.g. q_proj+v_proj) and
// iec (0 or 1: the elastic connection on or off; irqlora's default 1, the others' 0).
struct MethodChoice {
  std::string name, base_spec;  // base_spec empty: the base as loaded
  train::LoraConfig lora;
  nlohmann::json json() const;
};

nlohmann::json MethodChoice::json() const {
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

MethodChoice parse_method(const std::string& spec) {
  MethodChoice m;
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
            m.lora.targets[size_t(train::lora_target_kind(v.substr(p, plus == std::string::npos ? plus : plus - p)))] =
                true;
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

void run(const Options& o) {
  set_num_threads(o.threads);
  const auto t_start = Clock::now();
  const MethodChoice method = parse_method(o.method);
  LB_CHECK(o.steps > 0 && o.batch > 0 && o.grad_accum > 0, "--steps, --batch and --grad-accum must be positive");
  const bool has_run = fs::exists(o.out + "/adapter_model.safetensors") || fs::exists(o.out + "/checkpoint") ||
                       fs::exists(o.out + "/checkpoint.old");
  LB_CHECK(!has_run || o.force || o.resume,
           "output '{}' holds a run; pass --resume to continue it or --force to start over", o.out);
  LB_CHECK(!(o.force && o.resume), "--force starts over and --resume continues: give one of them");
  if (o.force && !o.resume) {
    fs::remove_all(o.out + "/checkpoint");
    fs::remove_all(o.out + "/checkpoint.old");
  }

  // Data first: bad records fail before the model is loaded or quantized.
  const auto records = train::read_alpaca_json(o.data);
  Checkpoint source = open_model(o.model);
  // Before the base is quantized: IEC's rank must divide the adapted linears.
  train::check_lora_config(source.config, method.lora);
  LB_CHECK(!source.tokenizer_path.empty(), "model '{}' has no tokenizer beside it", o.model);
  TokenizerOptions topt;
  topt.spm = parse_spm_convention(o.spm);
  auto tok = load_tokenizer(source.tokenizer_path, topt);
  const int64_t n_records = o.limit > 0 ? std::min<int64_t>(o.limit, int64_t(records.size())) : int64_t(records.size());
  std::vector<train::InstructExample> examples;
  examples.reserve(size_t(n_records));
  int64_t src_trunc = 0, tgt_trunc = 0;
  for (int64_t i = 0; i < n_records; ++i) {
    examples.push_back(train::tokenize_example(*tok, records[size_t(i)], {o.source_max, o.target_max}));
    src_trunc += examples.back().source_truncated;
    tgt_trunc += examples.back().target_truncated;
  }
  const train::Split split = train::split_indices(n_records, o.eval_size, o.data_seed);
  const int32_t pad = tok->eos_id().value_or(0);  // never seen by the loss
  fmt::print(stderr, "finetune: {} records of {} ({} held out); truncated to {}/{} tokens: {} sources, {} targets\n",
             n_records, o.data, split.held_out.size(), o.source_max, o.target_max, src_trunc, tgt_trunc);

  const std::string weights_sha = weights_sha256(source);
  std::unique_ptr<LlamaModel> model;
  if (method.base_spec.empty()) {
    model = std::make_unique<LlamaModel>(std::move(source));
  } else {
    LB_CHECK(source.quantization.is_null(), "--method {} quantizes the base; model '{}' is already quantized",
             method.name, o.model);
    auto qmethod = make_method(method.base_spec);
    const auto tq = Clock::now();
    LlamaModel work(source);
    QuantizedModel qm = quantize_model(work, *qmethod, nullptr, {});
    const nlohmann::json source_id = {{"path", o.model}, {"format", source.format}, {"sha256", weights_sha}};
    model = std::make_unique<LlamaModel>(quantized_checkpoint_in_memory(source, std::move(qm), source_id));
    fmt::print(stderr, "base: {} quantized with {} in {:.1f} s (frozen)\n", o.model, method.base_spec,
               std::chrono::duration<double>(Clock::now() - tq).count());
  }
  install_quantized_forward(*model);
  // The training forward reads the (dequantized) weights only; it has no activation quantization.
  LB_CHECK(model->forward_hooks() == nullptr,
           "model '{}' quantizes activations; fine-tuning runs weight-only quantized bases", o.model);
  const LlamaConfig& c = model->config();

  // Everything that changes the result; a resumed run must match it.
  const nlohmann::json run_id = {
      {"model", o.model},           {"weights_sha256", weights_sha},  {"method", method.json()},
      {"data", o.data},             {"data_sha256", sha256_file(o.data)}, {"records", n_records},
      {"held_out", o.eval_size},    {"source_max_len", o.source_max}, {"target_max_len", o.target_max},
      {"steps", o.steps},           {"batch", o.batch},               {"grad_accum", o.grad_accum},
      {"lr", o.lr},                 {"warmup_ratio", o.warmup_ratio}, {"max_grad_norm", o.max_grad_norm},
      {"weight_decay", o.weight_decay}, {"adam_betas", {o.beta1, o.beta2}}, {"adam_eps", o.adam_eps},
      {"seed", o.seed},             {"data_seed", o.data_seed}};

  train::TrainOptions topts;
  topts.adamw = {o.lr, o.beta1, o.beta2, o.adam_eps, o.weight_decay};
  topts.warmup_ratio = o.warmup_ratio;
  topts.max_grad_norm = o.max_grad_norm;
  topts.total_steps = o.steps;
  topts.dropout_seed = o.seed;
  train::LoraTrainer trainer(*model, train::LoraAdapters::peft_init(c, method.lora, o.seed), topts);
  nlohmann::json log = nlohmann::json::array();
  const std::string ckdir = o.out + "/checkpoint";
  if (o.resume) {
    auto ck = train::load_train_checkpoint(ckdir, c, run_id);
    LB_CHECK(ck.has_value(), "--resume: no checkpoint in '{}'", ckdir);
    LB_CHECK(ck->params.config.r == method.lora.r, "--resume: the checkpoint's rank is {}, --method's {}",
             ck->params.config.r, method.lora.r);
    LB_CHECK(ck->params.config.iec == method.lora.iec, "--resume: the checkpoint's adapters {} IEC scalars, --method "
             "'{}' {}", ck->params.config.iec ? "have" : "lack", o.method, method.lora.iec ? "has them" : "does not");
    ck->params.config = method.lora;
    trainer.restore(std::move(ck->params), std::move(ck->state));
    log = ck->log;
    fmt::print(stderr, "resumed from '{}' at step {}\n", ckdir, trainer.steps_done());
  }
  fmt::print(stderr, "LoRA r={} alpha={} dropout={}{} on {} ({} trainable parameters); {} steps x {} x {} sequences, "
             "lr {} (warmup {} steps), max grad norm {}, {} threads\n",
             method.lora.r, method.lora.alpha, method.lora.dropout, method.lora.iec ? " + IEC" : "",
             method.json()["targets"].dump(),
             trainer.adapters().num_parameters(), o.steps, o.batch, o.grad_accum, o.lr,
             train::warmup_steps(o.warmup_ratio, o.steps), o.max_grad_norm, num_threads());

  const int64_t ntrain = int64_t(split.train.size());
  int64_t cached_epoch = -1;
  std::vector<int64_t> order;
  auto example_at = [&](int64_t cursor) -> const train::InstructExample* {
    const int64_t epoch = cursor / ntrain;
    if (epoch != cached_epoch) {
      order = train::epoch_order(split.train, o.data_seed, epoch);
      cached_epoch = epoch;
    }
    return &examples[size_t(order[size_t(cursor % ntrain)])];
  };
  auto eval_loss = [&]() {
    double sum = 0;
    int64_t n = 0;
    for (size_t i = 0; i < split.held_out.size(); i += size_t(o.batch)) {
      std::vector<const train::InstructExample*> part;
      for (size_t j = i; j < std::min(split.held_out.size(), i + size_t(o.batch)); ++j)
        part.push_back(&examples[size_t(split.held_out[j])]);
      const auto r = train::forward_loss(*model, &trainer.adapters(), train::make_batch(part, pad));
      sum += r.loss_sum;
      n += r.num_targets;
    }
    return n ? sum / double(n) : NAN;
  };

  const auto t_loop = Clock::now();
  const int64_t first = trainer.steps_done();
  int64_t tokens_run = 0;
  int64_t done_this_run = 0;
  for (int64_t s = first; s < o.steps; ++s) {
    std::vector<train::Batch> micro;
    for (int64_t a = 0; a < o.grad_accum; ++a) {
      std::vector<const train::InstructExample*> part;
      for (int64_t b = 0; b < o.batch; ++b) part.push_back(example_at((s * o.grad_accum + a) * o.batch + b));
      micro.push_back(train::make_batch(part, pad));
    }
    const train::StepStats st = trainer.step(micro);
    tokens_run += st.tokens;
    ++done_this_run;
    const double elapsed = std::chrono::duration<double>(Clock::now() - t_loop).count();
    const double tps = double(tokens_run) / elapsed;
    const double eta = elapsed / double(done_this_run) * double(o.steps - s - 1);
    nlohmann::json rec = {{"step", s + 1}, {"loss", st.loss}, {"lr", st.lr}, {"grad_norm", st.grad_norm},
                          {"targets", st.targets}, {"tokens", st.tokens}};
    if (o.eval_every > 0 && !split.held_out.empty() && (s + 1) % o.eval_every == 0) rec["eval_loss"] = eval_loss();
    log.push_back(rec);
    fmt::print(stderr, "step {}/{} loss {:.4f}{} lr {:.3g} |g| {:.3f} {:.0f} tok/s ETA {}\n", s + 1, o.steps, st.loss,
               rec.contains("eval_loss") ? fmt::format(" eval {:.4f}", rec["eval_loss"].get<double>()) : "", st.lr,
               st.grad_norm, tps, format_duration(eta));
    const bool last = s + 1 == o.steps;
    const bool stop = o.stop_after > 0 && done_this_run == o.stop_after;
    if (last || stop || (o.save_every > 0 && (s + 1) % o.save_every == 0))
      train::save_train_checkpoint(ckdir, trainer.adapters(), trainer.optimizer_state(), run_id, log);
    if (stop && !last) {
      fmt::print(stderr, "stopped after {} steps (--stop-after); continue with --resume\n", done_this_run);
      return;
    }
  }
  nlohmann::json summary = {{"base", train::base_identity(*model, weights_sha)}, {"run", run_id}, {"log", log},
                            {"peak_rss_bytes", peak_rss_bytes()},
                            {"train_seconds", std::chrono::duration<double>(Clock::now() - t_start).count()}};
  if (!method.base_spec.empty()) summary["base_quantization"] = method.base_spec;
  if (!split.held_out.empty()) summary["eval_loss"] = eval_loss();
  train::save_peft_adapter(o.out, trainer.adapters(), o.model);
  {
    std::ofstream out(o.out + "/lowbit_adapter.json.tmp", std::ios::trunc);
    out << summary.dump(1) << "\n";
    out.flush();
    LB_CHECK(out.good(), "cannot write '{}/lowbit_adapter.json'", o.out);
  }
  fs::rename(o.out + "/lowbit_adapter.json.tmp", o.out + "/lowbit_adapter.json");
  fmt::print("wrote {}: final loss {:.4f}{}, {} steps, peak memory {}\n", o.out,
             log.empty() ? NAN : log.back()["loss"].get<double>(),
             summary.contains("eval_loss") ? fmt::format(", held-out loss {:.4f}", summary["eval_loss"].get<double>())
                                           : "",
             o.steps, human_bytes(double(peak_rss_bytes())));
}

}  // namespace

void register_finetune(CLI::App& app) {
  auto o = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand(
      "finetune",
      "Fine-tune LoRA adapters over a frozen (optionally quantized) base on instruction data (CPU, fp32). Writes "
      "a PEFT adapter directory (adapter_config.json, adapter_model.safetensors) plus lowbit_adapter.json, and a "
      "resumable checkpoint in OUT/checkpoint");
  cmd->add_option("--model", o->model, "model directory or checkpoint (16-bit; or already quantized with --method lora)")
      ->required();
  cmd->add_option("--method", o->method,
                  "qlora:r=,alpha=,dropout=,targets=,iec= (base quantized NF4 with double quantization, QLoRA's), "
                  "irqlora:... (IR-QLoRA: base quantized with ICQ, tau_n 100, and IEC's scalars) or lora:... (base "
                  "as loaded); targets: all or names joined by '+' (q_proj+v_proj); iec=0|1");
  cmd->add_option("--data", o->data, "instruction data in Stanford Alpaca's JSON format")->required();
  cmd->add_option("-o,--output", o->out, "output directory (adapters, checkpoint)")->required();
  cmd->add_option("--steps", o->steps, "optimizer steps")->check(CLI::PositiveNumber);
  cmd->add_option("--batch", o->batch, "sequences per micro-batch")->check(CLI::PositiveNumber);
  cmd->add_option("--grad-accum", o->grad_accum, "micro-batches accumulated per optimizer step")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--lr", o->lr, "AdamW learning rate (constant after warmup)");
  cmd->add_option("--warmup-ratio", o->warmup_ratio, "warmup steps = ceil(ratio * steps), linear from 0");
  cmd->add_option("--max-grad-norm", o->max_grad_norm, "clip gradients to this global L2 norm (0: off)");
  cmd->add_option("--weight-decay", o->weight_decay, "AdamW's decoupled weight decay");
  cmd->add_option("--adam-beta1", o->beta1, "AdamW beta1");
  cmd->add_option("--adam-beta2", o->beta2, "AdamW beta2");
  cmd->add_option("--adam-eps", o->adam_eps, "AdamW epsilon");
  cmd->add_option("--source-max-len", o->source_max, "tokens kept of BOS + prompt")->check(CLI::PositiveNumber);
  cmd->add_option("--target-max-len", o->target_max, "tokens kept of response + EOS")->check(CLI::PositiveNumber);
  cmd->add_option("--eval-size", o->eval_size, "records held out for the evaluation loss");
  cmd->add_option("--eval-every", o->eval_every, "held-out loss every N steps (0: only at the end)");
  cmd->add_option("--limit", o->limit, "use only the first N records (0: all)");
  cmd->add_option("--seed", o->seed, "seed of the adapters' init and of LoRA dropout");
  cmd->add_option("--data-seed", o->data_seed, "seed of the held-out split and the data order");
  cmd->add_option("--save-every", o->save_every, "checkpoint every N steps (and at the end)");
  cmd->add_flag("--resume", o->resume, "continue the run checkpointed in OUT/checkpoint (same options)");
  cmd->add_option("--stop-after", o->stop_after, "stop after N steps of this invocation, checkpointed (0: run on)");
  cmd->add_flag("--force", o->force, "start over even if OUT holds an adapter");
  add_spm_convention_option(cmd, o->spm);
  cmd->add_option("--threads", o->threads, "CPU threads (0: all cores)")->check(CLI::NonNegativeNumber);
  cmd->callback([o] { run(*o); });
}

}  // namespace lowbit::cli
