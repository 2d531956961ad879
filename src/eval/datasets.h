// Evaluation and calibration text sets, looked up by name in a data directory (PROTOCOL.md):
//
//   name        files under the data directory            text / convention
//   wikitext2   wikitext2/wiki.test.raw                   rows joined "\n\n" (GPTQ get_wikitext2)
//   ptb         ptb/ptb.valid.txt                          rows joined "\n\n" (GPTQ get_ptb: validation)
//   ptb-new     ptb/ptb.test.txt                           rows joined " "   (GPTQ get_ptb_new: test)
//   c4          c4/c4-validation.00000-of-00008.json.gz    256 random windows (GPTQ get_c4)
//   c4-new      c4/c4-validation.00000-of-00008.json.gz    first 1100 docs joined " ", 256 windows
//   any other   a text file                                its bytes
//
// Files with a known canonical content are checked against its SHA-256; every result records
// the SHA-256 of the files it used.
#pragma once

#include "formats/data_files.h"
#include "formats/tokenizer.h"

#include <cstdint>
#include <string>
#include <vector>

namespace lowbit {

// A text set resolved in a data directory, with what is known about its provenance.
struct TextSet {
  std::string name;        // "wikitext2", "ptb", "ptb-new", "c4", "c4-new" or the file path
  std::string convention;  // e.g. "wikitext-2-raw-v1 test, rows joined \"\\n\\n\" (GPTQ get_wikitext2)"
  std::vector<DatasetFile> files;
};

// Resolves an evaluation set by name (or a file path). Throws naming the missing file, the
// expected location and, for C4, where to obtain it.
TextSet resolve_eval_set(const std::string& name, const std::string& data_dir);

// The windows of `seqlen` tokens that perplexity is computed over, per PROTOCOL.md: the whole
// text tokenized once (with the tokenizer's BOS handling `bos`) cut into floor(n / seqlen)
// windows, or, for C4, GPTQ's 256 windows drawn with Python's random.seed(0).
std::vector<std::vector<int32_t>> eval_windows(const TextSet& set, const Tokenizer& tok, int64_t seqlen,
                                               BosMode bos);

}  // namespace lowbit
