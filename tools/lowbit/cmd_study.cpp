// lowbit study SPEC [--resume] [--db PATH|URI] [--threads N] [--device D] [--dry-run]
//              [--worker [--lease S] [--retries N]]
// lowbit study --status --db URI  (or SPEC --status)
#include "commands.h"
#include "progress.h"

#include "core/error.h"
#include "study/grid.h"
#include "study/runner.h"
#include "study/spec.h"
#include "study/store.h"
#include "backend/device_check.h"
#include "core/device.h"

#include <fmt/format.h>

#include <filesystem>
#include <set>
#include <unistd.h>

namespace lowbit::cli {

namespace {

namespace fs = std::filesystem;
using namespace lowbit::study;

struct Options {
  std::string spec, db, device;
  bool resume = false, dry_run = false, worker = false, status = false, retry_failed = false;
  int threads = -1;
  double lease = 120;
  int retries = 2;
};

// `lowbit study --status`: where a study on a PostgreSQL store stands.
void print_status(const std::string& db) {
  Store store(db, Store::Mode::ReadOnly);
  const QueueStatus q = store.queue_status();
  fmt::print("study {}: store {}\n", store.study_name().value_or("(not registered)"), redact_db(db));
  fmt::print("  {} work items: {} done, {} running, {} failed, {} remaining\n", q.total, q.done, q.running, q.failed,
             q.pending);
  for (const QueueItem& i : q.running_items)
    fmt::print("  running  {} {}: {} on {}, {}, claimed {} ago, lease {}{}\n", i.cell_key, i.eval_key, i.worker,
               i.host, i.device, format_duration(i.lease_age),
               i.lease_left >= 0 ? "expires in " + format_duration(i.lease_left)
                                 : "expired " + format_duration(-i.lease_left) + " ago (to be taken over)",
               i.failures > 0 ? fmt::format(", {} failures before", i.failures) : "");
  for (const QueueItem& i : q.failed_items)
    fmt::print("  failed   {} {}: after {} attempts, on {}, {}: {}\n", i.cell_key, i.eval_key, i.failures, i.host,
               i.device, i.error);
  const int64_t left = q.pending + q.running;
  if (left == 0) fmt::print("  nothing left to do{}\n", q.failed > 0 ? " (failed items stay failed; a worker started with --retry-failed tries them again)" : "");
  else if (q.seconds_per_item < 0) fmt::print("  ETA ?: no item has finished yet\n");
  else
    fmt::print("  ETA {} ({} items left at {:.1f} s per item measured, {} worker{} holding leases)\n",
               format_duration(double(left) * q.seconds_per_item / double(std::max<int64_t>(1, q.live_workers))), left,
               q.seconds_per_item, q.live_workers, q.live_workers == 1 ? "" : "s");
}

std::string study_status(const StudyProgress& p) {
  return fmt::format("study {}/{}, {} elapsed, ETA {}", p.done, p.total, format_duration(p.elapsed),
                     p.eta >= 0 ? format_duration(p.eta) : "?");
}

std::string metrics_line(const std::vector<MetricValue>& ms) {
  std::string s;
  for (const MetricValue& m : ms) {
    if (m.metric.starts_with("subject:") || m.metric == "avg_categories") continue;
    if (!s.empty()) s += ", ";
    s += m.stderr_ ? fmt::format("{} {:.4f} +/- {:.4f}", m.metric, m.value, *m.stderr_)
                   : fmt::format("{} {:.4f}", m.metric, m.value);
  }
  return s;
}

void dry_run(const StudySpec& spec) {
  const StudyPlan plan = expand_plan(spec);
  std::set<std::pair<std::string, std::string>> stored;
  const Store::Kind kind = Store::probe(spec.db);
  if (kind == Store::Kind::Study) stored = Store(spec.db, Store::Mode::ReadOnly).stored_evaluations();
  fmt::print("study {}: {} cells x {} evaluations; store {}{}\n", spec.name, plan.cells.size(),
             plan.evaluations.size(), redact_db(spec.db),
             kind == Store::Kind::Study ? "" : kind == Store::Kind::Empty ? " (new)" : " (not a study store!)");
  for (const Evaluation& e : plan.evaluations) fmt::print("  evaluation {}\n", e.key);
  int64_t pending = 0;
  for (const Cell& c : plan.cells) {
    int64_t missing = 0;
    for (const Evaluation& e : plan.evaluations) missing += stored.count({c.key, e.key}) ? 0 : 1;
    pending += missing;
    fmt::print("  cell {:<60} W{:.4g} A{} G{}  {}\n", c.key, c.w, c.a, c.g > 0 ? std::to_string(c.g) : "-",
               missing == 0 ? "stored" : fmt::format("{} to do", missing));
  }
  fmt::print("{} of {} evaluations to do\n", pending, int64_t(plan.cells.size() * plan.evaluations.size()));
}

std::string resolve_db(const std::string& db) {
  return is_postgres_uri(db) ? db : fs::absolute(db).lexically_normal().string();
}

void run(const Options& o) {
  if (o.status && o.spec.empty()) {
    LB_CHECK(!o.db.empty(), "--status needs the store: --db URI (or the study's spec)");
    print_status(resolve_db(o.db));
    return;
  }
  LB_CHECK(!o.spec.empty(), "study: the spec file is required (lowbit study SPEC; see --help)");
  StudySpec spec = load_study_spec(o.spec);  // every check happens here, before any work
  if (!o.db.empty()) spec.db = resolve_db(o.db);
  if (o.status) {
    print_status(spec.db);
    return;
  }
  if (!o.device.empty()) {
    check_device_available(lowbit::parse_device(o.device));
    LB_CHECK(o.device == "cpu" || cuda_backend_built(), "--device {}: this lowbit was built without the CUDA backend",
             o.device);
    spec.device = o.device;
  }
  if (o.dry_run) {
    dry_run(spec);
    return;
  }
  const bool tty = ::isatty(2);
  StudyEvents ev;
  std::string cell_prefix;
  ev.on_start = [&](const StudyStart& s) {
    if (o.worker)
      fmt::print(stderr, "study {} (worker): {} cells x {} evaluations; {} done, {} open; store {}; {} threads, {}\n",
                 spec.name, s.cells, s.evaluations, s.stored, s.pending_evaluations, s.db, s.threads, s.device);
    else
      fmt::print(stderr, "study {}: {} cells x {} evaluations; {} stored, {} to do in {} cells; store {}; {} threads, {}\n",
                 spec.name, s.cells, s.evaluations, s.stored, s.pending_evaluations, s.pending_cells, s.db, s.threads,
                 s.device);
  };
  ev.on_cell = [&](const Cell& c, int64_t i, int64_t n, int64_t missing) {
    const std::string index = n > 0 ? fmt::format("{}/{}", i + 1, n) : fmt::format("claim {}", i + 1);
    fmt::print(stderr, "[{}] {} {}{}{}: {} evaluation{} to do\n", index, c.model_name, c.method,
               c.calibrated ? " (calibration " + c.calibration + ")" : "",
               c.train.key.empty() ? "" : " (training " + c.train.key + ")", missing, missing == 1 ? "" : "s");
  };
  ev.on_quantized = [&](const Cell& c, double seconds, const StudyProgress& p) {
    fmt::print(stderr, "    {} in {:.1f} s  [{}]\n", c.train.key.empty() ? "quantized" : "quantized and trained", seconds,
               study_status(p));
  };
  ev.on_eval_progress = [&](const Cell&, const Evaluation& e, int64_t done, int64_t total, const StudyProgress& p) {
    if (!tty) return;
    fmt::print(stderr, "\r    {:<14} [{}/{}]  [{}]\x1b[K", e.name, done, total, study_status(p));
    std::fflush(stderr);
  };
  ev.on_eval_done = [&](const Cell&, const Evaluation& e, const std::vector<MetricValue>& ms, double seconds,
                        const StudyProgress& p) {
    if (tty) fmt::print(stderr, "\r\x1b[K");
    fmt::print(stderr, "    {:<14} {}  ({:.1f} s)  [{}]\n", e.name, metrics_line(ms), seconds, study_status(p));
    std::fflush(stderr);
  };
  ev.on_note = [&](const std::string& s) { fmt::print(stderr, "    note: {}\n", s); };
  RunOptions ro;
  ro.resume = o.resume;
  ro.threads = o.threads;
  ro.worker = o.worker;
  ro.lease_seconds = o.lease;
  ro.retries = o.retries;
  ro.retry_failed = o.retry_failed;
  const StudySummary s = run_study(spec, ro, ev);
  fmt::print("study {}: {} evaluations run, {} results written in {}; the store holds {} results\n", spec.name,
             s.evaluations_run, s.results_written, format_duration(s.seconds), s.results_total);
  if (s.cells_failed > 0)
    fmt::print("{} claimed cells failed (recorded in the store; lowbit study --status --db URI lists them)\n",
               s.cells_failed);
  const std::string db = redact_db(spec.db);
  fmt::print("store: {}\nreport: lowbit report {} --format html -o report.html\n", db,
             is_postgres_uri(db) ? "'" + db + "'" : db);
}

}  // namespace

void register_study(CLI::App& app) {
  auto o = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand("study", "Run a whole study (models x methods x grids x evaluations) from a spec "
                                              "file into a results store");
  cmd->add_option("spec", o->spec, "study spec (TOML; see examples/quick.toml)");
  cmd->add_flag("--resume", o->resume, "continue a store that already holds results of this study");
  cmd->add_option("--db", o->db,
                  "results store (default: the spec's [study] db): a SQLite file, or a PostgreSQL URI "
                  "(postgresql://user@host/db) shared by --worker processes");
  cmd->add_option("--threads", o->threads, "CPU threads (0: all cores; -1: the spec's)")->check(CLI::Range(-1, 4096));
  cmd->add_option("--device", o->device, "where to evaluate and quantize: cpu, cuda, cuda:N (default: the spec's)");
  cmd->add_flag("--dry-run", o->dry_run, "check the spec and print the grid and what is stored, without running");
  cmd->add_flag("--worker", o->worker,
                "run as one of any number of workers sharing the study through a PostgreSQL store: claim "
                "(cell, evaluation) items under a lease until none is left");
  cmd->add_option("--lease", o->lease,
                  "worker: seconds a claim stays valid without a heartbeat (beats every lease/4); a dead worker's "
                  "items are taken over after this long")
      ->check(CLI::Range(1.0, 86400.0));
  cmd->add_option("--retries", o->retries, "worker: times a failed item is retried before it is left failed")
      ->check(CLI::Range(0, 1000));
  cmd->add_flag("--retry-failed", o->retry_failed,
                "worker: first put the study's failed items back to pending, their failures forgotten (after "
                "fixing what made them fail)");
  cmd->add_flag("--status", o->status,
                "print where a study on a PostgreSQL store stands: items done, running (worker, host, device, lease "
                "age), failed (with the error), remaining, and an ETA");
  cmd->callback([o] { run(*o); });
}

}  // namespace lowbit::cli
