// The table model behind every report format (study/report.h; internal to src/study): per
// model, the rows (cells in the paper's method order, labelled) and the columns (the stored
// evaluations, by table), each value looked up among the store's results, and the text cells
// each renderer lays out.
#pragma once

#include "quant/method.h"
#include "study/report.h"

#include <map>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

namespace lowbit::study {

enum class Group { Ppl, Kld, ZeroShot, Mmlu, Vlm };

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

// The registry's row of a stored method name; null for a method this lowbit does not know (a
// store written by another version), which is then shown by its name.
const MethodInfo* find_method_info(const std::string& name);
bool is_baseline_cell(const CellRecord& c);
// A name as a file-name stem (plots are named by model and column).
std::string slug(const std::string& s);

class Tables {
 public:
  explicit Tables(const ReportData& r);
  const std::vector<ModelTables>& models() const { return tables_; }

  const ResultRecord* find(const std::string& cell, const std::string& eval_key, const std::string& metric) const;
  // A column's value for a row: PPL as is, accuracies as fractions.
  std::optional<double> value(const ModelTables& t, const Row& row, const Column& c) const;
  // The tasks the zero-shot average is over.
  std::vector<std::string> average_over(const ModelTables& t) const;

 private:
  ModelTables build(const std::string& model) const;

  const ReportData& r_;
  std::map<std::tuple<std::string, std::string, std::string>, const ResultRecord*> by_key_;
  std::vector<ModelTables> tables_;
};

const char* group_title(Group g);
// Whether a column's values are shares printed in percent (accuracies, top-1 agreement).
bool in_percent(const Column& c);
std::string format_value(const Column& c, double v, const ReportOptions& opt);

// The rows of one group's table as text cells: label, #W, #A, #G, values.
struct TextTable {
  Group group;
  std::vector<std::string> header;
  std::vector<std::vector<std::string>> rows;
};
std::vector<TextTable> text_tables(const Tables& tables, const ModelTables& t, const ReportOptions& opt);

// What a reader needs to know to read the numbers: evaluation settings and counts.
std::vector<std::string> notes(const ReportData& r, const Tables& tables);

}  // namespace lowbit::study
