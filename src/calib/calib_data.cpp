#include "calib/calib_data.h"

#include "core/error.h"
#include "core/hash.h"
#include "core/mapped_file.h"
#include "core/py_random.h"
#include "formats/text_datasets.h"

#include <filesystem>

namespace lowbit {

namespace {

constexpr const char* kWikiTrain = "wikitext2/wiki.train.raw";
constexpr const char* kPtbTrain = "ptb/ptb.train.txt";
constexpr const char* kC4Train = "c4/c4-train.00000-of-01024.json.gz";

const char* bos_name(BosMode b) { return b == BosMode::On ? "on" : b == BosMode::Off ? "off" : "auto"; }

}  // namespace

CalibrationSet resolve_calibration_set(const std::string& name, const std::string& data_dir) {
  CalibrationSet s;
  s.name = name;
  if (name == "wikitext2") {
    s.convention = "wikitext-2-raw-v1 train, rows joined \"\\n\\n\", random windows (GPTQ get_wikitext2)";
    s.files.push_back(checked_data_file(
        data_dir, kWikiTrain, "wikitext2 (calibration)",
        "; it is wiki.train.raw of wikitext-2-raw-v1.zip (the study's calibration set). Pass --calib ptb to "
        "calibrate on PTB train instead"));
  } else if (name == "ptb") {
    s.convention = "ptb_text_only train, rows joined \"\\n\\n\", random windows (GPTQ get_ptb)";
    s.files.push_back(checked_data_file(data_dir, kPtbTrain, "ptb (calibration)", ""));
  } else if (name == "c4") {
    s.convention = "allenai/c4 en train shard 0, document windows (GPTQ get_c4)";
    s.files.push_back(checked_data_file(
        data_dir, kC4Train, "c4 (calibration)",
        "; it is en/c4-train.00000-of-01024.json.gz of the allenai/c4 dataset on the Hugging Face Hub"));
  } else {
    LB_CHECK(std::filesystem::is_regular_file(name),
             "unknown calibration set '{}': not one of wikitext2, ptb, c4, and not a text file", name);
    s.convention = "text file, tokenized whole, random windows";
    s.files.push_back({name, sha256_file(name)});
  }
  return s;
}

Calibration make_calibration(const CalibrationSet& set, const Tokenizer& tok, int64_t nsamples, int64_t seqlen,
                             uint64_t seed, BosMode bos) {
  LB_CHECK(nsamples >= 1, "calibration: need at least one sample, got {}", nsamples);
  LB_CHECK(seqlen >= 2, "calibration: sequence length must be at least 2, got {}", seqlen);
  Calibration c;
  c.set = set;
  c.nsamples = nsamples;
  c.seqlen = seqlen;
  c.seed = seed;
  c.bos = bos_name(bos);
  PyRandom rng(seed);
  const std::string what = "calibration set '" + set.name + "'";
  if (set.name == "c4") {
    c.windows = draw_document_windows(read_jsonl_gz_texts(set.files[0].path), tok, nsamples, seqlen, rng, bos, what);
    return c;
  }
  std::string text;
  if (set.name == "wikitext2") text = join(wikitext_rows(read_file(set.files[0].path)), "\n\n");
  else if (set.name == "ptb") text = join(ptb_rows(read_file(set.files[0].path)), "\n\n");
  else text = read_file(set.files[0].path);
  c.windows = draw_stream_windows(tok.encode(text, bos), nsamples, seqlen, rng, what);
  return c;
}

nlohmann::json Calibration::identity() const {
  nlohmann::json files = nlohmann::json::array();
  for (const auto& f : set.files) files.push_back({{"path", f.path}, {"sha256", f.sha256}});
  return {{"set", set.name}, {"convention", set.convention}, {"files", files}, {"nsamples", nsamples},
          {"seqlen", seqlen}, {"seed", seed}, {"bos", bos}};
}

}  // namespace lowbit
