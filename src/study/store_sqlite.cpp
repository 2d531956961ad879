// The SQLite back end of study::Store: one file, one writer at a time (store.h).
#include "study/store_backend.h"

#include "core/error.h"
#include "core/process.h"
#include "core/version.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sqlite3.h>
#include <sys/file.h>
#include <unistd.h>

#include <cmath>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <string>

namespace lowbit::study {

namespace {

constexpr int kSchemaVersion = 1;

constexpr const char* kSchema = R"sql(
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
  id INTEGER PRIMARY KEY,
  started TEXT NOT NULL, finished TEXT,
  spec_path TEXT NOT NULL, spec_text TEXT NOT NULL,
  lowbit_version TEXT NOT NULL, git_commit TEXT NOT NULL,
  host TEXT NOT NULL, device TEXT NOT NULL, threads INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS cells (
  key TEXT PRIMARY KEY,
  model TEXT NOT NULL, model_path TEXT NOT NULL, model_sha256 TEXT NOT NULL,
  method TEXT NOT NULL, method_name TEXT NOT NULL, resolved TEXT NOT NULL,
  w REAL NOT NULL, a INTEGER NOT NULL, g INTEGER NOT NULL,
  calibration TEXT NOT NULL, calibration_json TEXT NOT NULL,
  quantize_seconds REAL NOT NULL, ord INTEGER NOT NULL, created TEXT NOT NULL,
  train_seconds REAL NOT NULL DEFAULT 0, train_loss REAL, training TEXT NOT NULL DEFAULT 'null');
CREATE TABLE IF NOT EXISTS results (
  id INTEGER PRIMARY KEY,
  cell_key TEXT NOT NULL REFERENCES cells(key),
  eval TEXT NOT NULL, eval_key TEXT NOT NULL, kind TEXT NOT NULL,
  metric TEXT NOT NULL, value REAL NOT NULL, stderr REAL, n INTEGER NOT NULL,
  seconds REAL NOT NULL, peak_rss_bytes INTEGER NOT NULL, device TEXT NOT NULL, threads INTEGER NOT NULL,
  lowbit_version TEXT NOT NULL, git_commit TEXT NOT NULL, run_id INTEGER NOT NULL REFERENCES runs(id),
  created TEXT NOT NULL, identity TEXT NOT NULL,
  UNIQUE (cell_key, eval_key, metric));
)sql";

// A prepared statement, finalized when it goes.
class Stmt {
 public:
  Stmt(sqlite3* db, const char* sql) : db_(db) {
    if (sqlite3_prepare_v2(db, sql, -1, &s_, nullptr) != SQLITE_OK)
      fail("results store: {}", sqlite3_errmsg(db));
  }
  ~Stmt() { sqlite3_finalize(s_); }
  Stmt& bind(int i, const std::string& v) {
    check(sqlite3_bind_text(s_, i, v.data(), int(v.size()), SQLITE_TRANSIENT));
    return *this;
  }
  Stmt& bind(int i, double v) {
    check(sqlite3_bind_double(s_, i, v));
    return *this;
  }
  Stmt& bind(int i, int64_t v) {
    check(sqlite3_bind_int64(s_, i, v));
    return *this;
  }
  Stmt& bind(int i, int v) { return bind(i, int64_t(v)); }
  Stmt& bind(int i, const std::optional<double>& v) {
    if (v && std::isfinite(*v)) return bind(i, *v);
    check(sqlite3_bind_null(s_, i));
    return *this;
  }
  // true while a row is available.
  bool step() {
    const int rc = sqlite3_step(s_);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    fail("results store: {}", sqlite3_errmsg(db_));
  }
  std::string text(int i) const {
    const unsigned char* t = sqlite3_column_text(s_, i);
    return t ? std::string(reinterpret_cast<const char*>(t), size_t(sqlite3_column_bytes(s_, i))) : std::string();
  }
  double real(int i) const { return sqlite3_column_double(s_, i); }
  int64_t integer(int i) const { return sqlite3_column_int64(s_, i); }
  bool null(int i) const { return sqlite3_column_type(s_, i) == SQLITE_NULL; }

