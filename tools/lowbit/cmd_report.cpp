// lowbit report DB [--format md|csv|latex|html|rows] [-o OUT] [--decimals 1] [--sci-from 1000] [--plots DIR]
#include "commands.h"

#include "core/error.h"
#include "study/report.h"

#include <fmt/format.h>

#include <filesystem>
#include <fstream>
#include <unistd.h>

namespace lowbit::cli {

namespace {

namespace fs = std::filesystem;
using namespace lowbit::study;

struct Options {
  std::string db, format = "md", out, plots;
  int decimals = 1;
  double sci_from = 1000;
};

// Writes `text` to `path` through a temporary file renamed into place (never a partial file).
void write_file(const std::string& path, const std::string& text) {
  const fs::path p(path);
  const fs::path tmp = p.parent_path() / fmt::format(".{}.partial-{}", p.filename().string(), ::getpid());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    LB_CHECK(out.good(), "cannot write '{}'", tmp.string());
    out << text;
    out.close();
    LB_CHECK(!out.fail(), "cannot write '{}'", tmp.string());
  }
  fs::rename(tmp, p);
}

void run(const Options& o) {
  const ReportData r = load_report(o.db);
  ReportOptions ro;
  ro.decimals = o.decimals;
  ro.sci_from = o.sci_from;
  std::string text;
  if (o.format == "md") text = render_markdown(r, ro);
  else if (o.format == "csv") text = render_csv(r);
  else if (o.format == "latex") text = render_latex(r, ro);
  else if (o.format == "rows") text = render_rows(r);
  else text = render_html(r, ro);
  if (o.format == "html" && text.find("class=\"warn\">No plots") != std::string::npos)
    fmt::print(stderr, "lowbit: warning: the report has no plots: {}\n", render_plots(r).error);
  if (!o.plots.empty()) {
    const PlotSet ps = render_plots(r);
    LB_CHECK(ps.error.empty(), "--plots: {}", ps.error);
    fs::create_directories(o.plots);
    const fs::path base = o.out.empty() ? fs::current_path() : fs::absolute(o.out).parent_path();
    std::string links = "\n## Plots\n\n";
    for (const Plot& p : ps.plots) {
      const fs::path f = fs::path(o.plots) / (p.name + ".svg");
      write_file(f.string(), p.svg);
      links += fmt::format("![{}]({})\n\n", p.title, fs::relative(fs::absolute(f), base).string());
    }
    if (o.format == "md") text += links;
  }
  if (o.out.empty()) {
    fmt::print("{}", text);
    return;
  }
  write_file(o.out, text);
  fmt::print(stderr, "wrote {} ({} results, {} cells)\n", o.out, r.results.size(), r.cells.size());
}

}  // namespace

void register_report(CLI::App& app) {
  auto o = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand("report", "Tables and plots of a study, from its results store");
  cmd->add_option("db", o->db, "results store (the SQLite file `lowbit study` writes)")->required();
  cmd->add_option("--format", o->format, "md, csv, latex, html (self-contained, with plots), rows (one line per "
                                         "result, for comparing stores)")
      ->check(CLI::IsMember({"md", "csv", "latex", "html", "rows"}));
  cmd->add_option("-o,--output", o->out, "output file (default: standard output)");
  cmd->add_option("--decimals", o->decimals, "decimals of PPL and accuracies (the paper prints 1)")
      ->check(CLI::Range(0, 6));
  cmd->add_option("--sci-from", o->sci_from, "print PPL from this value on as 1.9E3 (the paper: 100)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--plots", o->plots, "also write the plots as SVG files into this directory (Markdown links them)");
  cmd->callback([o] { run(*o); });
}

}  // namespace lowbit::cli
