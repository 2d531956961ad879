// Calibration sets (PROTOCOL.md, "Calibration data"): N windows of `seqlen` tokens drawn with
// Python's random.seed(seed), exactly as GPTQ's datautils draws them, so that lowbit calibrates
// on the very windows every GPTQ-derived codebase uses.
//
//   name       file under the data directory              windows
//   wikitext2  wikitext2/wiki.train.raw                   rows joined "\n\n", tokenized once, each
//                                                         window at randint(0, n - seqlen - 1)
//   ptb        ptb/ptb.train.txt                          the same over rows joined "\n\n"
//   c4         c4/c4-train.00000-of-01024.json.gz         GPTQ get_c4: documents redrawn until
//                                                         one has >= seqlen tokens, then a start
//   any other  a text file                                tokenized whole, as wikitext2
//
// The study calibrates on WikiText2 train. Where that file is absent, lowbit says so and stops;
// it never substitutes another set on its own.
#pragma once

#include "formats/data_files.h"
#include "formats/tokenizer.h"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace lowbit {

struct CalibrationSet {
  std::string name;        // "wikitext2", "ptb", "c4" or the file path
  std::string convention;  // how the text is assembled and sampled
  std::vector<DatasetFile> files;
};

struct Calibration {
  CalibrationSet set;
  int64_t nsamples = 0, seqlen = 0;
  uint64_t seed = 0;
  std::string bos;  // "auto", "on", "off"
  std::vector<std::vector<int32_t>> windows;  // [nsamples][seqlen]
  // {"set", "convention", "files": [{path, sha256}], "nsamples", "seqlen", "seed", "bos"}
  nlohmann::json identity() const;
};

// Resolves a calibration set by name or file path; throws naming the missing file.
CalibrationSet resolve_calibration_set(const std::string& name, const std::string& data_dir);

// Draws the windows. Throws when the text is too short for one window.
Calibration make_calibration(const CalibrationSet& set, const Tokenizer& tok, int64_t nsamples, int64_t seqlen,
                             uint64_t seed, BosMode bos);

}  // namespace lowbit