 private:
  void check(int rc) {
    if (rc != SQLITE_OK) fail("results store: bind: {}", sqlite3_errmsg(db_));
  }
  sqlite3* db_;
  sqlite3_stmt* s_ = nullptr;
};

class SqliteStore final : public StoreBackend {
 public:
  SqliteStore(const std::string& path, Store::Mode mode);
  ~SqliteStore() override;
  void lock() override;
  std::optional<std::string> study_name() const override;
  void set_study_name(const std::string& name) override;
  int64_t begin_run(const RunRecord& r) override;
  void finish_run(int64_t id) override;
  std::set<std::pair<std::string, std::string>> stored_evaluations() const override;
  int64_t result_count() const override;
  std::optional<std::string> model_sha256(const std::string& model) const override;
  bool write_evaluation(const CellRecord& cell, const EvalRecord& eval, const std::vector<MetricValue>& metrics,
                        const std::string& worker) override;
  std::vector<CellRecord> cells() const override;
  std::vector<ResultRecord> results() const override;
  std::vector<RunRecord> runs() const override;
  void import_study(const std::string& study, const std::vector<RunRecord>& runs, const std::vector<CellRecord>& cells,
                    const std::vector<ResultRecord>& results) override;

 private:
  void exec(const char* sql) const;
  bool has_training_columns() const;
  std::string path_;
  bool training_columns_ = true;
  sqlite3* db_ = nullptr;
  int lock_fd_ = -1;
};

}  // namespace

SqliteStore::SqliteStore(const std::string& path, Store::Mode mode) : StoreBackend(path), path_(path) {
  const int flags = mode == Store::Mode::ReadOnly ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE;
  if (sqlite3_open_v2(path.c_str(), &db_, flags, nullptr) != SQLITE_OK) {
    const std::string msg = db_ ? sqlite3_errmsg(db_) : "out of memory";
    sqlite3_close(db_);
    db_ = nullptr;
    fail("cannot open results store '{}': {}", path, msg);
  }
  sqlite3_busy_timeout(db_, 10000);
  try {
    if (mode == Store::Mode::ReadWrite) {
      exec("PRAGMA journal_mode=WAL");
      exec("PRAGMA synchronous=FULL");
      exec("PRAGMA foreign_keys=ON");
      exec("BEGIN IMMEDIATE");
      exec(kSchema);
      Stmt s(db_, "INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', ?1), ('created', ?2)");
      s.bind(1, std::to_string(kSchemaVersion)).bind(2, utc_now()).step();
      if (!has_training_columns())
        for (const char* sql : kAddTrainingColumns) exec(sql);
      exec("COMMIT");
    }
    training_columns_ = has_training_columns();
    Stmt s(db_, "SELECT value FROM meta WHERE key = 'schema_version'");
    LB_CHECK(s.step(), "'{}' is not a lowbit study store (no schema version)", path);
    LB_CHECK(s.text(0) == std::to_string(kSchemaVersion), "'{}': study store schema version {} is not supported (this "
             "lowbit reads version {})", path, s.text(0), kSchemaVersion);
  } catch (const Error& e) {
    sqlite3_close(db_);
    db_ = nullptr;
    // A file that is not a database, or not this kind, fails in the first statement.
    if (std::string(e.what()).find(path) != std::string::npos) throw;
    fail("'{}' is not a lowbit study store ({})", path, e.what());
  }
}

Store::Kind probe_sqlite_store(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec) || std::filesystem::file_size(path, ec) == 0) return Store::Kind::Empty;
  sqlite3* db = nullptr;
  if (sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr) != SQLITE_OK) {
    const std::string msg = db ? sqlite3_errmsg(db) : "out of memory";
    sqlite3_close(db);
    fail("cannot open results store '{}': {}", path, msg);
  }
  sqlite3_busy_timeout(db, 10000);
  Store::Kind kind = Store::Kind::Empty;
  try {
    Stmt s(db, "SELECT COUNT(*), COALESCE(SUM(name = 'meta'), 0) FROM sqlite_master WHERE type = 'table'");
    s.step();
    kind = s.integer(0) == 0 ? Store::Kind::Empty : s.integer(1) > 0 ? Store::Kind::Study : Store::Kind::Other;
  } catch (const Error& e) {
    sqlite3_close(db);
    fail("'{}' is not a lowbit study store ({})", path, e.what());
  }
  sqlite3_close(db);
  return kind;
}

SqliteStore::~SqliteStore() {
  if (db_) sqlite3_close(db_);
  if (lock_fd_ >= 0) ::close(lock_fd_);
}

void SqliteStore::exec(const char* sql) const {
  char* err = nullptr;
  if (sqlite3_exec(db_, sql, nullptr, nullptr, &err) != SQLITE_OK) {
    const std::string msg = err ? err : sqlite3_errmsg(db_);
    sqlite3_free(err);
    fail("results store: {}", msg);
  }
}

