// The study's tables and plots, generated from the results store (never typed by hand).
//
// One section per model; in each, up to three tables laid out like the seed paper's:
//   Perplexity   rows Method | #W | #A | #G, columns WikiText2, C4, PTB (then any other sets)
//   Zero-shot    PIQA, ARC-e, ARC-c, HellaSwag, Wino (then any other task) and Avg., the mean
//                of the row's accuracies over those tasks (acc, as the study reports)
//   MMLU         Hums., STEM, Social, Other and Avg.: unweighted means over subjects (the
//                study's convention)
// Rows: the 16-bit baseline (labelled with the model's name, as the paper labels LLaMA3), then
// each method in the paper's order (the method registry's; methods it does not know last), a
// method's labels in the order the spec first names them, its rows by group size (grouped before
// per-channel), then #A and #W descending; a method's options other than w/a/g appear in its
// label. Numbers as the paper prints them: one decimal, large PPL as 1.9E3 (the paper switches at
// 100; lowbit by default at 1000, so that small models' PPL in the hundreds stay readable:
// ReportOptions::sci_from = 100 prints exactly the paper's way), accuracies in percent.
//
// Plots (gnuplot, SVG): per model, PPL against #W for each PPL set (log scale) and average
// accuracy against #W, one line per method and group size, the 16-bit model dashed.
#pragma once

#include "study/store.h"

#include <string>
#include <vector>

namespace lowbit::study {

struct ReportData {
  std::string db, study;
  std::vector<CellRecord> cells;
  std::vector<ResultRecord> results;
  std::vector<RunRecord> runs;
};

// Reads a store (read-only; fine while a study writes to it).
ReportData load_report(const std::string& db);

struct ReportOptions {
  int decimals = 1;        // of PPL (and of the mantissa of 1.9E3) and of accuracies in percent
  double sci_from = 1000;  // PPL from this value on as 1.9E3
};

// With sci_from = 100 (the paper): "6.1", "95.6", "1.1E2", "1.9E3"; "inf", "nan".
std::string format_ppl(double ppl, int decimals = 1, double sci_from = 1000);
// A fraction as a percentage: 0.7986 -> "79.9".
std::string format_acc(double fraction, int decimals = 1);
// #W as the paper prints it: "4", "1.1".
std::string format_bits(double w);

std::string render_markdown(const ReportData& r, const ReportOptions& opt = {});
// One row per cell, every column of every table, full precision (PPL; accuracies in percent).
std::string render_csv(const ReportData& r);
std::string render_latex(const ReportData& r, const ReportOptions& opt = {});
// Self-contained HTML: CSS and the plots embedded. Without gnuplot it holds the tables and says
// why the plots are missing.
std::string render_html(const ReportData& r, const ReportOptions& opt = {});
// One line per stored result, sorted, full precision, without the time-dependent fields:
// "cell_key<TAB>eval_key<TAB>metric<TAB>value<TAB>stderr<TAB>n" (for comparing stores).
std::string render_rows(const ReportData& r);

struct Plot {
  std::string name;   // file-name stem, e.g. "stories260K-ppl-wikitext2"
  std::string title;
  std::string svg;
};
struct PlotSet {
  std::vector<Plot> plots;
  std::string error;  // why there are none, when gnuplot is missing or fails
};
PlotSet render_plots(const ReportData& r);

}  // namespace lowbit::study
