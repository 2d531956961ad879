// Subcommands of the lowbit CLI. Each registers its options on the app and runs when chosen.
#pragma once

#include <CLI/CLI.hpp>

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

// --spm-convention auto|llama|generic|sentencepiece (how a SentencePiece tokenizer.model is applied).
void add_spm_convention_option(CLI::App* cmd, std::string& target);

// --device cpu|cuda[:N]. parse_device throws for bad text, and for cuda when lowbit was built
// without CUDA or no device is present.
struct DeviceChoice {
  bool cuda = false;
  int index = 0;
  std::string text = "cpu";
};
DeviceChoice parse_device(const std::string& s);
void add_device_option(CLI::App* cmd, std::string& target);

// Bytes as "87.3 MB".
std::string human_bytes(double bytes);
// A token's text with control and non-printable bytes escaped, for display.
std::string escape_token(const std::string& s);

}  // namespace lowbit::cli
