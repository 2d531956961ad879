#include "study/report.h"

#include "core/error.h"
#include "core/process.h"
#include "core/version.h"
#include "quant/method.h"
#include "study/report_tables.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <sys/wait.h>
#include <unistd.h>

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace lowbit::study {

std::string format_ppl(double v, int decimals, double sci_from) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  std::string plain = fmt::format("{:.{}f}", v, decimals);
  if (std::fabs(std::stod(plain)) < sci_from) return plain;
  int e = int(std::floor(std::log10(std::fabs(v))));
  double m = v / std::pow(10.0, e);
  std::string ms = fmt::format("{:.{}f}", m, decimals);
  if (std::fabs(std::stod(ms)) >= 10) {  // 9.96E2 rounds to 10.0: 1.0E3
    ++e;
    ms = fmt::format("{:.{}f}", m / 10, decimals);
  }
  return fmt::format("{}E{}", ms, e);
}

std::string format_acc(double fraction, int decimals) {
  if (!std::isfinite(fraction)) return "nan";
  return fmt::format("{:.{}f}", fraction * 100, decimals);
}

std::string format_bits(double w) {
  if (std::fabs(w - std::round(w)) < 1e-9) return fmt::format("{}", int64_t(std::round(w)));
  return fmt::format("{:.1f}", w);
}

ReportData load_report(const std::string& db) {
  LB_CHECK(is_postgres_uri(db) || fs::exists(db), "results store '{}' does not exist", db);
  Store s(db, Store::Mode::ReadOnly);
  ReportData r;
  r.db = redact_db(db);
  r.study = s.study_name().value_or(fs::path(db).stem().string());
  r.cells = s.cells();
  r.results = s.results();
  r.runs = s.runs();
  return r;
}

namespace {

// How a report names its store: a file by its name, a database by its URI (password left out).
std::string store_label(const std::string& db) {
  return is_postgres_uri(db) ? redact_db(db) : fs::path(db).filename().string();
}

std::string md_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '|') out += "\\|";
    else out += c;
  }
  return out;
}

std::string latex_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '_': case '&': case '%': case '#': case '$': case '{': case '}': out += '\\'; out += c; break;
      case '~': out += "\\textasciitilde{}"; break;
      case '^': out += "\\textasciicircum{}"; break;
      case '\\': out += "\\textbackslash{}"; break;
      default: out += c;
    }
  }
  return out;
}

std::string html_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      default: out += c;
    }
  }
  return out;
}

std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string out = "\"";
  for (char c : s) out += c == '"' ? std::string("\"\"") : std::string(1, c);
  return out + "\"";
}

std::string base64(const std::string& in) {
  static const char* t = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  size_t i = 0;
  for (; i + 2 < in.size(); i += 3) {
    const uint32_t v = uint32_t(uint8_t(in[i])) << 16 | uint32_t(uint8_t(in[i + 1])) << 8 | uint8_t(in[i + 2]);
    out += t[v >> 18];
    out += t[(v >> 12) & 63];
    out += t[(v >> 6) & 63];
    out += t[v & 63];
  }
  if (i + 1 == in.size()) {
    const uint32_t v = uint32_t(uint8_t(in[i])) << 16;
    out += t[v >> 18];
    out += t[(v >> 12) & 63];
    out += "==";
  } else if (i + 2 == in.size()) {
    const uint32_t v = uint32_t(uint8_t(in[i])) << 16 | uint32_t(uint8_t(in[i + 1])) << 8;
    out += t[v >> 18];
    out += t[(v >> 12) & 63];
    out += t[(v >> 6) & 63];
    out += '=';
  }
  return out;
}

}  // namespace

