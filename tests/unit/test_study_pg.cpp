// The PostgreSQL store's work queue against a real server (a private cluster started by
// tests/cli/pg_cluster.sh): idempotent registration, claims and leases (expiry, takeover,
// heartbeat), a lost lease writing nothing, failures retried then failed, and the queue's
// status. Skipped only when the PostgreSQL server binaries are not installed.
#include "core/error.h"
#include "study/store.h"
#include "test_util.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <thread>

namespace lowbit::study {
namespace {

const std::string kScript = std::string(LOWBIT_SOURCE_DIR) + "/tests/cli/pg_cluster.sh";

std::string run(const std::string& cmd) {
  std::string out;
  FILE* p = ::popen(cmd.c_str(), "r");
  if (p == nullptr) return out;
  char buf[512];
  while (std::fgets(buf, sizeof buf, p) != nullptr) out += buf;
  if (::pclose(p) != 0) return "";
  while (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

// One server for the whole suite; each test gets a database of its own.
class PgStore : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (std::system(("bash " + kScript + " available").c_str()) != 0) return;
    dir_ = new test::TempDir();
    uri_ = run("bash " + kScript + " start " + dir_->path.string());
  }
  static void TearDownTestSuite() {
    if (dir_ != nullptr) (void)std::system(("bash " + kScript + " stop " + dir_->path.string()).c_str());
    delete dir_;
    dir_ = nullptr;
  }
  void SetUp() override {
    if (dir_ == nullptr) GTEST_SKIP() << "the PostgreSQL server binaries are not installed";
    ASSERT_FALSE(uri_.empty()) << "the PostgreSQL cluster did not start";
    const std::string name = ::testing::UnitTest::GetInstance()->current_test_info()->name();
    db_ = "t_" + name;
    for (char& c : db_) c = char(std::tolower(static_cast<unsigned char>(c)));
    ASSERT_EQ(run("psql '" + uri_ + "' -qAtc 'CREATE DATABASE " + db_ + "' && echo ok"), "ok");
    const size_t q = uri_.rfind("/postgres");
    uri_db_ = uri_.substr(0, q) + "/" + db_ + uri_.substr(q + 9);
  }
  // Runs SQL on the test's database (to look at what the store wrote).
  std::string sql(const std::string& query) const { return run("psql '" + uri_db_ + "' -qAtc \"" + query + "\""); }

  static inline test::TempDir* dir_ = nullptr;
  static inline std::string uri_;
  std::string db_, uri_db_;
};

// 2 cells x 2 evaluations.
std::vector<WorkItem> items() {
  return {{"c0", "e0", 0, 0}, {"c0", "e1", 0, 1}, {"c1", "e0", 1, 0}, {"c1", "e1", 1, 1}};
}

WorkerInfo worker(const std::string& id) { return {id, "host-" + id, "cpu", 0}; }

CellRecord cell(const std::string& key) {
  CellRecord c;
  c.key = key;
  c.model = "m";
  c.model_path = "/m";
  c.model_sha256 = "00";
  c.method = c.method_name = c.resolved = "rtn";
  c.w = 4;
  c.calibration = "none";
  c.calibration_json = "null";
  return c;
}

EvalRecord eval(const std::string& key, int64_t run_id) {
  EvalRecord e;
  e.eval = e.eval_key = key;
  e.kind = "perplexity";
  e.device = "cpu";
  e.run_id = run_id;
  e.identity = "{}";
  return e;
}

int64_t begin(Store& s) {
  RunRecord r;
  r.spec_path = "spec.toml";
  r.device = "cpu";
  return s.begin_run(r);
}

TEST_F(PgStore, RegistrationIsIdempotentAndRefusesAnotherStudyOrGrid) {
  {
    Store a(uri_db_, Store::Mode::ReadWrite);
    Store b(uri_db_, Store::Mode::ReadWrite);  // a second worker's connection
    a.register_study("t", items());
    b.register_study("t", items());
    EXPECT_EQ(a.queue_status().total, 4);
    EXPECT_THROW(b.register_study("u", items()), Error);
    auto fewer = items();
    fewer.pop_back();
    EXPECT_THROW(b.register_study("t", fewer), Error);
    EXPECT_EQ(a.queue_status().total, 4);
    EXPECT_EQ(a.study_name(), "t");
  }
  EXPECT_EQ(Store::probe(uri_db_), Store::Kind::Study);
}

TEST_F(PgStore, ClaimsWholeCellsAndTakesOverExpiredLeases) {
  Store s(uri_db_, Store::Mode::ReadWrite);
  s.register_study("t", items());
  const int64_t run_id = begin(s);
  const Claim a = s.claim(worker("a"), 1.0);
  EXPECT_EQ(a.cell_key, "c0");
  EXPECT_EQ(a.eval_keys, (std::vector<std::string>{"e0", "e1"}));
  EXPECT_EQ(a.taken_over, 0);
  const Claim b = s.claim(worker("b"), 30.0);
  EXPECT_EQ(b.cell_key, "c1");
  EXPECT_TRUE(s.claim(worker("c"), 30.0).cell_key.empty());  // all leased
  EXPECT_EQ(s.open_items(), 4);
  const QueueStatus q = s.queue_status();
  ASSERT_EQ(q.running_items.size(), 4u);
  EXPECT_EQ(q.running_items[0].worker, "a");
  EXPECT_EQ(q.running_items[0].host, "host-a");
  EXPECT_EQ(q.live_workers, 2);

  // a's lease (1 s) expires without a heartbeat: c takes its items over.
  std::this_thread::sleep_for(std::chrono::milliseconds(1300));
  const Claim c = s.claim(worker("c"), 30.0);
  EXPECT_EQ(c.cell_key, "c0");
  EXPECT_EQ(c.taken_over, 2);
  // a, late, writes nothing; c's result is stored, once.
  EXPECT_FALSE(s.write_evaluation(cell("c0"), eval("e0", run_id), {{"ppl", 1.5, 0.1, 2}}, "a"));
  EXPECT_EQ(s.result_count(), 0);
  EXPECT_TRUE(s.write_evaluation(cell("c0"), eval("e0", run_id), {{"ppl", 2.5, 0.1, 2}}, "c"));
  EXPECT_FALSE(s.write_evaluation(cell("c0"), eval("e0", run_id), {{"ppl", 2.5, 0.1, 2}}, "c"));  // done already
  ASSERT_EQ(s.results().size(), 1u);
  EXPECT_EQ(s.results()[0].value, 2.5);
  EXPECT_EQ(sql("SELECT status || ' ' || worker || ' ' || takeovers FROM work WHERE cell_key = 'c0' AND eval_key = 'e0'"),
            "done c 1");
  EXPECT_EQ(s.queue_status().done, 1);
  EXPECT_EQ(s.open_items(), 3);
}

TEST_F(PgStore, HeartbeatsKeepALease) {
  Store s(uri_db_, Store::Mode::ReadWrite);
  s.register_study("t", items());
  ASSERT_EQ(s.claim(worker("a"), 1.0).cell_key, "c0");
  s.heartbeat("a", 30.0);
  EXPECT_EQ(sql("SELECT count(*) FROM work WHERE worker = 'a' AND lease_until > now() + interval '20 seconds'"), "2");
  {
    // b's lease of 1 s, kept alive by its heartbeat thread (every 0.25 s) past its first second.
    Store b(uri_db_, Store::Mode::ReadWrite);
    ASSERT_EQ(b.claim(worker("b"), 1.0).cell_key, "c1");
    b.start_heartbeat("b", 1.0);
    std::this_thread::sleep_for(std::chrono::milliseconds(1500));
    EXPECT_TRUE(s.claim(worker("c"), 30.0).cell_key.empty());
  }
  // b's store is gone, and its heartbeat with it: its lease runs out and c takes its items.
  std::this_thread::sleep_for(std::chrono::milliseconds(1300));
  const Claim c = s.claim(worker("c"), 30.0);
  EXPECT_EQ(c.cell_key, "c1");
  EXPECT_EQ(c.taken_over, 2);
}

TEST_F(PgStore, FailedItemsAreRetriedThenLeftFailed) {
  Store s(uri_db_, Store::Mode::ReadWrite);
  s.register_study("t", items());
  // retries = 1: two attempts of c0, then failed; c1 unaffected.
  for (int attempt = 0; attempt < 2; ++attempt) {
    const Claim c = s.claim(worker("a"), 30.0);
    ASSERT_EQ(c.cell_key, "c0") << attempt;
    s.fail_items("a", "c0", "out of memory (attempt " + std::to_string(attempt + 1) + ")", 1);
  }
  const QueueStatus q = s.queue_status();
  EXPECT_EQ(q.failed, 2);
  EXPECT_EQ(q.pending, 2);
  ASSERT_EQ(q.failed_items.size(), 2u);
  EXPECT_EQ(q.failed_items[0].error, "out of memory (attempt 2)");
  EXPECT_EQ(q.failed_items[0].failures, 2);
  EXPECT_EQ(s.claim(worker("a"), 30.0).cell_key, "c1");
  EXPECT_TRUE(s.claim(worker("b"), 30.0).cell_key.empty());
  EXPECT_EQ(s.open_items(), 2);
  // Back to pending, failures forgotten: claimable again, with the full number of retries.
  EXPECT_EQ(s.retry_failed(), 2);
  EXPECT_EQ(s.retry_failed(), 0);
  EXPECT_EQ(s.claim(worker("b"), 30.0).cell_key, "c0");
  s.fail_items("b", "c0", "again", 1);
  EXPECT_EQ(s.queue_status().failed, 0);
}

TEST_F(PgStore, ResultsAlreadyStoredAreDoneAtRegistration) {
  Store s(uri_db_, Store::Mode::ReadWrite);
  const int64_t run_id = begin(s);
  s.write_evaluation(cell("c1"), eval("e1", run_id), {{"ppl", 3.0, std::nullopt, 2}});
  s.register_study("t", items());
  const QueueStatus q = s.queue_status();
  EXPECT_EQ(q.done, 1);
  EXPECT_EQ(q.pending, 3);
}

// A trained cell's training columns; a store written before them reads as untrained cells and
// gains the columns when opened for writing.
TEST_F(PgStore, TrainingColumnsAndOlderStores) {
  CellRecord c = cell("c0");
  c.train_seconds = 12.5;
  c.train_loss = 1.25;
  c.training = R"({"kind":"finetune","key":"finetune:steps=3"})";
  {
    Store s(uri_db_, Store::Mode::ReadWrite);
    s.register_study("t", items());
    const int64_t run_id = begin(s);
    s.write_evaluation(c, eval("e0", run_id), {{"ppl", 10, std::nullopt, 1}});
    const auto cells = Store(uri_db_, Store::Mode::ReadOnly).cells();
    ASSERT_EQ(cells.size(), 1u);
    EXPECT_EQ(cells[0].train_seconds, 12.5);
    EXPECT_EQ(cells[0].train_loss.value_or(-1), 1.25);
    EXPECT_EQ(cells[0].training, c.training);
  }
  ASSERT_EQ(sql("ALTER TABLE cells DROP COLUMN train_seconds, DROP COLUMN train_loss, DROP COLUMN training; "
                "SELECT 'ok'"),
            "ok");
  {
    const auto cells = Store(uri_db_, Store::Mode::ReadOnly).cells();
    ASSERT_EQ(cells.size(), 1u);
    EXPECT_EQ(cells[0].train_seconds, 0);
    EXPECT_FALSE(cells[0].train_loss.has_value());
    EXPECT_EQ(cells[0].training, "null");
  }
  Store s(uri_db_, Store::Mode::ReadWrite);
  CellRecord d = c;
  d.key = "c1";
  s.write_evaluation(d, eval("e0", begin(s)), {{"ppl", 9, std::nullopt, 1}});
  const auto cells = s.cells();
  ASSERT_EQ(cells.size(), 2u);
  EXPECT_EQ(cells[0].training, "null");
  EXPECT_EQ(cells[1].train_loss.value_or(-1), 1.25);
  EXPECT_EQ(cells[1].training, c.training);
}

TEST_F(PgStore, RefusesOtherStoresAndReportsUnreachableOnes) {
  sql("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL); INSERT INTO meta VALUES ('schema_version', '0')");
  EXPECT_THROW(Store(uri_db_, Store::Mode::ReadWrite), Error);
  EXPECT_EQ(sql("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"), "1");
  EXPECT_THROW(Store("postgresql://lowbit:x@127.0.0.1:1/none", Store::Mode::ReadOnly), Error);
  try {
    Store("postgresql://lowbit:secret-pw@127.0.0.1:1/none", Store::Mode::ReadOnly);
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()).find("secret-pw"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("postgresql://lowbit:***@127.0.0.1:1/none"), std::string::npos) << e.what();
  }
}

TEST(StoreUri, RedactsPasswords) {
  EXPECT_EQ(redact_db("postgresql://u:pw@h:5432/db"), "postgresql://u:***@h:5432/db");
  EXPECT_EQ(redact_db("postgres://u@h/db?password=pw&sslmode=require"), "postgres://u@h/db?password=***&sslmode=require");
  EXPECT_EQ(redact_db("postgresql:///db?host=/tmp/s"), "postgresql:///db?host=/tmp/s");
  EXPECT_EQ(redact_db("/a/b:c@d.sqlite"), "/a/b:c@d.sqlite");
  EXPECT_TRUE(is_postgres_uri("postgresql://h/db"));
  EXPECT_FALSE(is_postgres_uri("study.sqlite"));
}

}  // namespace
}  // namespace lowbit::study