bool SqliteStore::has_training_columns() const {
  Stmt s(db_, "SELECT COUNT(*) FROM pragma_table_info('cells') WHERE name = 'training'");
  s.step();
  return s.integer(0) > 0;
}

void SqliteStore::lock() {
  if (lock_fd_ >= 0) return;
  const int fd = ::open(path_.c_str(), O_RDWR | O_CLOEXEC);
  LB_CHECK(fd >= 0, "cannot open '{}' to lock it", path_);
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    ::close(fd);
    fail("results store '{}' is in use by another `lowbit study` (it holds the writer's lock)", path_);
  }
  lock_fd_ = fd;
}

std::optional<std::string> SqliteStore::study_name() const {
  Stmt s(db_, "SELECT value FROM meta WHERE key = 'study'");
  if (!s.step()) return std::nullopt;
  return s.text(0);
}

void SqliteStore::set_study_name(const std::string& name) {
  Stmt s(db_, "INSERT OR REPLACE INTO meta(key, value) VALUES ('study', ?1)");
  s.bind(1, name).step();
}

int64_t SqliteStore::begin_run(const RunRecord& r) {
  Stmt s(db_, "INSERT INTO runs(started, spec_path, spec_text, lowbit_version, git_commit, host, device, threads) "
              "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)");
  s.bind(1, utc_now()).bind(2, r.spec_path).bind(3, r.spec_text).bind(4, std::string(kVersion));
  s.bind(5, std::string(kGitCommit)).bind(6, this_host()).bind(7, r.device).bind(8, r.threads).step();
  return sqlite3_last_insert_rowid(db_);
}

void SqliteStore::finish_run(int64_t id) {
  Stmt s(db_, "UPDATE runs SET finished = ?1 WHERE id = ?2");
  s.bind(1, utc_now()).bind(2, id).step();
}

std::set<std::pair<std::string, std::string>> SqliteStore::stored_evaluations() const {
  std::set<std::pair<std::string, std::string>> out;
  Stmt s(db_, "SELECT DISTINCT cell_key, eval_key FROM results");
  while (s.step()) out.emplace(s.text(0), s.text(1));
  return out;
}

int64_t SqliteStore::result_count() const {
  Stmt s(db_, "SELECT COUNT(*) FROM results");
  s.step();
  return s.integer(0);
}

std::optional<std::string> SqliteStore::model_sha256(const std::string& model) const {
  Stmt s(db_, "SELECT model_sha256 FROM cells WHERE model = ?1 LIMIT 1");
  s.bind(1, model);
  if (!s.step()) return std::nullopt;
  return s.text(0);
}

bool SqliteStore::write_evaluation(const CellRecord& c, const EvalRecord& e, const std::vector<MetricValue>& metrics,
                                   const std::string& worker) {
  if (!worker.empty()) no_queue();
  LB_ASSERT(lock_fd_ >= 0);
  exec("BEGIN IMMEDIATE");
  try {
    const std::string now = utc_now();
    Stmt cs(db_, "INSERT OR IGNORE INTO cells(key, model, model_path, model_sha256, method, method_name, resolved, w, "
                 "a, g, calibration, calibration_json, quantize_seconds, ord, created, train_seconds, train_loss, "
                 "training) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)");
    cs.bind(1, c.key).bind(2, c.model).bind(3, c.model_path).bind(4, c.model_sha256).bind(5, c.method);
    cs.bind(6, c.method_name).bind(7, c.resolved).bind(8, c.w).bind(9, c.a).bind(10, c.g).bind(11, c.calibration);
    cs.bind(12, c.calibration_json).bind(13, c.quantize_seconds).bind(14, c.ord).bind(15, now);
    cs.bind(16, c.train_seconds).bind(17, c.train_loss).bind(18, c.training).step();
    for (const MetricValue& m : metrics) {
      // A plain INSERT: a result stored twice is a broken invariant, and fails the transaction.
      Stmt rs(db_, "INSERT INTO results(cell_key, eval, eval_key, kind, metric, value, stderr, n, seconds, "
                   "peak_rss_bytes, device, threads, lowbit_version, git_commit, run_id, created, identity) "
                   "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)");
      rs.bind(1, c.key).bind(2, e.eval).bind(3, e.eval_key).bind(4, e.kind).bind(5, m.metric).bind(6, m.value);
      rs.bind(7, m.stderr_).bind(8, m.n).bind(9, e.seconds).bind(10, e.peak_rss_bytes).bind(11, e.device);
      rs.bind(12, e.threads).bind(13, std::string(kVersion)).bind(14, std::string(kGitCommit)).bind(15, e.run_id);
      rs.bind(16, now).bind(17, e.identity).step();
    }
    exec("COMMIT");
  } catch (...) {
    sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
    throw;
  }
  return true;
}

