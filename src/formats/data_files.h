// Files in a data directory (--data-dir or $LOWBIT_DATA), shared by the evaluation and the
// calibration sets: lookup with a clear error naming what is missing and where it comes from,
// SHA-256 checks against canonical files, and C4's gzipped JSON lines.
#pragma once

#include "core/py_random.h"
#include "formats/tokenizer.h"

#include <cstdint>
#include <string>
#include <vector>

namespace lowbit {

struct DatasetFile {
  std::string path;
  std::string sha256;
};

// The sets read by name from a data directory; any other name is a text file's path.
//   Evaluation:  wikitext2, ptb, ptb-new, c4, c4-new (eval/datasets.h)
//   Calibration: wikitext2, ptb, c4 (calib/calib_data.h)
enum class DatasetRole { Evaluation, Calibration };
bool is_named_dataset(const std::string& name, DatasetRole role);

// The data directory: the flag's value, else $LOWBIT_DATA; an error when neither is set.
std::string resolve_data_dir(const std::string& flag_value);

// data_dir/rel, hashed. Throws when absent, naming the set (`set`), the file and the data
// directory, followed by `hint` (where to obtain it). Files with a known canonical content
// (WikiText2, PTB, the derived HellaSwag text) must match its SHA-256.
DatasetFile checked_data_file(const std::string& data_dir, const std::string& rel, const std::string& set,
                              const std::string& hint);

// Reads a .json.gz file of one JSON object per line and returns each line's "text".
std::vector<std::string> read_jsonl_gz_texts(const std::string& path);

// GPTQ's document sampler (get_c4): `count` times, draw a document with
// rng.randint(0, len(docs) - 1) until its token count is >= seqlen (each draw consumes RNG state),
// then a start with rng.randint(0, ntok - seqlen - 1), and take tokens [start, start + seqlen).
// Each document is tokenized on its own (with `bos`). `what` names the set in errors.
std::vector<std::vector<int32_t>> draw_document_windows(const std::vector<std::string>& docs, const Tokenizer& tok,
                                                        int64_t count, int64_t seqlen, PyRandom& rng, BosMode bos,
                                                        const std::string& what);

// GPTQ's stream sampler (get_wikitext2, get_ptb calibration): `count` windows of the tokenized
// text, each starting at rng.randint(0, ids.size() - seqlen - 1).
std::vector<std::vector<int32_t>> draw_stream_windows(const std::vector<int32_t>& ids, int64_t count, int64_t seqlen,
                                                      PyRandom& rng, const std::string& what);

}  // namespace lowbit