std::string render_markdown(const ReportData& r, const ReportOptions& opt) {
  const Tables tables(r);
  std::string s = fmt::format("# Study: {}\n\n", r.study);
  s += fmt::format("{} results over {} cells from `{}` (lowbit {}).\n", r.results.size(), r.cells.size(),
                   store_label(r.db), kVersion);
  for (const ModelTables& t : tables.models()) {
    s += fmt::format("\n## {}\n", t.model);
    for (const TextTable& tt : text_tables(tables, t, opt)) {
      s += fmt::format("\n### {}\n\n", group_title(tt.group));
      std::vector<size_t> width(tt.header.size(), 0);
      for (size_t i = 0; i < tt.header.size(); ++i) width[i] = tt.header[i].size();
      for (const auto& row : tt.rows)
        for (size_t i = 0; i < row.size(); ++i) width[i] = std::max(width[i], md_escape(row[i]).size());
      auto line = [&](const std::vector<std::string>& cells) {
        std::string l = "|";
        for (size_t i = 0; i < cells.size(); ++i)
          l += i == 0 ? fmt::format(" {:<{}} |", md_escape(cells[i]), width[i])
                      : fmt::format(" {:>{}} |", md_escape(cells[i]), width[i]);
        return l + "\n";
      };
      s += line(tt.header);
      s += "|";
      for (size_t i = 0; i < width.size(); ++i)
        s += i == 0 ? " " + std::string(std::max<size_t>(width[i], 3), '-') + " |"
                    : " " + std::string(std::max<size_t>(width[i] - 1, 2), '-') + ": |";
      s += "\n";
      for (const auto& row : tt.rows) s += line(row);
    }
  }
  const auto n = notes(r, tables);
  if (!n.empty()) {
    s += "\nNotes:\n\n";
    for (const auto& x : n) s += "- " + x + "\n";
  }
  return s;
}

std::string render_csv(const ReportData& r) {
  const Tables tables(r);
  // Every column of every model, in first-seen order.
  std::vector<std::pair<Group, std::string>> headers;
  for (const ModelTables& t : tables.models())
    for (const Column& c : t.columns) {
      const std::pair<Group, std::string> h{c.group, (c.group == Group::Mmlu ? "MMLU " : "") + c.header};
      if (std::find(headers.begin(), headers.end(), h) == headers.end()) headers.push_back(h);
    }
  std::string s = "model,method,spec,calibration,W,A,G";
  for (const auto& h : headers)
    s += "," + csv_field(h.first == Group::Ppl ? h.second + " PPL"
                         : h.first == Group::Kld || (h.first == Group::Vlm && (h.second.starts_with("MMBench") ||
                                                                                 h.second.starts_with("MME")))
                             ? h.second
                             : h.second + " acc%");
  s += "\n";
  for (const ModelTables& t : tables.models())
    for (const Row& row : t.rows) {
      const CellRecord& c = *row.cell;
      s += fmt::format("{},{},{},{},{},{},{}", csv_field(c.model), csv_field(row.label), csv_field(c.method),
                       csv_field(c.calibration), format_bits(c.w), c.a, c.g > 0 ? std::to_string(c.g) : "-");
      for (const auto& h : headers) {
        std::string cell;
        for (const Column& col : t.columns)
          if (col.group == h.first && (col.group == Group::Mmlu ? "MMLU " : "") + col.header == h.second) {
            const auto v = tables.value(t, row, col);
            if (v) cell = fmt::format("{:.6g}", in_percent(col) ? *v * 100 : *v);
          }
        s += "," + cell;
      }
      s += "\n";
    }
  return s;
}

std::string render_latex(const ReportData& r, const ReportOptions& opt) {
  const Tables tables(r);
  std::string s = fmt::format("% Study {}: generated by lowbit {} ({}) from {}\n% \\usepackage{{booktabs}}\n",
                              r.study, kVersion, kGitCommit, store_label(r.db));
  for (const ModelTables& t : tables.models())
    for (const TextTable& tt : text_tables(tables, t, opt)) {
      s += "\n\\begin{table}[t]\n\\centering\n";
      s += fmt::format("\\caption{{{}: {}}}\n", latex_escape(t.model), latex_escape(group_title(tt.group)));
      s += "\\begin{tabular}{lccc|" + std::string(tt.header.size() - 4, 'c') + "}\n\\toprule\n";
      std::vector<std::string> h;
      for (const auto& x : tt.header) h.push_back(latex_escape(x));
      s += fmt::format("{} \\\\\n\\midrule\n", fmt::join(h, " & "));
      for (size_t i = 0; i < tt.rows.size(); ++i) {
        if (i > 0 && !tt.rows[i][0].empty()) s += "\\midrule\n";
        std::vector<std::string> cells;
        for (const auto& x : tt.rows[i]) cells.push_back(latex_escape(x));
        s += fmt::format("{} \\\\\n", fmt::join(cells, " & "));
      }
      s += "\\bottomrule\n\\end{tabular}\n\\end{table}\n";
    }
  return s;
}

