// lowbit study SPEC [--resume] [--db PATH] [--threads N] [--dry-run]
#include "commands.h"
#include "progress.h"

#include "core/error.h"
#include "study/grid.h"
#include "study/runner.h"
#include "study/spec.h"
#include "study/store.h"

#include <fmt/format.h>

#include <filesystem>
#include <set>
#include <unistd.h>

namespace lowbit::cli {

namespace {

namespace fs = std::filesystem;
using namespace lowbit::study;

struct Options {
  std::string spec, db;
  bool resume = false, dry_run = false;
  int threads = -1;
};

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
             plan.evaluations.size(), spec.db,
             kind == Store::Kind::Study ? "" : kind == Store::Kind::Empty ? " (new)" : " (not a study store!)");
  for (const Evaluation& e : plan.evaluations) fmt::print("  evaluation {}\n", e.key);
  int64_t pending = 0;
  for (const Cell& c : plan.cells) {
    int64_t missing = 0;
    for (const Evaluation& e : plan.evaluations) missing += stored.count({c.key, e.key}) ? 0 : 1;
    pending += missing;
    fmt::print("  cell {:<60} W{} A{} G{}  {}\n", c.key, c.w, c.a, c.g > 0 ? std::to_string(c.g) : "-",
               missing == 0 ? "stored" : fmt::format("{} to do", missing));
  }
  fmt::print("{} of {} evaluations to do\n", pending, int64_t(plan.cells.size() * plan.evaluations.size()));
}

void run(const Options& o) {
  StudySpec spec = load_study_spec(o.spec);  // every check happens here, before any work
  if (!o.db.empty()) spec.db = fs::absolute(o.db).lexically_normal().string();
  if (o.dry_run) {
    dry_run(spec);
    return;
  }
  const bool tty = ::isatty(2);
  StudyEvents ev;
  std::string cell_prefix;
  ev.on_start = [&](const StudyStart& s) {
    fmt::print(stderr, "study {}: {} cells x {} evaluations; {} stored, {} to do in {} cells; store {}; {} threads, {}\n",
               spec.name, s.cells, s.evaluations, s.stored, s.pending_evaluations, s.pending_cells, s.db, s.threads,
               s.device);
  };
  ev.on_cell = [&](const Cell& c, int64_t i, int64_t n, int64_t missing) {
    fmt::print(stderr, "[{}/{}] {} {}{}: {} evaluation{} to do\n", i + 1, n, c.model_name, c.method,
               c.calibrated ? " (calibration " + c.calibration + ")" : "", missing, missing == 1 ? "" : "s");
  };
  ev.on_quantized = [&](const Cell&, double seconds, const StudyProgress& p) {
    fmt::print(stderr, "    quantized in {:.1f} s  [{}]\n", seconds, study_status(p));
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
  const StudySummary s = run_study(spec, ro, ev);
  fmt::print("study {}: {} evaluations run, {} results written in {}; the store holds {} results\n", spec.name,
             s.evaluations_run, s.results_written, format_duration(s.seconds), s.results_total);
  fmt::print("store: {}\nreport: lowbit report {} --format html -o report.html\n", spec.db, spec.db);
}

}  // namespace

void register_study(CLI::App& app) {
  auto o = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand("study", "Run a whole study (models x methods x grids x evaluations) from a spec "
                                              "file into a results store");
  cmd->add_option("spec", o->spec, "study spec (TOML; see examples/quick.toml)")->required();
  cmd->add_flag("--resume", o->resume, "continue a store that already holds results of this study");
  cmd->add_option("--db", o->db, "results store (default: the spec's [study] db)");
  cmd->add_option("--threads", o->threads, "CPU threads (0: all cores; -1: the spec's)")->check(CLI::Range(-1, 4096));
  cmd->add_flag("--dry-run", o->dry_run, "check the spec and print the grid and what is stored, without running");
  cmd->callback([o] { run(*o); });
}

}  // namespace lowbit::cli
