#include "study/report_tables.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>
#include <set>
#include <sstream>

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace lowbit::study {

const MethodInfo* find_method_info(const std::string& name) {
  for (const MethodInfo& m : method_registry())
    if (name == m.name) return &m;
  return nullptr;
}

bool is_baseline_cell(const CellRecord& c) {
  const MethodInfo* m = find_method_info(c.method_name);
  return m != nullptr && m->baseline;
}

std::string slug(const std::string& s) {
  std::string out;
  for (char c : s) out += std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.' ? c : '_';
  return out;
}

namespace {

const std::vector<std::string> kPplOrder = {"wikitext2", "c4", "ptb", "ptb-new", "c4-new"};
// hellaswag_derived (llama.cpp's derived text, not the harness's preprocessing) takes HellaSwag's
// column position under a header that names it as the derived variant.
const std::vector<std::string> kZeroShotOrder = {"piqa",      "arc_easy",          "arc_challenge",
                                                 "hellaswag", "hellaswag_derived", "winogrande"};
const std::vector<std::pair<std::string, std::string>> kMmluColumns = {
    {"humanities", "Hums."}, {"stem", "STEM"}, {"social_sciences", "Social"}, {"other", "Other"}, {"avg_subjects", "Avg."}};

// Table 8's columns: the vision-language benchmarks (eval/vlm/vlm_task.h), each with the metric
// the paper reports; MME gives two.
struct VlmColumn {
  const char* eval;
  const char* header;
  const char* metric;
};
constexpr VlmColumn kVlmColumns[] = {
    {"ai2d", "AI2D", "exact_match"},
    {"chartqa", "ChartQA", "relaxed_overall"},
    {"docvqa", "DocVQA", "anls"},
    {"mmbench_en", "MMBench", "gpt_eval_score"},
    {"mme", "MME Cognition", "mme_cognition_score"},
    {"mme", "MME Perception", "mme_perception_score"},
};
const std::vector<std::string> kVlmOrder = {"ai2d", "chartqa", "docvqa", "mmbench_en", "mme"};

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

std::string method_display(const std::string& name) {
  const MethodInfo* m = find_method_info(name);
  return m ? m->display : name;
}

// A trained cell's training: its kind ("finetune", "distill"; empty when untrained) and its
// options as the training key names them.
struct Training {
  std::string kind;
  std::vector<std::pair<std::string, std::string>> options;
};

Training training_of(const CellRecord& c) {
  Training t;
  const json j = json::parse(c.training, nullptr, false);
  if (!j.is_object() || !j.contains("kind") || !j["kind"].is_string()) return t;
  t.kind = j["kind"].get<std::string>();
  const std::string key = j.value("key", std::string());
  std::stringstream ss(key.substr(key.find(':') + 1));
  std::string item;
  while (std::getline(ss, item, ',')) {
    const size_t eq = item.find('=');
    if (eq != std::string::npos) t.options.emplace_back(item.substr(0, eq), item.substr(eq + 1));
  }
  return t;
}

// Trained rows as the paper labels them (Tables 5-6: QLoRA, IR-QLoRA; DB-LLM), placed after the
// quantizer they start from (NormalFloat; the FDB initialization before its own row).
struct TrainedMethod {
  const char* kind;
  const char* name;
  const char* display;
  int paper_order;
};
constexpr TrainedMethod kTrainedMethods[] = {
    {"finetune", "qlora", "QLoRA", 101},
    {"finetune", "irqlora", "IR-QLoRA", 102},
    {"finetune", "lora", "LoRA", 103},
    {"distill", "dbllm", "DB-LLM", 59},
};

const TrainedMethod* trained_method(const CellRecord& c, const std::string& kind) {
  for (const TrainedMethod& m : kTrainedMethods)
    if (kind == m.kind && c.method_name == m.name) return &m;
  return nullptr;
}

// Rows follow the paper's method order (the registry's), then the spec's.
int64_t method_rank(const CellRecord& c) {
  const MethodInfo* m = find_method_info(c.method_name);
  int64_t order = m ? int64_t(m->paper_order) : int64_t(1) << 20;
  if (const TrainedMethod* t = trained_method(c, training_of(c).kind)) order = t->paper_order;
  return order * (int64_t(1) << 32) + c.ord;
}

// The method's label: its display name and the options other than w, a and g it was given; a
// trained cell's also the training options that differ between the model's cells of that method
// (steps=200), so that the rows of a training grid are told apart.
std::string row_label(const CellRecord& c, const std::vector<std::string>& train_extra = {}) {
  if (is_baseline_cell(c)) return c.model;
  const TrainedMethod* tm = trained_method(c, training_of(c).kind);
  std::string label = tm ? tm->display : method_display(c.method_name);
  const size_t colon = c.method.find(':');
  std::vector<std::string> extra;
  if (colon != std::string::npos) {
    std::stringstream ss(c.method.substr(colon + 1));
    std::string item;
    while (std::getline(ss, item, ','))
      if (!item.starts_with("w=") && !item.starts_with("a=") && !item.starts_with("g=")) extra.push_back(item);
  }
  extra.insert(extra.end(), train_extra.begin(), train_extra.end());
  if (!extra.empty()) label += fmt::format(" ({})", fmt::join(extra, ", "));
  return label;
}

// Per trained cell, its training options ("k=v") whose values differ among the cells of the same
// method and kind.
std::map<const CellRecord*, std::vector<std::string>> varying_training(const std::vector<const CellRecord*>& cells) {
  std::map<std::pair<std::string, std::string>, std::vector<const CellRecord*>> groups;
  std::map<const CellRecord*, Training> tr;
  for (const CellRecord* c : cells) {
    tr[c] = training_of(*c);
    if (!tr[c].kind.empty()) groups[{tr[c].kind, c->method_name}].push_back(c);
  }
  std::map<const CellRecord*, std::vector<std::string>> out;
  for (const auto& [g, members] : groups) {
    std::vector<std::string> keys;  // in the key's order
    for (const auto& [k, v] : tr[members[0]].options) {
      std::set<std::string> values;
      for (const CellRecord* c : members) {
        std::string value = "(absent)";
        for (const auto& [k2, v2] : tr[c].options)
          if (k2 == k) value = v2;
        values.insert(value);
      }
      if (values.size() > 1) keys.push_back(k);
    }
    for (const CellRecord* c : members)
      for (const std::string& k : keys)
        for (const auto& [k2, v2] : tr[c].options)
          if (k2 == k) out[c].push_back(k + "=" + v2);
  }
  return out;
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

std::string group_size(int64_t g) { return g > 0 ? std::to_string(g) : "-"; }


}  // namespace

Tables::Tables(const ReportData& r) : r_(r) {
  for (const ResultRecord& x : r.results) by_key_[{x.cell_key, x.eval_key, x.metric}] = &x;
  std::vector<std::string> models;
  for (const CellRecord& c : r.cells)
    if (std::find(models.begin(), models.end(), c.model) == models.end()) models.push_back(c.model);
  for (const auto& m : models) tables_.push_back(build(m));
}

const ResultRecord* Tables::find(const std::string& cell, const std::string& eval_key, const std::string& metric) const {
  auto it = by_key_.find({cell, eval_key, metric});
  return it == by_key_.end() ? nullptr : it->second;
}

std::optional<double> Tables::value(const ModelTables& t, const Row& row, const Column& c) const {
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

std::vector<std::string> Tables::average_over(const ModelTables& t) const {
  std::vector<std::string> out;
  for (const Column& o : t.columns)
    if (o.group == Group::ZeroShot && !o.average && order_of(kZeroShotOrder, o.eval) < int(kZeroShotOrder.size()))
      out.push_back(o.header);
  return out;
}

ModelTables Tables::build(const std::string& model) const {
  ModelTables t;
  t.model = model;
  std::vector<const CellRecord*> cells;
  for (const CellRecord& c : r_.cells)
    if (c.model == model) cells.push_back(&c);
  // Methods (by label) in the paper's order, then in the order the spec first names them.
  const auto train_extra = varying_training(cells);
  std::map<const CellRecord*, std::string> labels;
  for (const CellRecord* c : cells) {
    auto it = train_extra.find(c);
    labels[c] = row_label(*c, it == train_extra.end() ? std::vector<std::string>{} : it->second);
  }
  std::map<std::string, int64_t> first;
  for (const CellRecord* c : cells) {
    const std::string& l = labels.at(c);
    if (!first.count(l)) first[l] = method_rank(*c);
  }
  std::stable_sort(cells.begin(), cells.end(), [&](const CellRecord* a, const CellRecord* b) {
    const std::string &la = labels.at(a), &lb = labels.at(b);
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
    row.label = labels.at(c);
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
  std::vector<std::string> ppl, kld, zs, mmlu, vlm;
  for (const auto& k : keys) {
    if (key_kind[k] == "perplexity") ppl.push_back(k);
    else if (key_kind[k] == "kl_divergence") kld.push_back(k);
    else if (key_kind[k] == "vision_language") vlm.push_back(k);
    else if (key_eval[k].starts_with("mmlu")) mmlu.push_back(k);
    else zs.push_back(k);
  }
  sort_by(ppl, kPplOrder);
  sort_by(kld, kPplOrder);
  sort_by(zs, kZeroShotOrder);
  sort_by(vlm, kVlmOrder);
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
  for (const auto& k : vlm) {
    const std::string suffix = keys_per_eval[kind_eval(k)] > 1 ? " [" + key_settings(k) + "]" : "";
    bool known = false;
    for (const VlmColumn& c : kVlmColumns)
      if (key_eval[k] == c.eval) {
        t.columns.push_back({Group::Vlm, c.header + suffix, key_eval[k], k, c.metric});
        known = true;
      }
    if (!known) t.columns.push_back({Group::Vlm, header(k), key_eval[k], k, "score"});
  }
  return t;
}

const char* group_title(Group g) {
  switch (g) {
    case Group::Ppl: return "Perplexity (lower is better)";
    case Group::Kld:
      return "KL-divergence from the 16-bit model (KLD: mean nats per token, lower is better; top-1: % of positions "
             "where the most likely next token agrees)";
    case Group::ZeroShot: return "Zero-shot accuracy, % (higher is better)";
    case Group::Mmlu: return "MMLU accuracy, % (higher is better)";
    case Group::Vlm:
      return "Vision-language benchmarks (higher is better; AI2D, ChartQA, DocVQA and MMBench in %, MME as scores "
             "out of 800 (cognition) and 2000 (perception))";
  }
  return "";
}

bool in_percent(const Column& c) {
  // MMBench's score and MME's are stored as lmms-eval reports them (0-100, 0-2000).
  if (c.group == Group::Vlm) return c.metric == "exact_match" || c.metric == "relaxed_overall" || c.metric == "anls";
  return c.group != Group::Ppl && c.metric != "kld_mean";
}

std::string format_value(const Column& c, double v, const ReportOptions& opt) {
  if (c.group == Group::Ppl) return format_ppl(v, opt.decimals, opt.sci_from);
  if (c.group == Group::Vlm && !in_percent(c)) return fmt::format("{:.{}f}", v, opt.decimals);
  // KLDs of a good quantization are ~1e-3 nats: three more decimals than the other numbers.
  if (!in_percent(c)) return fmt::format("{:.{}f}", v, opt.decimals + 3);
  return format_acc(v, opt.decimals);
}

std::vector<TextTable> text_tables(const Tables& tables, const ModelTables& t, const ReportOptions& opt) {
  std::vector<TextTable> out;
  for (Group g : {Group::Ppl, Group::Kld, Group::ZeroShot, Group::Mmlu, Group::Vlm}) {
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

std::vector<std::string> notes(const ReportData& r, const Tables& tables) {
  std::vector<std::string> out;
  std::map<std::string, std::pair<int64_t, int64_t>> eval_n;  // key -> (min n, max n) over cells
  std::map<std::string, std::string> conventions;
  for (const ResultRecord& x : r.results) {
    const bool vlm = x.kind == "vision_language";
    if (x.metric != "ppl" && x.metric != "acc" && x.metric != "kld_mean" && !vlm) continue;
    auto [it, fresh] = eval_n.try_emplace(x.eval_key, x.n, x.n);
    it->second.first = std::min(it->second.first, x.n);
    it->second.second = std::max(it->second.second, x.n);
    if (fresh) {
      const json id = json::parse(x.identity, nullptr, false);
      if (!id.is_discarded() && id.contains("evaluation")) {
        const json& e = id["evaluation"];
        std::string c = e.value("convention", "");
        if (x.kind == "kl_divergence") c = "KL-divergence from the 16-bit model on " + c;
        if (vlm)
          c += fmt::format("; {} items, conversation {}, greedy, at most {} new tokens{}", e.value("items", 0),
                           e.value("conversation", std::string("?")), e.value("max_new_tokens", 0),
                           e.value("execution", std::string("fake-quant")) == "fake-quant"
                               ? ""
                               : "; execution " + e.value("execution", std::string()));
        else if (x.kind == "perplexity" || x.kind == "kl_divergence")
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
  // Each trained row's training, as its key names it, and how it ended.
  for (const ModelTables& t : tables.models())
    for (const Row& row : t.rows) {
      const CellRecord& c = *row.cell;
      const json j = json::parse(c.training, nullptr, false);
      if (!j.is_object() || !j.contains("key")) continue;
      const int64_t steps = j.contains("log") && j["log"].is_array() ? int64_t(j["log"].size()) : 0;
      const bool held_out = j.contains("eval_loss") && j["eval_loss"].is_number();
      out.push_back(fmt::format("{}, {}: trained `{}`; {} steps in {:.0f} s, last loss {}{}", t.model, row.label,
                                j["key"].get<std::string>(), steps, c.train_seconds,
                                c.train_loss ? fmt::format("{:.4f}", *c.train_loss) : std::string("-"),
                                held_out ? fmt::format(", held-out loss {:.4f}", j["eval_loss"].get<double>()) : ""));
    }
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

}  // namespace lowbit::study
