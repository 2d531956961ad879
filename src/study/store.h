// The results store of a study: one SQLite file (one machine, one `lowbit study` at a time), or
// one PostgreSQL database (any number of workers on any machines sharing the study and its work
// queue). Both back ends hold the same tables with the same meaning; the Store below is the one
// interface the runner and the reports use, and picks the back end from the name it is given
// (is_postgres_uri).
//
//   meta     (key, value)                     schema_version, study (the study's name), created
//   runs     one row per `lowbit study` run: started, finished (NULL when it did not end: killed),
//            the spec's path and text, lowbit version and commit, host, device, threads
//   cells    one row per quantized model (cell): key, model (name, path, weights SHA-256),
//            method (spec verbatim, resolved, name, #W #A #G), calibration (key and identity),
//            the quantization's seconds, and the cell's position in the spec (ord); a trained
//            cell ([[finetune]], [[distill]]) also its training's seconds, final loss and record
//            (JSON: the training key, every option, the loss log); stores written before these
//            columns existed gain them (0, NULL, 'null') when opened for writing, and read as such
//   results  one row per (cell, evaluation, metric): value, stderr, n, the evaluation's seconds,
//            peak memory, device, threads, lowbit version and commit, the run, a timestamp, and
//            the full identity as JSON (PROTOCOL.md, "What every result records");
//            UNIQUE (cell_key, eval_key, metric)
//
// PostgreSQL adds the work queue (store_pg.cpp):
//   work     one row per (cell, evaluation) of the study's grid: status (pending, running, done,
//            failed), the lease (worker, host, device, claimed, heartbeat, lease_until: server
//            time), failures and the last error, takeovers, the seconds the evaluation took
//   meta     also holds 'plan': the grid's cell and evaluation keys, so that a worker started
//            with another spec under the same study name is refused
//
// Writes: an evaluation's metrics (and its cell, the first time) go in one transaction, so a
// study killed at any moment leaves every evaluation either stored whole or not at all. The
// journal is a write-ahead log (concurrent readers never block the writer nor see a partial
// evaluation), synchronous=FULL. One writer at a time: lock() takes an exclusive flock on the
// file, released when the Store goes (or the process dies).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

namespace lowbit::study {

class StoreBackend;  // store_backend.h

// Whether `db` names a PostgreSQL database (postgresql://... or postgres://..., libpq's URI form)
// rather than a SQLite file.
bool is_postgres_uri(const std::string& db);
// `db` with a URI's password replaced by "***", for messages and logs.
std::string redact_db(const std::string& db);
// This machine's host name, as runs and leases record it.
std::string this_host();

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
  std::string created;  // when stored (read back; write_evaluation sets it)
  double train_seconds = 0;          // the training's optimizer steps (0: not trained)
  std::optional<double> train_loss;  // the training's loss at its last step
  // {"kind": "finetune"|"distill", "key": TrainSpec::key, "options", "log", ...}; "null" untrained.
  std::string training = "null";
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

// --- The work queue (PostgreSQL only) ---------------------------------------------------------

// One (cell, evaluation) of the grid, with its position in the spec (claims go in that order).
struct WorkItem {
  std::string cell_key, eval_key;
  int64_t cell_ord = 0, eval_ord = 0;
};

// Who claims: `id` is unique per worker process (host, pid, run); host and device are shown by
// --status.
struct WorkerInfo {
  std::string id, host, device;
  int64_t run_id = 0;
};

// What a claim took: evaluations of one cell (in the spec's order), each leased to the worker.
// Empty cell_key: nothing claimable now.
struct Claim {
  std::string cell_key;
  std::vector<std::string> eval_keys;
  int64_t taken_over = 0;  // of them, items whose previous lease had expired
};

struct QueueItem {
  std::string cell_key, eval_key, status, worker, host, device, error;
  double lease_age = 0;   // seconds since the claim
  double lease_left = 0;  // seconds until the lease expires (negative: expired)
  int64_t failures = 0, takeovers = 0;
};

struct QueueStatus {
  int64_t total = 0, done = 0, running = 0, failed = 0, pending = 0;
  std::vector<QueueItem> running_items, failed_items;
  // Seconds of work per finished item, from what the store measured (evaluations plus their
  // cells' quantizations); negative while nothing is finished.
  double seconds_per_item = -1;
  int64_t live_workers = 0;  // distinct workers holding a lease that has not expired
};

class Store {
 public:
  enum class Mode { ReadOnly, ReadWrite };
  // Opens (ReadWrite: creating) the store; throws naming the file (or the database, password
  // left out) when it cannot, or when it is not a lowbit study store of this schema version.
  Store(const std::string& path, Mode mode);
  ~Store();
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  // What a file (or database) holds: nothing yet (absent, empty, or created by a run killed
  // before its schema was committed), a study store, or something else. Throws for files SQLite
  // cannot read and databases that cannot be reached.
  enum class Kind { Empty, Study, Other };
  static Kind probe(const std::string& path);

