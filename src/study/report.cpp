#include "study/report.h"

#include "core/error.h"
#include "core/process.h"
#include "lowbit/version.h"
#include "quant/method.h"

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

// --- The table model -----------------------------------------------------------------------

enum class Group { Ppl, Kld, ZeroShot, Mmlu };

struct Column {
  Group group;
  std::string header, eval, eval_key, metric;
  bool average = false;  // the zero-shot Avg. (computed) column
};

struct Row {
  const CellRecord* cell = nullptr;
  std::string label;       // e.g. "GPTQ", "GPTQ (act_order=1)", or the model's name for the baseline
  bool first_of_label = true;
};

struct ModelTables {
  std::string model;
  std::vector<Row> rows;
  std::vector<Column> columns;  // by group, in order
};

const std::vector<std::string> kPplOrder = {"wikitext2", "c4", "ptb", "ptb-new", "c4-new"};
// hellaswag_derived (llama.cpp's derived text, not the harness's preprocessing) takes HellaSwag's
// column position under a header that names it as the derived variant.
const std::vector<std::string> kZeroShotOrder = {"piqa",      "arc_easy",          "arc_challenge",
                                                 "hellaswag", "hellaswag_derived", "winogrande"};
const std::vector<std::pair<std::string, std::string>> kMmluColumns = {
    {"humanities", "Hums."}, {"stem", "STEM"}, {"social_sciences", "Social"}, {"other", "Other"}, {"avg_subjects", "Avg."}};

std::string eval_header(const std::string& name) {
  static const std::map<std::string, std::string> h = {
      {"wikitext2", "WikiText2"}, {"c4", "C4"}, {"ptb", "PTB"}, {"ptb-new", "PTB (test)"}, {"c4-new", "C4 (new)"},
      {"piqa", "PIQA"}, {"arc_easy", "ARC-e"}, {"arc_challenge", "ARC-c"}, {"hellaswag", "HellaSwag"},
      {"hellaswag_derived", "HellaSwag (derived text)"},
      {"winogrande", "Wino"}};
  if (auto it = h.find(name); it != h.end()) return it->second;
  if (name.find('/') != std::string::npos) return fs::path(name).filename().string();
  return name;
}

// The registry's row of a stored method name; null for a method this lowbit does not know (a
// store written by another version), which is then shown by its name.
const MethodInfo* find_method_info(const std::string& name) {
  for (const MethodInfo& m : method_registry())
    if (name == m.name) return &m;
  return nullptr;
}

std::string method_display(const std::string& name) {
  const MethodInfo* m = find_method_info(name);
  return m ? m->display : name;
}

bool is_baseline_cell(const CellRecord& c) {
  const MethodInfo* m = find_method_info(c.method_name);
  return m != nullptr && m->baseline;
}

// Rows follow the paper's method order (the registry's), then the spec's.
int64_t method_rank(const CellRecord& c) {
  const MethodInfo* m = find_method_info(c.method_name);
  return (m ? int64_t(m->paper_order) : int64_t(1) << 20) * (int64_t(1) << 32) + c.ord;
}

// The method's label: its display name and the options other than w, a and g it was given.
std::string row_label(const CellRecord& c) {
  if (is_baseline_cell(c)) return c.model;
  std::string label = method_display(c.method_name);
  const size_t colon = c.method.find(':');
  std::vector<std::string> extra;
  if (colon != std::string::npos) {
    std::stringstream ss(c.method.substr(colon + 1));
    std::string item;
    while (std::getline(ss, item, ','))
      if (!item.starts_with("w=") && !item.starts_with("a=") && !item.starts_with("g=")) extra.push_back(item);
  }
  if (!extra.empty()) label += fmt::format(" ({})", fmt::join(extra, ", "));
  return label;
}

int order_of(const std::vector<std::string>& order, const std::string& name) {
  auto it = std::find(order.begin(), order.end(), name);
  return it == order.end() ? int(order.size()) : int(it - order.begin());
}

// The settings part of an evaluation key ("seqlen=2048,limit=0,bos=auto").
std::string key_settings(const std::string& key) {
  const size_t colon = key.rfind(':');
  return colon == std::string::npos ? key : key.substr(colon + 1);
}