std::vector<CellRecord> SqliteStore::cells() const {
  std::vector<CellRecord> out;
  Stmt s(db_, fmt::format("SELECT {} FROM cells ORDER BY ord, key",
                          training_columns_ ? kCellColumns : kCellColumnsUntrained).c_str());
  while (s.step()) out.push_back(cell_from_row(s));
  return out;
}

std::vector<ResultRecord> SqliteStore::results() const {
  std::vector<ResultRecord> out;
  Stmt s(db_, fmt::format("SELECT {} FROM results ORDER BY cell_key, eval_key, metric", kResultColumns).c_str());
  while (s.step()) out.push_back(result_from_row(s));
  return out;
}

std::vector<RunRecord> SqliteStore::runs() const {
  std::vector<RunRecord> out;
  Stmt s(db_, fmt::format("SELECT {} FROM runs ORDER BY id", kRunColumns).c_str());
  while (s.step()) out.push_back(run_from_row(s));
  return out;
}

void SqliteStore::import_study(const std::string& study, const std::vector<RunRecord>& runs,
                               const std::vector<CellRecord>& cells, const std::vector<ResultRecord>& results) {
  LB_ASSERT(lock_fd_ >= 0);
  exec("BEGIN IMMEDIATE");
  try {
    Stmt n(db_, "SELECT (SELECT COUNT(*) FROM meta WHERE key = 'study') + (SELECT COUNT(*) FROM runs) + "
                "(SELECT COUNT(*) FROM cells) + (SELECT COUNT(*) FROM results)");
    n.step();
    LB_CHECK(n.integer(0) == 0, "results store '{}' is not empty: a study is copied only into a new store", path_);
    Stmt m(db_, "INSERT INTO meta(key, value) VALUES ('study', ?1)");
    m.bind(1, study).step();
    for (const RunRecord& r : runs) {
      Stmt s(db_, "INSERT INTO runs(id, started, finished, spec_path, spec_text, lowbit_version, git_commit, host, "
                  "device, threads) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)");
      s.bind(1, r.id).bind(2, r.started);
      if (r.finished.empty()) s.bind(3, std::optional<double>());
      else s.bind(3, r.finished);
      s.bind(4, r.spec_path).bind(5, r.spec_text).bind(6, r.lowbit_version).bind(7, r.git_commit).bind(8, r.host);
      s.bind(9, r.device).bind(10, r.threads).step();
    }
    for (const CellRecord& c : cells) {
      Stmt s(db_, "INSERT INTO cells(key, model, model_path, model_sha256, method, method_name, resolved, w, a, g, "
                  "calibration, calibration_json, quantize_seconds, ord, created, train_seconds, train_loss, training) "
                  "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)");
      s.bind(1, c.key).bind(2, c.model).bind(3, c.model_path).bind(4, c.model_sha256).bind(5, c.method);
      s.bind(6, c.method_name).bind(7, c.resolved).bind(8, c.w).bind(9, c.a).bind(10, c.g).bind(11, c.calibration);
      s.bind(12, c.calibration_json).bind(13, c.quantize_seconds).bind(14, c.ord).bind(15, c.created);
      s.bind(16, c.train_seconds).bind(17, c.train_loss).bind(18, c.training).step();
    }
    for (const ResultRecord& r : results) {
      Stmt s(db_, "INSERT INTO results(cell_key, eval, eval_key, kind, metric, value, stderr, n, seconds, "
                  "peak_rss_bytes, device, threads, lowbit_version, git_commit, run_id, created, identity) "
                  "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)");
      s.bind(1, r.cell_key).bind(2, r.eval).bind(3, r.eval_key).bind(4, r.kind).bind(5, r.metric).bind(6, r.value);
      s.bind(7, r.stderr_).bind(8, r.n).bind(9, r.seconds).bind(10, r.peak_rss_bytes).bind(11, r.device);
      s.bind(12, r.threads).bind(13, r.lowbit_version).bind(14, r.git_commit).bind(15, r.run_id);
      s.bind(16, r.created).bind(17, r.identity).step();
    }
    exec("COMMIT");
  } catch (...) {
    sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
    throw;
  }
}

std::unique_ptr<StoreBackend> open_sqlite_store(const std::string& path, Store::Mode mode) {
  return std::make_unique<SqliteStore>(path, mode);
}

}  // namespace lowbit::study