  const std::string& path() const { return path_; }
  // Takes the writer's lock; throws when another process holds it. (PostgreSQL: nothing to
  // take; its writers coordinate through the work queue.)
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
  // With `worker` (PostgreSQL), the same transaction marks the work item done, and only while the
  // worker still holds its lease: false (nothing written) when another worker took the item over.
  bool write_evaluation(const CellRecord& cell, const EvalRecord& eval, const std::vector<MetricValue>& metrics,
                        const std::string& worker = "");

  std::vector<CellRecord> cells() const;      // by ord, then key
  std::vector<ResultRecord> results() const;  // by cell key, evaluation key, metric
  std::vector<RunRecord> runs() const;

  // Copies a whole study into this store, in one transaction (`lowbit store copy`): its name,
  // runs (with their ids), cells and results, every field as recorded. Throws, writing nothing,
  // unless this store is empty (no study name, runs, cells nor results).
  void import_study(const std::string& study, const std::vector<RunRecord>& runs, const std::vector<CellRecord>& cells,
                    const std::vector<ResultRecord>& results);

  // --- The work queue: PostgreSQL only (SQLite throws, naming the store) ---
  //
  // Registers the study, idempotently and safely from many processes at once: the store gets its
  // name, its plan (the items' keys) and one work item per (cell, evaluation) the first time;
  // later calls with the same name and plan change nothing. Throws when the store belongs to
  // another study, or to this study with another grid. Items already in `results` are done.
  void register_study(const std::string& name, const std::vector<WorkItem>& items);
  // Claims, in one transaction, the first claimable item in the spec's order and every other
  // claimable item of its cell: claimable are pending items and running items whose lease
  // expired (a worker that died). Each is leased to the worker for `lease_seconds` (server time).
  Claim claim(const WorkerInfo& w, double lease_seconds);
  // Extends the leases of the worker's running items (called from the worker's heartbeat
  // thread, on the heartbeat's own connection: see start_heartbeat).
  void heartbeat(const std::string& worker, double lease_seconds);
  // Starts a thread that calls heartbeat() every lease_seconds / 4 on a connection of its own,
  // until the Store goes. Failures are retried at the next beat (a lost lease is detected when
  // the result is written).
  void start_heartbeat(const std::string& worker, double lease_seconds);
  // The worker's running items of `cell_key` failed with `error`: each counts one failure and
  // goes back to pending, or to failed once it has failed more than `retries` times.
  void fail_items(const std::string& worker, const std::string& cell_key, const std::string& error, int retries);
  // Puts every failed item back to pending with no failures counted (after the cause was fixed);
  // returns how many.
  int64_t retry_failed();
  // Items neither done nor failed (pending, or running under any lease).
  int64_t open_items() const;
  QueueStatus queue_status() const;

 private:
  std::string path_;
  std::unique_ptr<StoreBackend> b_;
};

}  // namespace lowbit::study
