// Helpers shared by the subcommands.
#include "commands.h"

#include "backend/device_check.h"
#include "core/device.h"
#include "core/error.h"

#include <fmt/format.h>

#include <charconv>


namespace lowbit::cli {

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

DeviceChoice parse_device(const std::string& s) {
  const Device dev = lowbit::parse_device(s);
  check_device_available(dev);
  DeviceChoice d;
  d.text = s;
  d.cuda = dev.is_cuda();
  d.index = dev.index;
  return d;
}

void add_device_option(CLI::App* cmd, std::string& target) {
  cmd->add_option("--device", target, "cpu, cuda or cuda:N");
}

}  // namespace lowbit::cli