class Tables {
 public:
  explicit Tables(const ReportData& r) : r_(r) {
    for (const ResultRecord& x : r.results) by_key_[{x.cell_key, x.eval_key, x.metric}] = &x;
    std::vector<std::string> models;
    for (const CellRecord& c : r.cells)
      if (std::find(models.begin(), models.end(), c.model) == models.end()) models.push_back(c.model);
    for (const auto& m : models) tables_.push_back(build(m));
  }
  const std::vector<ModelTables>& models() const { return tables_; }

  const ResultRecord* find(const std::string& cell, const std::string& eval_key, const std::string& metric) const {
    auto it = by_key_.find({cell, eval_key, metric});
    return it == by_key_.end() ? nullptr : it->second;
  }
  // A column's value for a row: PPL as is, accuracies as fractions.
  std::optional<double> value(const ModelTables& t, const Row& row, const Column& c) const {
    if (!c.average) {
      const ResultRecord* x = find(row.cell->key, c.eval_key, c.metric);
      if (x == nullptr) return std::nullopt;
      return x->value;
    }
    double sum = 0;
    int n = 0;
    for (const Column& o : t.columns) {
      if (o.group != Group::ZeroShot || o.average || order_of(kZeroShotOrder, o.eval) == int(kZeroShotOrder.size()))
        continue;
      const ResultRecord* x = find(row.cell->key, o.eval_key, o.metric);
      if (x == nullptr) return std::nullopt;
      sum += x->value;
      ++n;
    }
    if (n == 0) return std::nullopt;
    return sum / n;
  }
  // The tasks the zero-shot average is over.
  std::vector<std::string> average_over(const ModelTables& t) const {
    std::vector<std::string> out;
    for (const Column& o : t.columns)
      if (o.group == Group::ZeroShot && !o.average && order_of(kZeroShotOrder, o.eval) < int(kZeroShotOrder.size()))
        out.push_back(o.header);
    return out;
  }

