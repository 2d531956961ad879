#include "eval/datasets.h"

#include "core/error.h"
#include "core/hash.h"
#include "core/mapped_file.h"
#include "core/py_random.h"
#include "formats/text_datasets.h"

#include <nlohmann/json.hpp>
#include <zlib.h>

#include <cstdlib>
#include <filesystem>
#include <map>

namespace lowbit {

namespace fs = std::filesystem;

namespace {

// Canonical files (SHA-256 of the files Hugging Face `datasets` and GPTQ read).
const std::map<std::string, std::string>& known_sha256() {
  static const std::map<std::string, std::string> m = {
      {"wikitext2/wiki.test.raw", "173c87a53759e0201f33e0ccf978e510c2042d7f2cb78229d9a50d79b9e7dd08"},
      {"ptb/ptb.train.txt", "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf"},
      {"ptb/ptb.valid.txt", "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2"},
      {"ptb/ptb.test.txt", "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0"},
  };
  return m;
}

DatasetFile checked_file(const std::string& data_dir, const std::string& rel, const std::string& set,
                         const std::string& hint) {
  const fs::path p = fs::path(data_dir) / rel;
  LB_CHECK(fs::exists(p), "dataset '{}' needs {} (looked in data directory '{}'){}", set, rel, data_dir, hint);
  DatasetFile f{p.string(), sha256_file(p.string())};
  auto it = known_sha256().find(rel);
  if (it != known_sha256().end())
    LB_CHECK(f.sha256 == it->second, "dataset '{}': {} has SHA-256 {}, not the canonical file's {}", set, f.path,
             f.sha256, it->second);
  return f;
}

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

std::string resolve_data_dir(const std::string& flag_value) {
  if (!flag_value.empty()) return flag_value;
  const char* env = std::getenv("LOWBIT_DATA");
  LB_CHECK(env && *env, "no data directory: pass --data-dir DIR or set LOWBIT_DATA");
  return env;
}

TextSet resolve_eval_set(const std::string& name, const std::string& data_dir) {
  TextSet s;
  s.name = name;
  if (name == "wikitext2") {
    s.convention = "wikitext-2-raw-v1 test, rows joined \"\\n\\n\" (GPTQ get_wikitext2)";
    s.files.push_back(checked_file(data_dir, "wikitext2/wiki.test.raw", name, ""));
  } else if (name == "ptb") {
    s.convention = "ptb_text_only validation, rows joined \"\\n\\n\" (GPTQ get_ptb)";
    s.files.push_back(checked_file(data_dir, "ptb/ptb.valid.txt", name, ""));
  } else if (name == "ptb-new") {
    s.convention = "ptb_text_only test, rows joined \" \" (GPTQ get_ptb_new)";
    s.files.push_back(checked_file(data_dir, "ptb/ptb.test.txt", name, ""));
  } else if (name == "c4") {
    s.convention = "allenai/c4 en validation shard 0, 256 windows drawn with random.seed(0) (GPTQ get_c4)";
    s.files.push_back(checked_file(data_dir, kC4Val, name, kC4Hint));
  } else if (name == "c4-new") {
    s.convention = "allenai/c4 en validation shard 0, first 1100 documents joined \" \", first 256 windows "
                   "(GPTQ get_c4_new)";
    s.files.push_back(checked_file(data_dir, kC4Val, name, kC4Hint));
  } else {
    LB_CHECK(fs::is_regular_file(name), "unknown dataset '{}': not one of wikitext2, ptb, ptb-new, c4, c4-new, and "
             "not a text file", name);
    s.convention = "text file, tokenized whole";
    s.files.push_back({name, sha256_file(name)});
  }
  return s;
}

std::vector<std::string> read_jsonl_gz_texts(const std::string& path) {
  gzFile f = gzopen(path.c_str(), "rb");
  LB_CHECK(f != nullptr, "cannot open '{}'", path);
  std::string all;
  char buf[1 << 16];
  int n;
  while ((n = gzread(f, buf, sizeof buf)) > 0) all.append(buf, size_t(n));
  int err = 0;
  const char* msg = gzerror(f, &err);
  const bool bad = n < 0 || (err != Z_OK && err != Z_STREAM_END);
  const std::string emsg = msg ? msg : "";
  gzclose(f);
  LB_CHECK(!bad, "'{}': corrupt gzip data: {}", path, emsg);
  std::vector<std::string> texts;
  size_t pos = 0, line = 0;
  while (pos < all.size()) {
    size_t nl = all.find('\n', pos);
    if (nl == std::string::npos) nl = all.size();
    ++line;
    if (nl > pos) {
      auto j = nlohmann::json::parse(all.begin() + std::ptrdiff_t(pos), all.begin() + std::ptrdiff_t(nl), nullptr, false);
      LB_CHECK(!j.is_discarded() && j.is_object() && j.contains("text") && j["text"].is_string(),
               "'{}': line {} is not a JSON object with a \"text\" string", path, line);
      texts.push_back(j["text"].get<std::string>());
    }
    pos = nl + 1;
  }
  return texts;
}

std::vector<std::vector<int32_t>> eval_windows(const TextSet& set, const Tokenizer& tok, int64_t seqlen,
                                               BosMode bos) {
  LB_CHECK(seqlen >= 2, "sequence length must be at least 2, got {}", seqlen);
  std::vector<std::vector<int32_t>> windows;
  if (set.name == "c4") {
    const auto docs = read_jsonl_gz_texts(set.files[0].path);
    LB_CHECK(!docs.empty(), "'{}' holds no documents", set.files[0].path);
    PyRandom rng(0);
    std::map<int64_t, std::vector<int32_t>> cache;
    for (int w = 0; w < 256; ++w) {
      const std::vector<int32_t>* ids = nullptr;
      int64_t doc = 0;
      while (true) {
        doc = rng.randint(0, int64_t(docs.size()) - 1);
        auto it = cache.find(doc);
        if (it == cache.end()) it = cache.emplace(doc, tok.encode(docs[size_t(doc)], bos)).first;
        if (int64_t(it->second.size()) >= seqlen) {
          ids = &it->second;
          break;
        }
      }
      // As in GPTQ, a document of exactly seqlen tokens leaves randint an empty range.
      LB_CHECK(int64_t(ids->size()) > seqlen, "c4: document {} has exactly {} tokens; GPTQ's sampler fails on it too",
               doc, seqlen);
      const int64_t start = rng.randint(0, int64_t(ids->size()) - seqlen - 1);
      windows.emplace_back(ids->begin() + start, ids->begin() + start + seqlen);
    }
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
