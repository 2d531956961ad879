// The two back ends behind study::Store (store.h): SQLite (store_sqlite.cpp) and PostgreSQL
// (store_pg.cpp). The contracts are Store's; the work-queue calls default to an error, since
// only PostgreSQL holds a queue.
#pragma once

#include "study/store.h"

#include <memory>
#include <string>

namespace lowbit::study {

class StoreBackend {
 public:
  virtual ~StoreBackend() = default;

  virtual void lock() = 0;
  virtual std::optional<std::string> study_name() const = 0;
  virtual void set_study_name(const std::string& name) = 0;
  virtual int64_t begin_run(const RunRecord& r) = 0;
  virtual void finish_run(int64_t id) = 0;
  virtual std::set<std::pair<std::string, std::string>> stored_evaluations() const = 0;
  virtual int64_t result_count() const = 0;
  virtual std::optional<std::string> model_sha256(const std::string& model) const = 0;
  virtual bool write_evaluation(const CellRecord& cell, const EvalRecord& eval,
                                const std::vector<MetricValue>& metrics, const std::string& worker) = 0;
  virtual std::vector<CellRecord> cells() const = 0;
  virtual std::vector<ResultRecord> results() const = 0;
  virtual std::vector<RunRecord> runs() const = 0;
  virtual void import_study(const std::string& study, const std::vector<RunRecord>& runs,
                            const std::vector<CellRecord>& cells, const std::vector<ResultRecord>& results) = 0;

  virtual void register_study(const std::string& name, const std::vector<WorkItem>& items);
  virtual Claim claim(const WorkerInfo& w, double lease_seconds);
  virtual void heartbeat(const std::string& worker, double lease_seconds);
  virtual void start_heartbeat(const std::string& worker, double lease_seconds);
  virtual void fail_items(const std::string& worker, const std::string& cell_key, const std::string& error,
                          int retries);
  virtual int64_t retry_failed();
  virtual int64_t open_items() const;
  virtual QueueStatus queue_status() const;

 protected:
  explicit StoreBackend(std::string name) : name_(std::move(name)) {}
  [[noreturn]] void no_queue() const;
  std::string name_;  // for messages (a URI without its password)
};

// The columns both back ends read for cells, results and runs, in this order, and the records of
// one row of them. Row: text(col), real(col), integer(col), null(col) of the current row.
inline constexpr const char* kCellColumns =
    "key, model, model_path, model_sha256, method, method_name, resolved, w, a, g, calibration, calibration_json, "
    "quantize_seconds, ord, created, train_seconds, train_loss, training";
// The same of a store written before the training columns existed.
inline constexpr const char* kCellColumnsUntrained =
    "key, model, model_path, model_sha256, method, method_name, resolved, w, a, g, calibration, calibration_json, "
    "quantize_seconds, ord, created, 0.0, NULL, 'null'";
// Adds the training columns to such a store (each back end runs these when they are missing).
inline constexpr const char* kAddTrainingColumns[] = {
    "ALTER TABLE cells ADD COLUMN train_seconds DOUBLE PRECISION NOT NULL DEFAULT 0",
    "ALTER TABLE cells ADD COLUMN train_loss DOUBLE PRECISION",
    "ALTER TABLE cells ADD COLUMN training TEXT NOT NULL DEFAULT 'null'"};
inline constexpr const char* kResultColumns =
    "cell_key, eval, eval_key, kind, metric, value, stderr, n, seconds, peak_rss_bytes, device, threads, "
    "lowbit_version, git_commit, run_id, created, identity";
inline constexpr const char* kRunColumns =
    "id, started, finished, spec_path, spec_text, lowbit_version, git_commit, host, device, threads";

template <class Row>
CellRecord cell_from_row(const Row& s) {
  CellRecord c;
  c.key = s.text(0);
  c.model = s.text(1);
  c.model_path = s.text(2);
  c.model_sha256 = s.text(3);
  c.method = s.text(4);
  c.method_name = s.text(5);
  c.resolved = s.text(6);
  c.w = s.real(7);
  c.a = int(s.integer(8));
  c.g = s.integer(9);
  c.calibration = s.text(10);
  c.calibration_json = s.text(11);
  c.quantize_seconds = s.real(12);
  c.ord = s.integer(13);
  c.created = s.text(14);
  c.train_seconds = s.real(15);
  if (!s.null(16)) c.train_loss = s.real(16);
  c.training = s.text(17);
  return c;
}

template <class Row>
ResultRecord result_from_row(const Row& s) {
  ResultRecord r;
  r.cell_key = s.text(0);
  r.eval = s.text(1);
  r.eval_key = s.text(2);
  r.kind = s.text(3);
  r.metric = s.text(4);
  r.value = s.real(5);
  if (!s.null(6)) r.stderr_ = s.real(6);
  r.n = s.integer(7);
  r.seconds = s.real(8);
  r.peak_rss_bytes = s.integer(9);
  r.device = s.text(10);
  r.threads = int(s.integer(11));
  r.lowbit_version = s.text(12);
  r.git_commit = s.text(13);
  r.run_id = s.integer(14);
  r.created = s.text(15);
  r.identity = s.text(16);
  return r;
}

template <class Row>
RunRecord run_from_row(const Row& s) {
  RunRecord r;
  r.id = s.integer(0);
  r.started = s.text(1);
  r.finished = s.text(2);
  r.spec_path = s.text(3);
  r.spec_text = s.text(4);
  r.lowbit_version = s.text(5);
  r.git_commit = s.text(6);
  r.host = s.text(7);
  r.device = s.text(8);
  r.threads = int(s.integer(9));
  return r;
}

std::unique_ptr<StoreBackend> open_sqlite_store(const std::string& path, Store::Mode mode);
Store::Kind probe_sqlite_store(const std::string& path);
std::unique_ptr<StoreBackend> open_pg_store(const std::string& uri, Store::Mode mode);
Store::Kind probe_pg_store(const std::string& uri);

}  // namespace lowbit::study
