#include "formats/tokenizer.h"

#include "core/error.h"
#include "core/mapped_file.h"
#include "formats/gguf.h"
#include "formats/tokenizer_gguf.h"

#include <cctype>
#include <filesystem>

namespace lowbit {

namespace fs = std::filesystem;

std::vector<int32_t> Tokenizer::encode(std::string_view text, BosMode bos) const {
  std::vector<int32_t> ids = encode_plain(text);
  switch (bos) {
    case BosMode::Off: return ids;
    case BosMode::Default: return add_default_specials(std::move(ids));
    case BosMode::On: {
      auto b = bos_id();
      LB_CHECK(b.has_value(), "this tokenizer ({}) has no BOS token", kind());
      ids.insert(ids.begin(), *b);
      return ids;
    }
  }
  return ids;
}

namespace {

// Meta's LLaMA-3 tokenizer.model is a tiktoken rank file (lines "<base64 token> <rank>"), not a
// SentencePiece protobuf.
bool looks_like_tiktoken(const std::string& path) {
  const std::string head = read_file(path).substr(0, 256);
  const size_t nl = head.find('\n');
  if (nl == std::string::npos) return false;
  const std::string line = head.substr(0, nl);
  const size_t sp = line.find(' ');
  if (sp == std::string::npos || sp == 0 || sp + 1 == line.size()) return false;
  for (size_t i = 0; i < line.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(line[i]);
    const bool ok = i < sp ? (std::isalnum(c) || c == '+' || c == '/' || c == '=') : i == sp || std::isdigit(c);
    if (!ok) return false;
  }
  return true;
}

}  // namespace

std::string find_tokenizer_file(const std::string& path) {
  if (!fs::is_directory(path)) return fs::exists(path) ? path : "";
  const fs::path d(path);
  for (const char* name : {"tokenizer.json", "tokenizer.model", "tokenizer.bin", "tok512.bin"})
    if (fs::exists(d / name)) return (d / name).string();
  return "";
}

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path, const TokenizerOptions& opt) {
  const std::string file = find_tokenizer_file(path);
  LB_CHECK(!file.empty(), "'{}': no tokenizer found (looked for tokenizer.json, tokenizer.model, tokenizer.bin, "
           "tok512.bin)", path);
  const fs::path p(file);
  const std::string name = p.filename().string();
  if (p.extension() == ".json") {
    std::string config;
    const fs::path cfg = p.parent_path() / "tokenizer_config.json";
    if (fs::exists(cfg)) config = read_file(cfg.string());
    return load_hf_tokenizer_json(read_file(file), file, config);
  }
  if (p.extension() == ".model") {
    LB_CHECK(!looks_like_tiktoken(file), "'{}' is a tiktoken rank file (Meta's LLaMA-3 format); use the "
             "tokenizer.json of the Hugging Face checkpoint", file);
    return load_sentencepiece(file, opt.spm);
  }
  if (p.extension() == ".bin") return load_llama2c_tokenizer(file);
  if (p.extension() == ".gguf") return load_gguf_tokenizer(read_gguf_tokenizer_data(*GgufFile::open(file)), file);
  fail("'{}': unknown tokenizer file type (expected tokenizer.json, tokenizer.model, a llama2.c .bin or a .gguf)",
       file);
}

}  // namespace lowbit
