// lowbit tokenize --model PATH (--text S | --file F) [--bos auto|on|off] [--spm-convention C] [--ids | --count]
#include "commands.h"

#include "core/error.h"
#include "quant/lowbit_checkpoint.h"
#include "core/mapped_file.h"
#include "formats/checkpoint.h"
#include "formats/tokenizer.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

namespace lowbit::cli {

namespace {

struct Options {
  std::string model, text, file;
  bool ids = false, count = false;
  std::string bos = "auto", spm = "auto";
};

void run(const Options& o) {
  TokenizerOptions topt;
  topt.spm = parse_spm_convention(o.spm);
  const std::string tok_file = find_tokenizer_file(o.model);
  LB_CHECK(!tok_file.empty(), "'{}': no tokenizer found (looked for tokenizer.json, tokenizer.model, tokenizer.bin, "
           "tok512.bin)", o.model);
  std::string path = tok_file;
  if (tok_file == o.model && o.model.size() > 4 && o.model.ends_with(".bin") &&
      std::filesystem::path(o.model).filename().string().rfind("tok", 0) != 0)
    path = open_model(o.model).tokenizer_path;  // a llama2.c checkpoint: its tokenizer beside it
  LB_CHECK(!path.empty(), "'{}': no tokenizer beside the checkpoint", o.model);
  auto tok = load_tokenizer(path, topt);
  const std::string text = o.file.empty() ? o.text : read_file(o.file);
  const std::vector<int32_t> ids = tok->encode(text, parse_bos_mode(o.bos));
  if (o.count) {
    fmt::print("{}\n", ids.size());
  } else if (o.ids) {
    fmt::print("[{}]\n", fmt::join(ids, ", "));
  } else {
    for (int32_t id : ids) fmt::print("{:>7} '{}'\n", id, escape_token(tok->token_text(id)));
  }
}

}  // namespace

void register_tokenize(CLI::App& app) {
  auto o = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand("tokenize", "Tokenize text exactly as transformers does");
  cmd->add_option("--model", o->model, "model directory, tokenizer file or llama2.c checkpoint")->required();
  auto* text = cmd->add_option("--text", o->text, "text to tokenize");
  auto* file = cmd->add_option("--file", o->file, "file whose bytes to tokenize")->check(CLI::ExistingFile);
  text->excludes(file);
  cmd->callback([o, text, file] {
    LB_CHECK(text->count() + file->count() == 1, "tokenize: give exactly one of --text or --file");
    run(*o);
  });
  add_bos_option(cmd, o->bos, "the text");
  auto* ids = cmd->add_flag("--ids", o->ids, "print the ids as a list");
  auto* count = cmd->add_flag("--count", o->count, "print only the number of tokens");
  ids->excludes(count);
  add_spm_convention_option(cmd, o->spm);
}

}  // namespace lowbit::cli
