// Helpers shared by the subcommands.
#include "commands.h"

#include "core/error.h"

#include <fmt/format.h>

#include <charconv>

#ifdef LOWBIT_WITH_CUDA
#include "backend/cuda/cuda_util.h"
#endif

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
  DeviceChoice d;
  d.text = s;
  if (s == "cpu") return d;
  LB_CHECK(s == "cuda" || s.starts_with("cuda:"), "--device {}: expected cpu, cuda or cuda:N", s);
  d.cuda = true;
  if (s.size() > 5) {
    const char* b = s.data() + 5;
    auto [p, ec] = std::from_chars(b, s.data() + s.size(), d.index);
    LB_CHECK(ec == std::errc() && p == s.data() + s.size() && d.index >= 0, "--device {}: '{}' is not a device index",
             s, s.substr(5));
  }
#ifdef LOWBIT_WITH_CUDA
  const int n = cuda::device_count();
  LB_CHECK(n > 0, "--device {}: no CUDA device is available", s);
  LB_CHECK(d.index < n, "--device {}: there are {} CUDA devices", s, n);
#else
  fail("--device {}: this lowbit was built without the CUDA backend (nvcc was not found at build time)", s);
#endif
  return d;
}

void add_device_option(CLI::App* cmd, std::string& target) {
  cmd->add_option("--device", target, "cpu, cuda or cuda:N");
}

}  // namespace lowbit::cli
