// The report's plots (study/report.h): gnuplot scripts written from the table model
// (report_tables.h) and run in a temporary directory; SVG back.
#include "core/error.h"
#include "study/report.h"
#include "study/report_tables.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <sys/wait.h>
#include <unistd.h>

namespace fs = std::filesystem;

namespace lowbit::study {

namespace {

// Runs gnuplot on a script; returns its standard output, or throws with its complaint.
std::string run_gnuplot(const std::string& script) {
  const char* env = std::getenv("LOWBIT_GNUPLOT");
  const std::string exe = env && *env ? env : "gnuplot";
  // In the system's temporary directory ($TMPDIR, else /tmp).
  std::string dir_tmpl = (fs::temp_directory_path() / "lowbit-plot-XXXXXX").string();
  const char* dir = ::mkdtemp(dir_tmpl.data());
  LB_CHECK(dir != nullptr, "cannot create a temporary directory for gnuplot under {}",
           fs::temp_directory_path().string());
  const fs::path d(dir);
  struct Cleanup {
    fs::path d;
    ~Cleanup() {
      std::error_code ec;
      fs::remove_all(d, ec);
    }
  } cleanup{d};
  std::ofstream(d / "plot.gp") << script;
  const std::string cmd = fmt::format("'{}' '{}' > '{}' 2> '{}'", exe, (d / "plot.gp").string(),
                                      (d / "plot.svg").string(), (d / "err.txt").string());
  const int rc = std::system(cmd.c_str());
  auto slurp = [](const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    std::ostringstream ss;
    ss << in.rdbuf();
    return ss.str();
  };
  if (rc != 0) {
    const std::string err = slurp(d / "err.txt");
    if (WIFEXITED(rc) && WEXITSTATUS(rc) == 127)
      fail("gnuplot was not found (install it: apt-get install gnuplot-nox, or set LOWBIT_GNUPLOT)");
    fail("gnuplot failed: {}", err.substr(0, 500));
  }
  return slurp(d / "plot.svg");
}

std::string gp_quote(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

// One line of a plot: a method at one group size (and activation setting), points (#W, value).
struct Series {
  std::string title;
  std::vector<std::pair<double, double>> points;
};

std::string series_name(const Row& row) {
  const CellRecord& c = *row.cell;
  std::string s = row.label;
  const MethodInfo* m = find_method_info(c.method_name);
  if (m != nullptr && std::string_view(m->group_label) != "g") s += fmt::format(" ({} {})", m->group_label, c.g);
  else if (c.g > 0) s += fmt::format(" g{}", c.g);
  else if (c.a == 16) s += " per-channel";
  if (c.a < 16) s += c.a == int(c.w) ? " W=A" : fmt::format(" A{}", c.a);
  return s;
}

// Tics for a log axis over [lo, hi]: the 1-2-5 (or finer) values of each decade inside it, so
// that a narrow range (PPL 380-520) still has labelled tics.
std::vector<double> log_tics(double lo, double hi) {
  static const std::vector<std::vector<double>> mults = {
      {1}, {1, 2, 5}, {1, 2, 3, 5, 7}, {1, 1.5, 2, 2.5, 3, 4, 5, 6, 7, 8, 9}};
  for (const auto& mult : mults) {
    std::vector<double> t;
    for (int e = int(std::floor(std::log10(lo))); e <= int(std::ceil(std::log10(hi))); ++e)
      for (double m : mult) {
        const double v = m * std::pow(10.0, e);
        if (v >= lo && v <= hi) t.push_back(v);
      }
    if (t.size() < 3 && &mult != &mults.back()) continue;
    if (t.size() > 9) {  // many decades: every k-th
      std::vector<double> thin;
      const size_t k = (t.size() + 7) / 8;
      for (size_t i = 0; i < t.size(); i += k) thin.push_back(t[i]);
      t = thin;
    }
    return t;
  }
  return {};
}

std::string plot_script(const std::string& title, const std::string& ylabel, bool logy,
                        const std::vector<Series>& series, std::optional<double> baseline, const std::string& base_title) {
  std::string s;
  s += "set terminal svg size 660,470 enhanced font 'Helvetica,15' background rgb 'white'\n";
  s += "set title " + gp_quote(title) + " noenhanced\n";
  s += "set xlabel '#W (weight bits)' noenhanced\n";
  s += "set ylabel " + gp_quote(ylabel) + " noenhanced\n";
  s += "set key below horizontal samplen 2 font ',12' noenhanced\n";
  s += "set grid xtics ytics lc rgb '#dddddd'\n";
  s += "set border 3\nset tics nomirror\n";
  double xmin = 16, xmax = 0, ymin = HUGE_VAL, ymax = -HUGE_VAL;
  for (const auto& se : series)
    for (const auto& [x, y] : se.points) {
      xmin = std::min(xmin, x);
      xmax = std::max(xmax, x);
      ymin = std::min(ymin, y);
      ymax = std::max(ymax, y);
    }
  if (baseline) {
    ymin = std::min(ymin, *baseline);
    ymax = std::max(ymax, *baseline);
  }
  if (xmax < xmin) xmin = 2, xmax = 8;
  s += fmt::format("set xrange [{}:{}]\nset xtics 1\n", std::floor(xmin) - 0.5, std::ceil(xmax) + 0.5);
  if (logy) {
    // 8% of the range's log width on either side, the tics chosen for it.
    const double pad = std::max(std::log10(ymax / ymin) * 0.08, 0.01);
    const double lo = ymin / std::pow(10.0, pad), hi = ymax * std::pow(10.0, pad);
    s += fmt::format("set logscale y\nset yrange [{:.6g}:{:.6g}]\n", lo, hi);
    std::vector<double> tics = log_tics(lo, hi);
    if (!tics.empty()) {
      std::vector<std::string> t;
      for (double v : tics) t.push_back(fmt::format("{:g}", v));
      s += fmt::format("set ytics ({})\nset mytics 1\n", fmt::join(t, ", "));
    }
    s += "set format y '%g'\n";
  } else {
    const double pad = std::max((ymax - ymin) * 0.08, 0.5);
    s += fmt::format("set yrange [{:.6g}:{:.6g}]\n", ymin - pad, ymax + pad);
  }
  std::string plot = "plot ";
  int i = 0;
  static const char* colors[] = {"#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
                                 "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"};
  static const int pts[] = {7, 5, 9, 11, 13, 15, 4, 6, 8, 10};
  for (const auto& se : series) {
    s += fmt::format("$d{} << EOD\n", i);
    for (const auto& [x, y] : se.points) s += fmt::format("{} {:.17g}\n", x, y);
    s += "EOD\n";
    plot += fmt::format("{}$d{} using 1:2 with linespoints lw 2 pt {} ps 1.2 lc rgb '{}' title {}", i ? ", " : "", i,
                        pts[i % 10], colors[i % 10], gp_quote(se.title));
    ++i;
  }
  if (baseline)
    plot += fmt::format("{}{:.17g} with lines dt 2 lw 2 lc rgb 'black' title {}", i ? ", " : "", *baseline,
                        gp_quote(base_title));
  return s + plot + "\n";
}

}  // namespace

PlotSet render_plots(const ReportData& r) {
  PlotSet out;
  const Tables tables(r);
  try {
    for (const ModelTables& t : tables.models()) {
      // One plot per PPL set, one for the zero-shot average, one for MMLU's average.
      std::vector<const Column*> targets;
      for (const Column& c : t.columns)
        if (c.group == Group::Ppl || c.average || (c.group == Group::Mmlu && c.metric == "avg_subjects"))
          targets.push_back(&c);
      for (const Column* c : targets) {
        std::vector<Series> series;
        std::map<std::string, size_t> index;
        std::optional<double> baseline;
        for (const Row& row : t.rows) {
          const auto v = tables.value(t, row, *c);
          if (!v || !std::isfinite(*v) || *v <= 0) continue;
          const double y = c->group == Group::Ppl ? *v : *v * 100;
          if (is_baseline_cell(*row.cell)) {
            baseline = y;
            continue;
          }
          const std::string name = series_name(row);
          if (!index.count(name)) {
            index[name] = series.size();
            series.push_back({name, {}});
          }
          series[index[name]].points.emplace_back(row.cell->w, y);
        }
        if (series.empty()) continue;
        for (auto& se : series) std::sort(se.points.begin(), se.points.end());
        Plot p;
        if (c->group == Group::Ppl) {
          p.name = slug(t.model + "-ppl-" + c->header);
          p.title = fmt::format("{}: {} perplexity vs weight bits", t.model, c->header);
          p.svg = run_gnuplot(plot_script(p.title, c->header + " PPL (log scale)", true, series, baseline,
                                          "16-bit " + t.model));
        } else {
          const bool mmlu = c->group == Group::Mmlu;
          p.name = slug(t.model + (mmlu ? "-mmlu-avg" : "-zero-shot-avg"));
          p.title = fmt::format("{}: {} vs weight bits", t.model,
                                mmlu ? "MMLU average accuracy" : "zero-shot average accuracy");
          p.svg = run_gnuplot(plot_script(p.title, mmlu ? "MMLU Avg. (%)" : "zero-shot Avg. (%)", false, series,
                                          baseline, "16-bit " + t.model));
        }
        out.plots.push_back(std::move(p));
      }
    }
  } catch (const Error& e) {
    out.plots.clear();
    out.error = e.what();
  }
  return out;
}

}  // namespace lowbit::study