 private:
  ModelTables build(const std::string& model) const {
    ModelTables t;
    t.model = model;
    std::vector<const CellRecord*> cells;
    for (const CellRecord& c : r_.cells)
      if (c.model == model) cells.push_back(&c);
    // Methods (by label) in the paper's order, then in the order the spec first names them.
    std::map<std::string, int64_t> first;
    for (const CellRecord* c : cells) {
      const std::string l = row_label(*c);
      if (!first.count(l)) first[l] = method_rank(*c);
    }
    std::stable_sort(cells.begin(), cells.end(), [&](const CellRecord* a, const CellRecord* b) {
      const std::string la = row_label(*a), lb = row_label(*b);
      if (first.at(la) != first.at(lb)) return first.at(la) < first.at(lb);
      if (la != lb) return la < lb;
      const bool ga = a->g > 0, gb = b->g > 0;
      if (ga != gb) return ga;
      if (a->g != b->g) return a->g < b->g;
      if (a->a != b->a) return a->a > b->a;
      if (a->w != b->w) return a->w > b->w;
      if (a->calibration != b->calibration) return a->calibration < b->calibration;
      return a->ord < b->ord;
    });
    std::string prev;
    for (const CellRecord* c : cells) {
      Row row;
      row.cell = c;
      row.label = row_label(*c);
      row.first_of_label = row.label != prev;
      prev = row.label;
      t.rows.push_back(row);
    }
    // Columns: the evaluations stored for this model's cells.
    std::set<std::string> keys_set;
    std::map<std::string, std::string> key_eval, key_kind;
    std::set<std::string> cell_keys;
    for (const CellRecord* c : cells) cell_keys.insert(c->key);
    for (const ResultRecord& x : r_.results)
      if (cell_keys.count(x.cell_key)) {
        keys_set.insert(x.eval_key);
        key_eval[x.eval_key] = x.eval;
        key_kind[x.eval_key] = x.kind;
      }
    // Keys per (kind, evaluation): settings go in the header where one kind of evaluation of a set
    // was stored under several.
    std::map<std::string, int> keys_per_eval;
    auto kind_eval = [&](const std::string& k) { return key_kind[k] + "|" + key_eval[k]; };
    for (const auto& k : keys_set) keys_per_eval[kind_eval(k)] += 1;
    std::vector<std::string> keys(keys_set.begin(), keys_set.end());
    auto header = [&](const std::string& k) {
      std::string h = eval_header(key_eval[k]);
      if (keys_per_eval[kind_eval(k)] > 1) h += " [" + key_settings(k) + "]";
      return h;
    };
    auto sort_by = [&](std::vector<std::string>& ks, const std::vector<std::string>& order) {
      std::stable_sort(ks.begin(), ks.end(), [&](const std::string& a, const std::string& b) {
        const int oa = order_of(order, key_eval[a]), ob = order_of(order, key_eval[b]);
        if (oa != ob) return oa < ob;
        return a < b;
      });
    };
    std::vector<std::string> ppl, kld, zs, mmlu;
    for (const auto& k : keys) {
      if (key_kind[k] == "perplexity") ppl.push_back(k);
      else if (key_kind[k] == "kl_divergence") kld.push_back(k);
      else if (key_eval[k].starts_with("mmlu")) mmlu.push_back(k);
      else zs.push_back(k);
    }
    sort_by(ppl, kPplOrder);
    sort_by(kld, kPplOrder);
    sort_by(zs, kZeroShotOrder);
    std::sort(mmlu.begin(), mmlu.end(), [&](const std::string& a, const std::string& b) {
      return std::make_pair(key_eval[a] != "mmlu", a) < std::make_pair(key_eval[b] != "mmlu", b);
    });
    for (const auto& k : ppl) t.columns.push_back({Group::Ppl, header(k), key_eval[k], k, "ppl"});
    for (const auto& k : kld) {
      t.columns.push_back({Group::Kld, header(k) + " KLD", key_eval[k], k, "kld_mean"});
      t.columns.push_back({Group::Kld, header(k) + " top-1 %", key_eval[k], k, "top1_agreement"});
    }
    int standard = 0;
    for (const auto& k : zs) {
      t.columns.push_back({Group::ZeroShot, header(k), key_eval[k], k, "acc"});
      standard += order_of(kZeroShotOrder, key_eval[k]) < int(kZeroShotOrder.size()) ? 1 : 0;
    }
    if (standard >= 2) t.columns.push_back({Group::ZeroShot, "Avg.", "", "", "", true});
    for (const auto& k : mmlu) {
      if (key_eval[k] == "mmlu") {
        const std::string suffix = keys_per_eval[kind_eval(k)] > 1 ? " [" + key_settings(k) + "]" : "";
        for (const auto& [metric, h] : kMmluColumns) t.columns.push_back({Group::Mmlu, h + suffix, "mmlu", k, metric});
      } else {
        t.columns.push_back({Group::Mmlu, header(k), key_eval[k], k, "acc"});
      }
    }
    return t;
  }

  const ReportData& r_;
  std::map<std::tuple<std::string, std::string, std::string>, const ResultRecord*> by_key_;
  std::vector<ModelTables> tables_;
};

const char* group_title(Group g) {
  switch (g) {
    case Group::Ppl: return "Perplexity (lower is better)";
    case Group::Kld:
      return "KL-divergence from the 16-bit model (KLD: mean nats per token, lower is better; top-1: % of positions "
             "where the most likely next token agrees)";
    case Group::ZeroShot: return "Zero-shot accuracy, % (higher is better)";
    case Group::Mmlu: return "MMLU accuracy, % (higher is better)";
  }
  return "";
}

// Whether a column's values are shares printed in percent (accuracies, top-1 agreement).
bool in_percent(const Column& c) { return c.group != Group::Ppl && c.metric != "kld_mean"; }

std::string format_value(const Column& c, double v, const ReportOptions& opt) {
  if (c.group == Group::Ppl) return format_ppl(v, opt.decimals, opt.sci_from);
  // KLDs of a good quantization are ~1e-3 nats: three more decimals than the other numbers.
  if (!in_percent(c)) return fmt::format("{:.{}f}", v, opt.decimals + 3);
  return format_acc(v, opt.decimals);
}

std::string group_size(int64_t g) { return g > 0 ? std::to_string(g) : "-"; }

// The rows of one group's table as text cells: label, #W, #A, #G, values.
struct TextTable {
  Group group;
  std::vector<std::string> header;
  std::vector<std::vector<std::string>> rows;
};

