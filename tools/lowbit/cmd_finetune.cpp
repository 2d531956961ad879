// lowbit finetune --model M --method 'qlora:r=64,alpha=16' --data alpaca.json --steps N -o OUT
#include "commands.h"
#include "progress.h"

#include "backend/ops.h"
#include "core/error.h"
#include "core/process.h"
#include "train/adapter_io.h"
#include "train/finetune.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>

namespace lowbit::cli {

namespace {

namespace fs = std::filesystem;

struct Options : train::FinetuneOptions {
  int threads = 0;
  bool force = false;
};

void run(const Options& o) {
  set_num_threads(o.threads);
  (void)train::parse_finetune_method(o.method);
  train::check_finetune_options(o);
  const bool has_run = fs::exists(o.out + "/adapter_model.safetensors") || fs::exists(o.out + "/checkpoint") ||
                       fs::exists(o.out + "/checkpoint.old");
  LB_CHECK(!has_run || o.force || o.resume,
           "output '{}' holds a run; pass --resume to continue it or --force to start over", o.out);
  LB_CHECK(!(o.force && o.resume), "--force starts over and --resume continues: give one of them");
  if (o.force && !o.resume) {
    fs::remove_all(o.out + "/checkpoint");
    fs::remove_all(o.out + "/checkpoint.old");
  }
  train::FinetuneEvents ev;
  ev.on_note = [](const std::string& s) { fmt::print(stderr, "{}\n", s); };
  ev.on_step = [](const train::FinetuneStep& st) {
    const auto& rec = st.record;
    fmt::print(stderr, "step {}/{} loss {:.4f}{} lr {:.3g} |g| {:.3f} {:.0f} tok/s ETA {}\n", st.step, st.steps,
               rec["loss"].get<double>(),
               rec.contains("eval_loss") ? fmt::format(" eval {:.4f}", rec["eval_loss"].get<double>()) : "",
               rec["lr"].get<double>(), rec["grad_norm"].get<double>(), st.tokens_per_second,
               format_duration(st.eta_seconds));
    if (!st.phases.empty()) {
      double total = 0;
      for (const auto& p : st.phases) total += p.seconds;
      std::string line;
      for (const auto& p : st.phases) line += fmt::format("{}{} {:.4f} s", line.empty() ? "" : ", ", p.name, p.seconds);
      fmt::print(stderr, "step {} phases: {} (sum {:.4f} s)\n", st.step, line, total);
    }
  };
  const train::FinetuneResult r = train::run_finetune(o, ev);
  if (!r.finished) {
    fmt::print(stderr, "stopped after {} steps (--stop-after); continue with --resume\n", o.stop_after);
    return;
  }
  const nlohmann::json& summary = r.summary;
  const nlohmann::json& log = summary["log"];
  train::save_peft_adapter(o.out, r.adapters, o.model);
  {
    std::ofstream out(o.out + "/lowbit_adapter.json.tmp", std::ios::trunc);
    out << summary.dump(1) << "\n";
    out.flush();
    LB_CHECK(out.good(), "cannot write '{}/lowbit_adapter.json'", o.out);
  }
  fs::rename(o.out + "/lowbit_adapter.json.tmp", o.out + "/lowbit_adapter.json");
  fmt::print("wrote {}: final loss {:.4f}{}, {} steps, peak memory {}{}\n", o.out,
             log.empty() ? NAN : log.back()["loss"].get<double>(),
             summary.contains("eval_loss") ? fmt::format(", held-out loss {:.4f}", summary["eval_loss"].get<double>())
                                           : "",
             o.steps, human_bytes(double(peak_rss_bytes())),
             summary.contains("gpu_memory")
                 ? fmt::format(", GPU peak {} allocated, {} in use",
                               human_bytes(summary["gpu_memory"]["peak_allocated_bytes"].get<double>()),
                               human_bytes(summary["gpu_memory"]["peak_in_use_bytes"].get<double>()))
                 : "");
}

}  // namespace

void register_finetune(CLI::App& app) {
  auto o = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand(
      "finetune",
      "Fine-tune LoRA adapters over a frozen (optionally quantized) base on instruction data (on the CPU in fp32, "
      "or with --device cuda on a GPU in bf16 by default: --compute). Writes "
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
  cmd->add_option("--init-adapter", o->init_adapter,
                  "start from this PEFT adapter directory's A and B (and IEC scalars) instead of the seeded init; "
                  "its r, lora_alpha and target_modules must be --method's");
  cmd->add_option("--save-batches", o->save_batches,
                  "write every micro-batch of the run (tokens, shifted targets; JSON lines) to this file before "
                  "training, for an outside reference to train on the same data");
  cmd->add_option("--dump-grads", o->dump_grads,
                  "write the first step's gradient (before clipping; safetensors, PEFT's names) to this file");
  cmd->add_flag("--force", o->force, "start over even if OUT holds an adapter");
  add_spm_convention_option(cmd, o->spm);
  cmd->add_option("--threads", o->threads, "CPU threads (0: all cores)")->check(CLI::NonNegativeNumber);
  add_device_option(cmd, o->device);
  cmd->add_option("--compute", o->compute,
                  "precision of the training step's matrix products: fp32 (exact, the CPU's only mode), tf32 or "
                  "bf16 (bf16 base and activations, fp32 accumulation, fp32 adapters and AdamW) [default: bf16 on "
                  "cuda, fp32 on cpu]; LOWBIT_TRAIN_PROFILE=1 prints each GPU step's time per phase")
      ->check(CLI::IsMember({"fp32", "tf32", "bf16"}));
  cmd->add_option("--base-resident", o->base_resident,
                  "bf16 compute on a GPU: expand the frozen base into bf16 once and keep it for the run (2 bytes a "
                  "base weight; the same numbers bit for bit, no per-step expansion): on, off (expand each block per "
                  "step from the compact base), or auto (on when it fits in 90% of the GPU's free memory after the "
                  "rest of the run; off on the CPU and for fp32 or tf32 compute, where on is refused) [default: auto]")
      ->check(CLI::IsMember({"auto", "on", "off"}));
  cmd->callback([o] { run(*o); });
}

}  // namespace lowbit::cli
