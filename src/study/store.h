// The results store of a study: one SQLite file.
//
//   meta     (key, value)                     schema_version, study (the study's name), created
//   runs     one row per `lowbit study` run: started, finished (NULL when it did not end: killed),
//            the spec's path and text, lowbit version and commit, host, device, threads
//   cells    one row per quantized model (cell): key, model (name, path, weights SHA-256),
//            method (spec verbatim, resolved, name, #W #A #G), calibration (key and identity),
//            the quantization's seconds, and the cell's position in the spec (ord)
//   results  one row per (cell, evaluation, metric): value, stderr, n, the evaluation's seconds,
//            peak memory, device, threads, lowbit version and commit, the run, a timestamp, and
//            the full identity as JSON (PROTOCOL.md, "What every result records");
//            UNIQUE (cell_key, eval_key, metric)
//
// Writes: an evaluation's metrics (and its cell, the first time) go in one transaction, so a
// study killed at any moment leaves every evaluation either stored whole or not at all. The
// journal is a write-ahead log (concurrent readers never block the writer nor see a partial
// evaluation), synchronous=FULL. One writer at a time: lock() takes an exclusive flock on the
// file, released when the Store goes (or the process dies).
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

struct sqlite3;

namespace lowbit::study {

struct CellRecord {
  std::string key, model, model_path, model_sha256;
  std::string method, method_name, resolved;
  double w = 16;
  int a = 16;
  int64_t g = -1;
  std::string calibration;       // key, or "none"
  std::string calibration_json;  // Calibration::identity(), or "null"
  double quantize_seconds = 0;
  int64_t ord = 0;
};

struct MetricValue {
  std::string metric;
  double value = 0;
  std::optional<double> stderr_;
  int64_t n = 0;
};

// What is recorded beside an evaluation's metrics.
struct EvalRecord {
  std::string eval, eval_key, kind;  // "wikitext2", its key, "perplexity" / "multiple_choice"
  double seconds = 0;
  int64_t peak_rss_bytes = 0;  // core/process.h's peak_rss()
  std::string device;
  int threads = 0;
  int64_t run_id = 0;
  std::string identity;  // JSON
};

struct ResultRecord {
  std::string cell_key, eval, eval_key, kind, metric;
  double value = 0;
  std::optional<double> stderr_;
  int64_t n = 0;
  double seconds = 0;
  int64_t peak_rss_bytes = 0;
  std::string device;
  int threads = 0;
  std::string lowbit_version, git_commit, created, identity;
  int64_t run_id = 0;
};

struct RunRecord {
  int64_t id = 0;
  std::string started, finished, spec_path, spec_text, lowbit_version, git_commit, host, device;
  int threads = 0;
};

class Store {
 public:
  enum class Mode { ReadOnly, ReadWrite };
  // Opens (ReadWrite: creating) the store; throws naming the file when it cannot, or when it is
  // not a lowbit study store.
  Store(const std::string& path, Mode mode);
  ~Store();
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  // What a file holds: nothing yet (absent, empty, or created by a run killed before its schema
  // was committed), a study store, or something else. Throws for files SQLite cannot read.
  enum class Kind { Empty, Study, Other };
  static Kind probe(const std::string& path);

  const std::string& path() const { return path_; }
  // Takes the writer's lock; throws when another process holds it.
  void lock();

  std::optional<std::string> study_name() const;
  void set_study_name(const std::string& name);

  int64_t begin_run(const RunRecord& r);
  void finish_run(int64_t id);

  // (cell key, evaluation key) of every stored evaluation.
  std::set<std::pair<std::string, std::string>> stored_evaluations() const;
  int64_t result_count() const;
  // The weights SHA-256 recorded for a model, if any cell of it is stored.
  std::optional<std::string> model_sha256(const std::string& model) const;

  // One evaluation's metrics, with its cell (inserted the first time), in one transaction.
  void write_evaluation(const CellRecord& cell, const EvalRecord& eval, const std::vector<MetricValue>& metrics);

  std::vector<CellRecord> cells() const;      // by ord, then key
  std::vector<ResultRecord> results() const;  // by cell key, evaluation key, metric
  std::vector<RunRecord> runs() const;

 private:
  void exec(const char* sql) const;
  std::string path_;
  sqlite3* db_ = nullptr;
  int lock_fd_ = -1;
};

}  // namespace lowbit::study
