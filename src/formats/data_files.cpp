#include "formats/data_files.h"

#include "core/error.h"
#include "core/hash.h"

#include <nlohmann/json.hpp>
#include <zlib.h>

#include <cstdlib>
#include <filesystem>
#include <map>

namespace lowbit {

namespace fs = std::filesystem;

namespace {

// Canonical files (SHA-256 of the files Hugging Face `datasets`, GPTQ and llama.cpp read).
const std::map<std::string, std::string>& known_sha256() {
  static const std::map<std::string, std::string> m = {
      {"wikitext2/wiki.test.raw", "173c87a53759e0201f33e0ccf978e510c2042d7f2cb78229d9a50d79b9e7dd08"},
      {"ptb/ptb.train.txt", "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf"},
      {"ptb/ptb.valid.txt", "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2"},
      {"ptb/ptb.test.txt", "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0"},
      // llama.cpp's derived HellaSwag text (klosax/hellaswag_text_data, PROVENANCE.md).
      {"hellaswag/hellaswag_val_full.txt", "d572539320eb2050e858ca34b495bbe2103e3b3f1391a9c3bcdf215b0bb93bd1"},
  };
  return m;
}

}  // namespace

DatasetFile checked_data_file(const std::string& data_dir, const std::string& rel, const std::string& set,
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

bool is_named_dataset(const std::string& name, DatasetRole role) {
  if (name == "wikitext2" || name == "ptb" || name == "c4") return true;
  return role == DatasetRole::Evaluation && (name == "ptb-new" || name == "c4-new");
}

std::string resolve_data_dir(const std::string& flag_value) {
  if (!flag_value.empty()) return flag_value;
  const char* env = std::getenv("LOWBIT_DATA");
  LB_CHECK(env && *env, "no data directory: pass --data-dir DIR or set LOWBIT_DATA");
  return env;
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

std::vector<std::vector<int32_t>> draw_document_windows(const std::vector<std::string>& docs, const Tokenizer& tok,
                                                        int64_t count, int64_t seqlen, PyRandom& rng, BosMode bos,
                                                        const std::string& what) {
  LB_CHECK(!docs.empty(), "{}: no documents to draw windows from", what);
  std::vector<std::vector<int32_t>> windows;
  std::map<int64_t, std::vector<int32_t>> cache;
  int64_t short_docs = 0;
  for (int64_t w = 0; w < count; ++w) {
    const std::vector<int32_t>* ids = nullptr;
    int64_t doc = 0;
    while (true) {
      doc = rng.randint(0, int64_t(docs.size()) - 1);
      auto it = cache.find(doc);
      if (it == cache.end()) {
        it = cache.emplace(doc, tok.encode(docs[size_t(doc)], bos)).first;
        if (int64_t(it->second.size()) < seqlen) ++short_docs;
      }
      if (int64_t(it->second.size()) >= seqlen) {
        ids = &it->second;
        break;
      }
      // GPTQ loops forever when no document is long enough; stop with a clear error instead.
      LB_CHECK(short_docs < int64_t(docs.size()), "{}: no document has {} tokens or more", what, seqlen);
    }
    // As in GPTQ, a document of exactly seqlen tokens leaves randint an empty range.
    LB_CHECK(int64_t(ids->size()) > seqlen, "{}: document {} has exactly {} tokens; GPTQ's sampler fails on it too",
             what, doc, seqlen);
    const int64_t start = rng.randint(0, int64_t(ids->size()) - seqlen - 1);
    windows.emplace_back(ids->begin() + start, ids->begin() + start + seqlen);
  }
  return windows;
}

std::vector<std::vector<int32_t>> draw_stream_windows(const std::vector<int32_t>& ids, int64_t count, int64_t seqlen,
                                                      PyRandom& rng, const std::string& what) {
  LB_CHECK(int64_t(ids.size()) > seqlen, "{}: {} tokens, too few for windows of {} (need more than {})", what,
           ids.size(), seqlen, seqlen);
  std::vector<std::vector<int32_t>> windows;
  for (int64_t w = 0; w < count; ++w) {
    const int64_t start = rng.randint(0, int64_t(ids.size()) - seqlen - 1);
    windows.emplace_back(ids.begin() + start, ids.begin() + start + seqlen);
  }
  return windows;
}

}  // namespace lowbit
