// Helpers shared by the subcommands.
#include "commands.h"

#include "backend/device_check.h"
#include "core/device.h"
#include "core/error.h"
#include "formats/data_files.h"
#include "formats/safetensors.h"
#include "core/hash.h"
#include "quant/lowbit_checkpoint.h"
#include "train/adapter_io.h"
#include "pack/gpu_packed.h"
#include "pack/packed_model.h"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <sstream>


namespace lowbit::cli {

void add_packed_options(CLI::App* cmd, PackedFlags& f) {
  cmd->add_flag("--packed", f.packed,
                "run a quantized checkpoint's linears from their packed codes (CPU kernels; on a CUDA device the W4A16 GEMM for 4-bit int codes and the low-bit GEMV for 1-3 and 5-8-bit int codes and NF4, other formats refused; no dequantized weights; "
                "default: off, the fake-quant 16-bit weights the study measures)");
  cmd->add_option("--packed-act", f.act,
                  "activations of the packed products: q8 (8-bit per block of 32, integer dot products) or f32 "
                  "(fp32, for accuracy checks)")
      ->check(CLI::IsMember({"q8", "f32"}))
      ->capture_default_str();
  cmd->add_option("--packed-head", f.head,
                  "the LM head under --packed on the CPU: stored (as the checkpoint holds it) or q8 (packed at "
                  "load to 8 bits per block of 32, ggml's Q8_0 codes, for decode speed)")
      ->check(CLI::IsMember({"stored", "q8"}))
      ->capture_default_str();
}

std::string apply_packed(const PackedFlags& f, LlamaModel& model, bool on_gpu, bool quiet) {
  if (!f.packed) return "fake-quant";
  if (on_gpu) {
    LB_CHECK(f.head == "stored", "--packed-head {} applies to the CPU only (a CUDA device runs the LM head as stored)",
             f.head);
    const std::string execution = pack::enable_gpu_packed_linears(model);
    if (!quiet)
      fmt::print(stderr, "packed: quantized linears run from their codes on the GPU ({}: {}; bf16 activations; "
                         "--packed-act applies to the CPU only)\n",
                 execution,
                 execution == "packed-w4a16" ? "4-bit W4A16 tiles"
                 : execution == "packed-gemv" ? "low-bit GEMV"
                                              : "4-bit W4A16 tiles and low-bit GEMV");
    return execution;
  }
  const pack::PackedHead head = pack::parse_packed_head(f.head);
  const pack::PackedSummary s = pack::install_packed_linears(model, pack::parse_packed_activations(f.act), head);
  if (!quiet)
    fmt::print(stderr, "packed: {} linears, {} ({:.2f} bits per weight), {} activations, {} kernels{}\n", s.linears,
               human_bytes(double(s.packed_bytes)), 8.0 * double(s.packed_bytes) / double(std::max<int64_t>(s.weights, 1)),
               f.act, pack::isa_name(pack::best_isa()),
               head == pack::PackedHead::Q8 ? fmt::format("; LM head 8-bit, {}", human_bytes(double(s.head_bytes))) : "");
  return "packed-" + f.act + (head == pack::PackedHead::Q8 ? "-head-q8" : "");
}

std::vector<int32_t> parse_token_ids(const std::string& text) {
  std::vector<int32_t> ids;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    size_t used = 0;
    long v = 0;
    try {
      v = std::stol(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    LB_CHECK(used == item.size() && !item.empty(), "--ids: '{}' is not an integer", item);
    ids.push_back(int32_t(v));
  }
  LB_CHECK(!ids.empty(), "--ids: no token ids");
  return ids;
}

std::string human_bytes(double b) {
  const char* units[] = {"B", "KB", "MB", "GB", "TB"};
  int u = 0;
  while (b >= 1000 && u < 4) {
    b /= 1000;
    ++u;
  }
  return u == 0 ? fmt::format("{:.0f} {}", b, units[u]) : fmt::format("{:.1f} {}", b, units[u]);
}

void add_spm_convention_option(CLI::App* cmd, std::string& target) {
  cmd->add_option("--spm-convention", target,
                  "SentencePiece tokenizer.model: auto (as AutoTokenizer would), llama (transformers' "
                  "LlamaTokenizer), generic (transformers' generic conversion), sentencepiece (the library; "
                  "GPTQ's use_fast=False)")
      ->check(CLI::IsMember({"auto", "llama", "generic", "sentencepiece"}));
}

std::string escape_token(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (c == '\n') out += "\\n";
    else if (c == '\t') out += "\\t";
    else if (c == '\r') out += "\\r";
    else if (c == '\\') out += "\\\\";
    else if (c < 0x20 || c == 0x7f) out += fmt::format("\\x{:02x}", c);
    else out += char(c);
  }
  return out;
}

void add_device_option(CLI::App* cmd, std::string& target) {
  // CLI11 prefixes the option's name, so the message it prints reads
  // "--device: 'gpu': expected cpu, cuda or cuda:N".
  const CLI::Validator device(
      [](std::string& s) -> std::string {
        try {
          check_device_available(lowbit::parse_device(s));
        } catch (const Error& e) {
          std::string m = e.what();
          const std::string prefix = "device ";
          return m.starts_with(prefix) ? m.substr(prefix.size()) : m;
        }
        return {};
      },
      "DEVICE", "device");
  cmd->add_option("--device", target, "cpu, cuda or cuda:N")->check(device);
}

void add_bos_option(CLI::App* cmd, std::string& target, const std::string& what) {
  cmd->add_option("--bos", target,
                  "BOS when tokenizing " + what + ": auto (the tokenizer's default), on (exactly one), off (none)")
      ->check(CLI::IsMember({"auto", "on", "off"}));
}

void add_calibration_options(CLI::App* cmd, CalibrationFlags& f) {
  cmd->add_option("--calib", f.calib, "calibration set: wikitext2 (train), ptb (train), c4 (train) or a text file");
  cmd->add_option("--nsamples", f.nsamples, "calibration windows")->check(CLI::Range(int64_t(1), int64_t(1) << 20));
  cmd->add_option("--seqlen", f.seqlen, "tokens per calibration window")
      ->check(CLI::Range(int64_t(2), int64_t(1) << 20));
  cmd->add_option("--seed", f.seed, "calibration sampling seed (Python's random.seed)");
  cmd->add_option("--data-dir", f.data_dir, "data directory (default: $LOWBIT_DATA)");
  add_bos_option(cmd, f.bos, "the calibration text");
  add_spm_convention_option(cmd, f.spm);
  cmd->add_option("--save-calib", f.save,
                  "also write the calibration windows (token ids, I32 [nsamples, seqlen]) to this .safetensors file");
}

Calibration load_calibration(const CalibrationFlags& f, const Checkpoint& ck, const std::string& model) {
  LB_CHECK(!ck.tokenizer_path.empty(), "model '{}' has no tokenizer beside it (needed for calibration)", model);
  LB_CHECK(f.seqlen <= ck.config.max_position_embeddings,
           "--seqlen {} exceeds the model's max_position_embeddings ({})", f.seqlen,
           ck.config.max_position_embeddings);
  // A named set lives in the data directory; a file path is read as given.
  const bool named = is_named_dataset(f.calib, DatasetRole::Calibration);
  const CalibrationSet set = resolve_calibration_set(f.calib, named ? resolve_data_dir(f.data_dir) : f.data_dir);
  TokenizerOptions topt;
  topt.spm = parse_spm_convention(f.spm);
  auto tok = load_tokenizer(ck.tokenizer_path, topt);
  Calibration c = make_calibration(set, *tok, f.nsamples, f.seqlen, f.seed, parse_bos_mode(f.bos));
  if (!f.save.empty()) {
    Tensor ids = Tensor::empty(DType::I32, {c.nsamples, c.seqlen});
    int32_t* p = ids.mutable_data_as<int32_t>();
    for (const auto& w : c.windows) p = std::copy(w.begin(), w.end(), p);
    SafetensorsWriter w;
    w.add("windows", ids);
    w.set_metadata("calibration", c.identity().dump());
    w.write(f.save);
  }
  return c;
}

void add_adapter_option(CLI::App* cmd, std::string& target) {
  cmd->add_option("--adapter", target, "LoRA adapter directory (PEFT format) merged into the model before it runs");
}

void check_adapter_device(const std::string& dir, bool gpu) {
  LB_CHECK(dir.empty() || !gpu, "--adapter runs on the CPU forward (the adapter is merged into its weights); "
           "--device cuda reads the checkpoint's own weights");
}

nlohmann::json apply_adapter(LlamaModel& model, const std::string& dir) {
  if (dir.empty()) return nullptr;
  // A quantized checkpoint is the adapter's base when it was quantized from the model the adapter
  // was trained on (QLoRA and IR-QLoRA train over a quantized copy of a 16-bit source).
  const nlohmann::json& q = model.checkpoint().quantization;
  const bool quantized_source = q.is_object() && q.contains("source") && q["source"].is_object() &&
                                q["source"].contains("sha256") && q["source"]["sha256"].is_string();
  train::check_adapter_base(dir, model,
                            quantized_source ? q["source"]["sha256"].get<std::string>()
                                             : weights_sha256(model.checkpoint()));
  if (const std::string trained = train::adapter_base_quantization(dir); !trained.empty()) {
    std::string here = "none (16-bit)";
    if (q.is_object() && q.contains("method"))
      here = q["method"].is_object() && q["method"].contains("resolved") ? q["method"]["resolved"].get<std::string>()
                                                                        : q["method"].dump();
    fmt::print(stderr, "adapter '{}' was trained over a base quantized with {}; this base's quantization: {}\n", dir,
               trained, here);
  }
  const train::LoraAdapters a = train::load_peft_adapter(dir, model.config());
  train::merge_adapters(model, a);
  std::vector<std::string> targets;
  for (LinearKind k : kAllLinears)
    if (a.config.targets_kind(k)) targets.emplace_back(linear_name(k));
  return {{"path", dir}, {"sha256", sha256_file(dir + "/adapter_model.safetensors")}, {"r", a.config.r},
          {"lora_alpha", a.config.alpha}, {"target_modules", targets}, {"iec", a.config.iec}};
}

}  // namespace lowbit::cli
