// lowbit store copy SRC DST: a whole study from one results store into a new one (SQLite file or
// PostgreSQL URI, either way), e.g. a study begun on one machine moved to the shared database
// that workers then finish.
#include "commands.h"

#include "core/error.h"
#include "study/store.h"

#include <fmt/format.h>

#include <filesystem>

namespace lowbit::cli {

namespace {

namespace fs = std::filesystem;
using namespace lowbit::study;

struct Options {
  std::string src, dst;
};

std::string resolve(const std::string& db) {
  return is_postgres_uri(db) ? db : fs::absolute(db).lexically_normal().string();
}

void copy(const Options& o) {
  const std::string src = resolve(o.src), dst = resolve(o.dst);
  LB_CHECK(src != dst, "store copy: the source and the destination are the same store '{}'", redact_db(src));
  LB_CHECK(is_postgres_uri(src) || fs::exists(src), "results store '{}' does not exist", src);
  Store from(src, Store::Mode::ReadOnly);
  const auto study = from.study_name();
  LB_CHECK(study.has_value(), "results store '{}' holds no study (no study name)", redact_db(src));
  const auto runs = from.runs();
  const auto cells = from.cells();
  const auto results = from.results();
  const Store::Kind kind = Store::probe(dst);
  LB_CHECK(kind != Store::Kind::Other, "'{}' is not a lowbit study store (it holds other tables)", redact_db(dst));
  if (!is_postgres_uri(dst) && fs::path(dst).has_parent_path()) fs::create_directories(fs::path(dst).parent_path());
  Store to(dst, Store::Mode::ReadWrite);
  to.lock();
  to.import_study(*study, runs, cells, results);
  fmt::print("copied study {}: {} runs, {} cells, {} results from {} to {}\n", *study, runs.size(), cells.size(),
             results.size(), redact_db(src), redact_db(dst));
}

}  // namespace

void register_store(CLI::App& app) {
  CLI::App* cmd = app.add_subcommand("store", "Results stores: copy a study between SQLite and PostgreSQL");
  cmd->require_subcommand(1);
  auto o = std::make_shared<Options>();
  CLI::App* cp = cmd->add_subcommand("copy", "Copy a whole study (runs, cells, results, every field) into a new, "
                                             "empty store; e.g. a SQLite study into PostgreSQL, for workers to finish");
  cp->add_option("src", o->src, "the study's store: a SQLite file or a postgresql:// URI")->required();
  cp->add_option("dst", o->dst, "a new or empty store: a SQLite file or a postgresql:// URI")->required();
  cp->callback([o] { copy(*o); });
}

}  // namespace lowbit::cli
