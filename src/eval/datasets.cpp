#include "eval/datasets.h"

#include "core/error.h"
#include "core/hash.h"
#include "core/mapped_file.h"
#include "core/py_random.h"
#include "formats/text_datasets.h"

#include <filesystem>
#include <map>

namespace lowbit {

namespace fs = std::filesystem;

namespace {

constexpr const char* kC4Val = "c4/c4-validation.00000-of-00008.json.gz";
constexpr const char* kC4Hint =
    "; it is en/c4-validation.00000-of-00008.json.gz of the allenai/c4 dataset on the Hugging Face Hub";

std::string read_text_of(const TextSet& s) {
  if (s.name == "wikitext2") return join(wikitext_rows(read_file(s.files[0].path)), "\n\n");
  if (s.name == "ptb") return join(ptb_rows(read_file(s.files[0].path)), "\n\n");
  if (s.name == "ptb-new") return join(ptb_rows(read_file(s.files[0].path)), " ");
  return read_file(s.files[0].path);
}

}  // namespace

TextSet resolve_eval_set(const std::string& name, const std::string& data_dir) {
  TextSet s;
  s.name = name;
  if (name == "wikitext2") {
    s.convention = "wikitext-2-raw-v1 test, rows joined \"\\n\\n\" (GPTQ get_wikitext2)";
    s.files.push_back(checked_data_file(data_dir, "wikitext2/wiki.test.raw", name, ""));
  } else if (name == "ptb") {
    s.convention = "ptb_text_only validation, rows joined \"\\n\\n\" (GPTQ get_ptb)";
    s.files.push_back(checked_data_file(data_dir, "ptb/ptb.valid.txt", name, ""));
  } else if (name == "ptb-new") {
    s.convention = "ptb_text_only test, rows joined \" \" (GPTQ get_ptb_new)";
    s.files.push_back(checked_data_file(data_dir, "ptb/ptb.test.txt", name, ""));
  } else if (name == "c4") {
    s.convention = "allenai/c4 en validation shard 0, 256 windows drawn with random.seed(0) (GPTQ get_c4)";
    s.files.push_back(checked_data_file(data_dir, kC4Val, name, kC4Hint));
  } else if (name == "c4-new") {
    s.convention = "allenai/c4 en validation shard 0, first 1100 documents joined \" \", first 256 windows "
                   "(GPTQ get_c4_new)";
    s.files.push_back(checked_data_file(data_dir, kC4Val, name, kC4Hint));
  } else {
    LB_CHECK(fs::is_regular_file(name), "unknown dataset '{}': not one of wikitext2, ptb, ptb-new, c4, c4-new, and "
             "not a text file", name);
    s.convention = "text file, tokenized whole";
    s.files.push_back({name, sha256_file(name)});
  }
  return s;
}

std::vector<std::vector<int32_t>> eval_windows(const TextSet& set, const Tokenizer& tok, int64_t seqlen,
                                               BosMode bos) {
  LB_CHECK(seqlen >= 2, "sequence length must be at least 2, got {}", seqlen);
  std::vector<std::vector<int32_t>> windows;
  if (set.name == "c4") {
    const auto docs = read_jsonl_gz_texts(set.files[0].path);
    LB_CHECK(!docs.empty(), "'{}' holds no documents", set.files[0].path);
    PyRandom rng(0);
    windows = draw_document_windows(docs, tok, 256, seqlen, rng, bos, set.name);
    return windows;
  }
  std::vector<int32_t> ids;
  if (set.name == "c4-new") {
    auto docs = read_jsonl_gz_texts(set.files[0].path);
    if (docs.size() > 1100) docs.resize(1100);
    ids = tok.encode(join(docs, " "), bos);
    if (int64_t(ids.size()) > 256 * seqlen) ids.resize(size_t(256 * seqlen));
  } else {
    ids = tok.encode(read_text_of(set), bos);
  }
  const int64_t n = int64_t(ids.size()) / seqlen;
  LB_CHECK(n > 0, "dataset '{}' has {} tokens, fewer than one window of {}", set.name, ids.size(), seqlen);
  for (int64_t i = 0; i < n; ++i) windows.emplace_back(ids.begin() + i * seqlen, ids.begin() + (i + 1) * seqlen);
  return windows;
}

}  // namespace lowbit
