// A study spec: one TOML file naming the models, the methods with their grids of options, the
// calibration and the evaluation of a whole study (the seed paper's Tables 1-2 are one such file,
// examples/llama3-table1.toml).
//
//   [study]        name (required), db (the results store: a SQLite file, default
//                  "<name>.sqlite", or a postgresql:// URI),
//                  device ("cpu", "cuda", "cuda:N"), threads (0: all cores), data_dir
//                  (default $LOWBIT_DATA), spm ("auto", "llama", "generic", "sentencepiece")
//   [[model]]      name (default: the file or directory name), path
//   [calibration]  set ("wikitext2", "ptb", "c4" or a text file), nsamples, seqlen, seed, bos
//   [eval]         ppl = [datasets], seqlen, limit (first N windows; 0: all), bos,
//                  tasks = [task names], task_limit (first N items of each task), mmlu_limit
//                  (first N items of each MMLU subject; default task_limit), mmlu_shots,
//                  max_length (context tokens), batch (windows per GPU forward),
//                  vlm_tasks = [vision-language benchmarks: ai2d, chartqa, docvqa, mmbench_en,
//                  mme] for LLaVA-Next models (every [[model]] must be one), vlm_data (a folder
//                  holding TASK.jsonl for each, as `lowbit vlm-eval --data`; required with
//                  vlm_tasks), vlm_limit (first N items; 0: all), vlm_max_new_tokens (0: the
//                  task's), vlm_conversation ("llava" or "llava_hf"); each runs on the CPU with
//                  the cell's quantized language model under the model's own vision tower
//   [[method]]     name (a method of `lowbit methods`, or "fp16": the 16-bit baseline), then any
//                  option of the method; an array is one axis of the grid (w = [2, 3, 4]); zip =
//                  ["w", "a"] walks those arrays together instead of crossing them (W8A8, W6A6);
//                  device = "cpu" quantizes this method's cells there instead of on the study's
//                  device (a method that cannot run on the study's device is refused unless
//                  its table says where it runs; evaluation stays on the study's device)
//   [[finetune]]   a LoRA-FT row of the paper's Tables 5-6, as `lowbit finetune` runs it (CPU):
//                  method ("qlora": the base quantized nf4:dq=1; "irqlora": the base quantized
//                  icq:tau_range=0.1,tau_n=100,dq=1 and IEC; "lora": the 16-bit base), data (an
//                  Alpaca JSON file, required), the LoRA options r, alpha, dropout, targets, iec,
//                  and the training options steps, batch, grad_accum, lr, warmup_ratio,
//                  max_grad_norm, weight_decay, adam_beta1, adam_beta2, adam_eps, source_max_len,
//                  target_max_len, eval_size, limit, seed, data_seed (the command's options, with
//                  its defaults); training runs on the study's device, or where the table's
//                  device ("cpu", "cuda", "cuda:N"; an axis like the others) says, the
//                  evaluations (the adapters merged into the base's weights) on the study's
//                  device
//   [[distill]]    a DB-LLM row, as `lowbit distill` runs it on the [calibration] windows
//                  or, with data = "generated", on windows the 16-bit model generates itself
//                  (train/generated_data.h): the dbllm method's options (g, init, offset) and the
//                  training options steps, batch, grad_accum, lr, warmup_ratio, max_grad_norm,
//                  dad, gamma, train_beta, latent, latent_lr_scale, device, compute, data
//                  ("calib" or "generated"), gen_nsamples, gen_seqlen, gen_seed, gen_first,
//                  gen_greedy, gen_temperature, gen_top_k, gen_eos, gen_bos (the command's, with
//                  its defaults; the gen_* options only with data = "generated", whose cells have
//                  calibration "none"). The cell's training key names compute when it is not
//                  fp32 (a GPU mode) and then the generation when data = "generated", in that
//                  order: "...,latent_lr_scale=S,compute=bf16,data=generated,gen_nsamples=..."
//                  In both, any value may be an array (an axis of the grid) and zip walks arrays
//                  together, as in [[method]].
//
// Paths (model paths, db, data_dir, a calibration or evaluation text file) may use ${VAR} and
// ${VAR:-default} from the environment; relative paths are relative to the spec's directory.
//
// Everything is checked before any work starts, each error naming the spec file, line and column
// ("quick.toml:14:7: rtn: option w=9 is out of range [2, 8]"): TOML syntax, unknown keys and
// types, unknown methods and options and values out of range (through the method registry),
// unknown datasets and tasks, missing models and data files.
#pragma once

