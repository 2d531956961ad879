// The two back ends behind study::Store (store.h): SQLite (store_sqlite.cpp) and PostgreSQL
// (store_pg.cpp). The contracts are Store's; the work-queue calls default to an error, since
// only PostgreSQL holds a queue.
#pragma once

#include "study/store.h"

#include <memory>

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

std::unique_ptr<StoreBackend> open_sqlite_store(const std::string& path, Store::Mode mode);
Store::Kind probe_sqlite_store(const std::string& path);
std::unique_ptr<StoreBackend> open_pg_store(const std::string& uri, Store::Mode mode);
Store::Kind probe_pg_store(const std::string& uri);

}  // namespace lowbit::study