std::vector<TextTable> text_tables(const Tables& tables, const ModelTables& t, const ReportOptions& opt) {
  std::vector<TextTable> out;
  for (Group g : {Group::Ppl, Group::Kld, Group::ZeroShot, Group::Mmlu}) {
    std::vector<const Column*> cols;
    for (const Column& c : t.columns)
      if (c.group == g) cols.push_back(&c);
    if (cols.empty()) continue;
    TextTable tt;
    tt.group = g;
    tt.header = {"Method", "#W", "#A", "#G"};
    for (const Column* c : cols) tt.header.push_back(c->header);
    for (const Row& row : t.rows) {
      std::vector<std::string> cells = {row.first_of_label ? row.label : "", format_bits(row.cell->w),
                                        std::to_string(row.cell->a), group_size(row.cell->g)};
      for (const Column* c : cols) {
        const auto v = tables.value(t, row, *c);
        cells.push_back(v ? format_value(*c, *v, opt) : "-");
      }
      tt.rows.push_back(std::move(cells));
    }
    out.push_back(std::move(tt));
  }
  return out;
}

// What a reader needs to know to read the numbers: evaluation settings and counts.
std::vector<std::string> notes(const ReportData& r, const Tables& tables) {
  std::vector<std::string> out;
  std::map<std::string, std::pair<int64_t, int64_t>> eval_n;  // key -> (min n, max n) over cells
  std::map<std::string, std::string> conventions;
  for (const ResultRecord& x : r.results) {
    if (x.metric != "ppl" && x.metric != "acc" && x.metric != "kld_mean") continue;
    auto [it, fresh] = eval_n.try_emplace(x.eval_key, x.n, x.n);
    it->second.first = std::min(it->second.first, x.n);
    it->second.second = std::max(it->second.second, x.n);
    if (fresh) {
      const json id = json::parse(x.identity, nullptr, false);
      if (!id.is_discarded() && id.contains("evaluation")) {
        const json& e = id["evaluation"];
        std::string c = e.value("convention", "");
        if (x.kind == "kl_divergence") c = "KL-divergence from the 16-bit model on " + c;
        if (x.kind == "perplexity" || x.kind == "kl_divergence")
          c += fmt::format("; {} windows of {} tokens{}", e.value("windows", 0), e.value("seqlen", 0),
                           e.value("windows", 0) < e.value("windows_available", 0)
                               ? fmt::format(" (first {} of {})", e.value("windows", 0), e.value("windows_available", 0))
                               : "");
        else
          c += fmt::format("; {} items, {}-shot, BOS {}", e.value("n", 0), e.value("num_fewshot", 0),
                           e.value("bos", std::string("auto")));
        conventions[x.eval_key] = c;
      }
    }
  }
  for (const auto& [k, c] : conventions) out.push_back(fmt::format("`{}`: {}", k, c));
  std::set<std::string> calibs;
  for (const CellRecord& c : r.cells)
    if (c.calibration != "none") calibs.insert(c.calibration);
  for (const auto& c : calibs) out.push_back(fmt::format("calibration `{}`", c));
  // A GGUF's weights were rounded to its ggml types before lowbit read them: its "16-bit" row is
  // those weights dequantized, which a reader must know to judge the 4-bit rows.
  std::set<std::string> gguf_models;
  for (const CellRecord& c : r.cells)
    if (c.model_path.ends_with(".gguf")) gguf_models.insert(c.model);
  for (const auto& m : gguf_models)
    out.push_back(fmt::format("{}: read from GGUF; its 16-bit row is the file's weights dequantized to fp32 (the file "
                              "stores them quantized, e.g. Q4_1 in blocks of 32, so low-bit cells start from "
                              "already-rounded weights)", m));
  for (const ModelTables& t : tables.models()) {
    const auto over = tables.average_over(t);
    if (over.size() >= 2)
      out.push_back(fmt::format("{}: Avg. is the mean accuracy over {}", t.model, fmt::join(over, ", ")));
  }
  return out;
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

std::string slug(const std::string& s) {
  std::string out;
  for (char c : s) out += std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.' ? c : '_';
  return out;
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
    s += "," + csv_field(h.first == Group::Ppl ? h.second + " PPL" : h.first == Group::Kld ? h.second : h.second + " acc%");
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