std::string render_rows(const ReportData& r) {
  std::vector<std::string> lines;
  for (const ResultRecord& x : r.results)
    lines.push_back(fmt::format("{}\t{}\t{}\t{:.17g}\t{}\t{}", x.cell_key, x.eval_key, x.metric, x.value,
                                x.stderr_ ? fmt::format("{:.17g}", *x.stderr_) : "-", x.n));
  std::sort(lines.begin(), lines.end());
  std::string s;
  for (const auto& l : lines) s += l + "\n";
  return s;
}

std::string render_html(const ReportData& r, const ReportOptions& opt) {
  const Tables tables(r);
  const PlotSet plots = render_plots(r);
  std::string s;
  s += "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n";
  s += fmt::format("<title>lowbit study: {}</title>\n", html_escape(r.study));
  s += R"css(<style>
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1180px;
       color: #222; padding: 0 1.5em; line-height: 1.45; }
h1 { font-size: 1.7em; margin-bottom: 0.2em; }
h2 { font-size: 1.35em; margin-top: 1.8em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
h3 { font-size: 1.05em; margin: 1.4em 0 0.5em; color: #444; }
.meta { color: #555; font-size: 0.92em; }
.meta code, li code { background: #f4f4f4; padding: 0 0.25em; border-radius: 3px; font-size: 0.95em; }
table { border-collapse: collapse; font-size: 0.92em; margin: 0.3em 0 0.8em; }
th, td { padding: 0.28em 0.75em; text-align: right; white-space: nowrap; }
th { border-top: 2px solid #333; border-bottom: 1px solid #333; background: #fafafa; }
td:first-child, th:first-child { text-align: left; }
tr.first td { border-top: 1px solid #ccc; }
tbody tr:last-child td { border-bottom: 2px solid #333; }
td.baseline { font-weight: 600; }
td.missing { color: #aaa; }
.plots { display: flex; flex-wrap: wrap; gap: 1em; }
.plots figure { margin: 0; border: 1px solid #eee; padding: 0.4em; }
.plots img { width: 540px; height: auto; display: block; }
.warn { background: #fff4e5; border: 1px solid #f0c36d; padding: 0.6em 1em; border-radius: 4px; }
ul.notes { font-size: 0.88em; color: #444; }
</style>
</head>
<body>
)css";
  s += fmt::format("<h1>Study: {}</h1>\n", html_escape(r.study));
  std::string finished = "no run recorded";
  if (!r.runs.empty()) {
    const RunRecord& last = r.runs.back();
    finished = last.finished.empty() ? fmt::format("last run started {} has not finished (still running, or killed; "
                                                   "<code>lowbit study SPEC --resume</code> continues it)",
                                                   html_escape(last.started))
                                     : fmt::format("last run finished {}", html_escape(last.finished));
  }
  std::set<std::string> devices, versions;
  double eval_seconds = 0, quant_seconds = 0;
  for (const ResultRecord& x : r.results) {
    devices.insert(x.device);
    versions.insert(x.lowbit_version + " (" + x.git_commit + ")");
  }
  std::set<std::pair<std::string, std::string>> evals;
  for (const ResultRecord& x : r.results)
    if (evals.emplace(x.cell_key, x.eval_key).second) eval_seconds += x.seconds;
  for (const CellRecord& c : r.cells) quant_seconds += c.quantize_seconds;
  s += fmt::format("<p class=\"meta\">{} results of {} evaluations over {} cells in <code>{}</code>; {} run(s), {}.<br>"
                   "Compute: {:.0f} s quantizing, {:.0f} s evaluating, on {}; lowbit {}. Report generated {} by lowbit "
                   "{} ({}).</p>\n",
                   r.results.size(), evals.size(), r.cells.size(), html_escape(store_label(r.db)),
                   r.runs.size(), finished, quant_seconds, eval_seconds,
                   html_escape(fmt::format("{}", fmt::join(devices, ", "))),
                   html_escape(fmt::format("{}", fmt::join(versions, ", "))), utc_now(), kVersion, kGitCommit);
  std::map<std::string, std::string> model_info;
  for (const CellRecord& c : r.cells)
    model_info.emplace(c.model, fmt::format("<code>{}</code>, weights SHA-256 <code>{}</code>",
                                            html_escape(c.model_path), c.model_sha256.substr(0, 16)));
  for (const ModelTables& t : tables.models()) {
    s += fmt::format("<h2>{}</h2>\n<p class=\"meta\">{}</p>\n", html_escape(t.model), model_info[t.model]);
    for (const TextTable& tt : text_tables(tables, t, opt)) {
      s += fmt::format("<h3>{}</h3>\n<table>\n<thead><tr>", group_title(tt.group));
      for (const auto& h : tt.header) s += "<th>" + html_escape(h) + "</th>";
      s += "</tr></thead>\n<tbody>\n";
      for (size_t i = 0; i < tt.rows.size(); ++i) {
        const Row& row = t.rows[i];
        s += row.first_of_label && i > 0 ? "<tr class=\"first\">" : "<tr>";
        for (size_t j = 0; j < tt.rows[i].size(); ++j) {
          std::string cls;
          if (j == 0 && is_baseline_cell(*row.cell)) cls = " class=\"baseline\"";
          else if (j >= 4 && tt.rows[i][j] == "-") cls = " class=\"missing\"";
          std::string cell = html_escape(tt.rows[i][j]);
          if (j == 0 && !row.first_of_label) cell.clear();
          s += fmt::format("<td{} title=\"{}\">{}</td>", cls, html_escape(row.cell->method), cell);
        }
        s += "</tr>\n";
      }
      s += "</tbody>\n</table>\n";
    }
    std::vector<const Plot*> mine;
    for (const Plot& p : plots.plots)
      if (p.name.starts_with(slug(t.model) + "-")) mine.push_back(&p);
    if (!mine.empty()) {
      s += "<h3>Plots</h3>\n<div class=\"plots\">\n";
      for (const Plot* p : mine)
        s += fmt::format("<figure><img alt=\"{}\" src=\"data:image/svg+xml;base64,{}\"></figure>\n",
                         html_escape(p->title), base64(p->svg));
      s += "</div>\n";
    }
  }
  if (!plots.error.empty())
    s += fmt::format("<p class=\"warn\">No plots: {}</p>\n", html_escape(plots.error));
  const auto n = notes(r, tables);
  s += "<h2>Notes</h2>\n<ul class=\"notes\">\n";
  s += "<li>Perplexity under GPTQ's protocol (PROTOCOL.md); accuracies are lm-evaluation-harness <code>acc</code>; "
       "MMLU columns are unweighted means over subjects. " +
       fmt::format("PPL from {} on is printed as the paper prints large values (<code>1.9E3</code> = 1900).</li>\n",
                   opt.sci_from);
  for (const auto& x : n) {
    // `code` spans of the Markdown notes as HTML.
    std::string h = html_escape(x), out;
    bool open = false;
    for (char c : h) {
      if (c == '`') {
        out += open ? "</code>" : "<code>";
        open = !open;
      } else {
        out += c;
      }
    }
    s += "<li>" + out + "</li>\n";
  }
  s += "<li>Every number's full identity (model hash, method spec, calibration, evaluation files and their SHA-256, "
       "seconds, peak memory, device, threads, lowbit version and commit) is in the store's <code>results.identity"
       "</code> column.</li>\n";
  s += "</ul>\n</body>\n</html>\n";
  return s;
}

}  // namespace lowbit::study
