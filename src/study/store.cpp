#include "study/store.h"

#include "core/error.h"
#include "study/store_backend.h"

#include <unistd.h>

namespace lowbit::study {

bool is_postgres_uri(const std::string& db) {
  return db.starts_with("postgresql://") || db.starts_with("postgres://");
}

std::string redact_db(const std::string& db) {
  if (!is_postgres_uri(db)) return db;
  std::string out = db;
  // postgresql://user:password@host/...: the password is between the first ':' after the scheme
  // and the '@' that ends the user part.
  const size_t start = out.find("://") + 3;
  const size_t at = out.find('@', start);
  const size_t slash = out.find('/', start);
  if (at != std::string::npos && (slash == std::string::npos || at < slash)) {
    const size_t colon = out.find(':', start);
    if (colon != std::string::npos && colon < at) out = out.substr(0, colon + 1) + "***" + out.substr(at);
  }
  // ...?password=...&...: a parameter of the query.
  for (size_t p = out.find('?'); p != std::string::npos; p = out.find('&', p + 1)) {
    if (out.compare(p + 1, 9, "password=") != 0) continue;
    const size_t end = out.find('&', p + 1);
    out = out.substr(0, p + 10) + "***" + (end == std::string::npos ? "" : out.substr(end));
  }
  return out;
}

std::string this_host() {
  char buf[256] = {};
  if (::gethostname(buf, sizeof buf - 1) != 0) return "unknown";
  return buf;
}

void StoreBackend::no_queue() const {
  fail("results store '{}' is a SQLite file; the work queue of `lowbit study --worker` and --status needs a "
       "PostgreSQL store (--db postgresql://...)", name_);
}
void StoreBackend::register_study(const std::string&, const std::vector<WorkItem>&) { no_queue(); }
Claim StoreBackend::claim(const WorkerInfo&, double) { no_queue(); }
void StoreBackend::heartbeat(const std::string&, double) { no_queue(); }
void StoreBackend::start_heartbeat(const std::string&, double) { no_queue(); }
void StoreBackend::fail_items(const std::string&, const std::string&, const std::string&, int) { no_queue(); }
int64_t StoreBackend::retry_failed() { no_queue(); }
int64_t StoreBackend::open_items() const { no_queue(); }
QueueStatus StoreBackend::queue_status() const { no_queue(); }

Store::Store(const std::string& path, Mode mode)
    : path_(path), b_(is_postgres_uri(path) ? open_pg_store(path, mode) : open_sqlite_store(path, mode)) {}

Store::~Store() = default;

Store::Kind Store::probe(const std::string& path) {
  return is_postgres_uri(path) ? probe_pg_store(path) : probe_sqlite_store(path);
}

void Store::lock() { b_->lock(); }
std::optional<std::string> Store::study_name() const { return b_->study_name(); }
void Store::set_study_name(const std::string& name) { b_->set_study_name(name); }
int64_t Store::begin_run(const RunRecord& r) { return b_->begin_run(r); }
void Store::finish_run(int64_t id) { b_->finish_run(id); }
std::set<std::pair<std::string, std::string>> Store::stored_evaluations() const { return b_->stored_evaluations(); }
int64_t Store::result_count() const { return b_->result_count(); }
std::optional<std::string> Store::model_sha256(const std::string& model) const { return b_->model_sha256(model); }
bool Store::write_evaluation(const CellRecord& cell, const EvalRecord& eval, const std::vector<MetricValue>& metrics,
                             const std::string& worker) {
  return b_->write_evaluation(cell, eval, metrics, worker);
}
std::vector<CellRecord> Store::cells() const { return b_->cells(); }
std::vector<ResultRecord> Store::results() const { return b_->results(); }
std::vector<RunRecord> Store::runs() const { return b_->runs(); }
void Store::import_study(const std::string& study, const std::vector<RunRecord>& runs,
                         const std::vector<CellRecord>& cells, const std::vector<ResultRecord>& results) {
  b_->import_study(study, runs, cells, results);
}
void Store::register_study(const std::string& name, const std::vector<WorkItem>& items) {
  b_->register_study(name, items);
}
Claim Store::claim(const WorkerInfo& w, double lease_seconds) { return b_->claim(w, lease_seconds); }
void Store::heartbeat(const std::string& worker, double lease_seconds) { b_->heartbeat(worker, lease_seconds); }
void Store::start_heartbeat(const std::string& worker, double lease_seconds) {
  b_->start_heartbeat(worker, lease_seconds);
}
void Store::fail_items(const std::string& worker, const std::string& cell_key, const std::string& error, int retries) {
  b_->fail_items(worker, cell_key, error, retries);
}
int64_t Store::retry_failed() { return b_->retry_failed(); }
int64_t Store::open_items() const { return b_->open_items(); }
QueueStatus Store::queue_status() const { return b_->queue_status(); }

}  // namespace lowbit::study