#include "train/distill.h"
#include "train/finetune.h"

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace lowbit::study {

// Where something was written in the spec: "path:line:column".
struct SourcePos {
  std::string file;
  int64_t line = 0, column = 0;
  std::string str() const;
};

struct ModelSpec {
  std::string name, path;  // path: expanded and absolute
  SourcePos pos;
};

// How a cell is trained after (or with) its quantization.
enum class TrainKind { None, Finetune, Distill };

struct TrainSpec {
  TrainKind kind = TrainKind::None;
  // Finetune: every option but `model` (the cell's model) and checkpointing (none); data is the
  // expanded absolute path, spm the study's.
  train::FinetuneOptions finetune;
  SourcePos data_pos;             // where finetune's data was written
  train::DistillOptions distill;  // Distill: method is the cell's dbllm spec
  // Every training option, defaults included: the training part of the cell's key
  // ("finetune:r=64,alpha=16,...,data=/abs/alpaca.json,steps=100,...", "dad:steps=100,...").
  std::string key;
};

// One method of the grid after expansion: its spec string, as results record it verbatim.
struct MethodCell {
  std::string spec;  // "gptq:w=4,g=128", "fp16" for the baseline, "qlora:r=16" for a LoRA-FT cell
  std::string name;  // "gptq", "fp16", "qlora", "irqlora", "lora", "dbllm"
  SourcePos pos;     // the [[method]], [[finetune]] or [[distill]] table it came from
  std::string device;  // where its cells quantize; empty: the study's device
  TrainSpec train;
  // The quantization method behind the cell: the spec, or a LoRA-FT cell's base ("nf4:dq=1";
  // empty for lora over the 16-bit model).
  std::string quant_spec() const;
};

struct CalibrationSpec {
  std::string set = "wikitext2";  // a name, or the expanded absolute path of a text file
  int64_t nsamples = 128, seqlen = 2048;
  uint64_t seed = 0;
  std::string bos = "auto";
  SourcePos pos;
  // "wikitext2:n=128,seqlen=2048,seed=0,bos=auto": the calibration part of a cell's key.
  std::string key() const;
};

struct EvalSpec {
  std::vector<std::string> ppl;    // dataset names or expanded paths
  std::vector<std::string> tasks;  // task names (task_names(), mmlu_SUBJECT)
  // KL-divergence from the cell's 16-bit model on these sets' perplexity windows (seqlen,
  // limit and bos as ppl's): dataset names or expanded paths, as ppl.
  std::vector<std::string> kld;
  int64_t seqlen = 2048, limit = 0, task_limit = 0, mmlu_limit = 0, max_length = 0, batch = 4;
  int mmlu_shots = 5;
  std::string bos = "auto";
  // Vision-language benchmarks (eval/vlm/vlm_task.h) of LLaVA-Next models, as `lowbit vlm-eval`
  // runs them: task names, the folder (or, for one task, the file) of their items (expanded
  // absolute path), and its settings.
  std::vector<std::string> vlm_tasks;
  std::string vlm_data;
  int64_t vlm_limit = 0, vlm_max_new_tokens = 0;
  std::string vlm_conversation = "llava";
};

struct StudySpec {
  std::string path;  // the spec file
  std::string text;  // its contents, recorded with every run
  std::string name, db, device = "cpu", data_dir, spm = "auto";
  int threads = 0;
  std::vector<ModelSpec> models;
  std::vector<MethodCell> methods;  // in the spec's order, each grid expanded in its order
  CalibrationSpec calibration;
  EvalSpec eval;
  bool needs_calibration() const;  // whether any method calibrates (or trains on calibration windows)
};

struct SpecOptions {
  // Check that models, data files and tasks' files exist and open (off: syntax, keys, values,
  // methods and names only, e.g. for a spec written for another machine).
  bool check_files = true;
};

// Parses and checks a spec file; throws lowbit::Error "FILE:LINE:COL: message".
StudySpec load_study_spec(const std::string& path, const SpecOptions& opt = {});
// The same on text (`path` names it in errors and anchors relative paths).
StudySpec parse_study_spec(const std::string& text, const std::string& path, const SpecOptions& opt = {});

// A method's grid: the cross product of the options' values, in the given order (the first
// option varies slowest), except that the options named in `zip` (arrays of one length) are
// walked together as one axis, placed where the first of them is. Returns the spec strings
// "name:k=v,..." with the options in the given order; a value "" drops the option.
std::vector<std::string> expand_method_grid(const std::string& name,
                                            const std::vector<std::pair<std::string, std::vector<std::string>>>& options,
                                            const std::vector<std::string>& zip);

// ${VAR} and ${VAR:-default} from the environment; throws naming an unset variable.
std::string expand_env(const std::string& s);

}  // namespace lowbit::study
