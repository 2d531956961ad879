// Subcommands of the lowbit CLI. Each registers its options on the app and runs when chosen.
#pragma once

#include "calib/calib_data.h"
#include "formats/checkpoint.h"
#include "formats/tokenizer.h"
#include "model/llama_model.h"

#include <nlohmann/json.hpp>

#include <CLI/CLI.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace lowbit {
class LlamaModel;
}

namespace lowbit::cli {

void register_inspect(CLI::App& app);
void register_tokenize(CLI::App& app);
void register_ppl(CLI::App& app);
void register_generate(CLI::App& app);
void register_logits(CLI::App& app);
void register_quantize(CLI::App& app);
void register_methods(CLI::App& app);
void register_stats(CLI::App& app);
void register_eval(CLI::App& app);
void register_study(CLI::App& app);
void register_report(CLI::App& app);
void register_export(CLI::App& app);
void register_store(CLI::App& app);
void register_finetune(CLI::App& app);
void register_vlm(CLI::App& app);
void register_vlm_eval(CLI::App& app);
void register_distill(CLI::App& app);

// --spm-convention auto|llama|generic|sentencepiece (how a SentencePiece tokenizer.model is applied).
void add_spm_convention_option(CLI::App* cmd, std::string& target);

// --bos auto|on|off: auto is the tokenizer's own default (BosMode::Default), on adds exactly
// one BOS, off adds none. `what` says what is tokenized, for the help text; the
// target's value on entry is the command's default.
void add_bos_option(CLI::App* cmd, std::string& target, const std::string& what);

// The calibration flags shared by every command that draws calibration windows (quantize, stats):
// --calib, --nsamples, --seqlen, --seed, --data-dir, --bos, --spm-convention. Both commands take
// the same set so that their windows, and so their statistics, are the same for the same flags.
struct CalibrationFlags {
  std::string calib = "wikitext2", data_dir, bos = "auto", spm = "auto";
  std::string save;  // --save-calib FILE.safetensors: the drawn windows, for other programs to reuse
  int64_t nsamples = 128, seqlen = 2048;
  uint64_t seed = 0;
};
void add_calibration_options(CLI::App* cmd, CalibrationFlags& f);
// The windows the flags name, tokenized with the checkpoint's tokenizer. Throws when the model
// has no tokenizer, when --seqlen exceeds its context, or when the data is missing. With
// --save-calib FILE it also writes them there before any work is done on them:
//   "windows"  I32 [nsamples, seqlen]  the token ids, window by window in drawing order
//   metadata "calibration": Calibration::identity() as JSON
// so that a reference implementation can calibrate on exactly the windows lowbit uses.
Calibration load_calibration(const CalibrationFlags& f, const Checkpoint& ck, const std::string& model);

// --device cpu|cuda[:N]. The option's validator parses the text (core/device.h) and checks that
// the device exists (backend/device_check.h), so a bad device is rejected while the command line
// is parsed, before any work; commands then parse it into a Device.
void add_device_option(CLI::App* cmd, std::string& target);

// --adapter DIR: a LoRA adapter in PEFT's format (lowbit finetune's output, or PEFT's own)
// merged into the model's weights before it runs. apply_adapter merges it (nothing when dir is
// empty) and returns its identity for the results ({"path", "sha256", "r", "lora_alpha",
// "target_modules"}; null when none). An adapter for another base model is refused. The GPU
// forward reads the checkpoint's weights, not merged ones, so --adapter with --device cuda is
// refused by check_adapter_device.
void add_adapter_option(CLI::App* cmd, std::string& target);
nlohmann::json apply_adapter(LlamaModel& model, const std::string& dir);
void check_adapter_device(const std::string& dir, bool gpu);
// --packed and --packed-act: run a quantized checkpoint's linears from their packed codes on the
// CPU (src/pack/) instead of dequantizing them to 16-bit weights at load.
struct PackedFlags {
  bool packed = false;
  std::string act = "q8";
  std::string head = "stored";
};
void add_packed_options(CLI::App* cmd, PackedFlags& f);
// Installs the packed kernels into `model` when --packed is given (printing one line on stderr
// unless `quiet`); returns the execution's name for results: "fake-quant" (the dequantized 16-bit
// weights, the default), "packed-q8" or "packed-f32", with "-head-q8" appended for --packed-head q8;
// on a GPU (`on_gpu`) "packed-w4a16", "packed-gemv" or "packed-w4a16+gemv" (pack/gpu_packed.h).
// Throws for a linear no GPU layout holds, and for --packed on a GPU in a build without CUDA.
std::string apply_packed(const PackedFlags& f, LlamaModel& model, bool on_gpu, bool quiet);

// Bytes as "87.3 MB".
std::string human_bytes(double bytes);

// --ids I,J,...: comma-separated token ids; throws lowbit::Error naming an item that is not an
// integer, or when there is none.
std::vector<int32_t> parse_token_ids(const std::string& text);
// A token's text with control and non-printable bytes escaped, for display.
std::string escape_token(const std::string& s);

}  // namespace lowbit::cli
