// Running a study: every cell of the grid quantized once and evaluated on every evaluation that
// the store does not hold yet.
//
// Order: models in the spec's order, each model's cells in the spec's order, each cell's
// evaluations in the spec's order (PPL datasets, then tasks). A cell whose evaluations are all
// stored is skipped without quantizing; otherwise it is quantized (in memory, never written to
// disk) and each missing evaluation runs and is stored in one transaction as soon as it ends.
// A run killed at any moment therefore loses at most the evaluation in progress, and the next
// run redoes exactly what is missing: quantization is deterministic (same spec and seed ->
// identical weights), so the numbers are those an uninterrupted run gives. A trained cell
// ([[finetune]], [[distill]]) is quantized and trained the same way, on the CPU, through
// train::run_finetune (its adapters then merged into the base's weights) or train::run_distill:
// trained only while some of its evaluations are missing, and deterministic too (the same
// options, data and seeds give the same adapters and weights, bit for bit). Its training's
// seconds, last loss and record (options, loss log) go into the store with its first result.
//
// Store semantics: a new store is created; an existing one that holds results is continued only
// with `resume` (otherwise an error, so that a study is never mixed into another's store by
// accident), and only when it belongs to the study of the same name. A store's models are
// pinned: a model whose weights changed since its results were stored is an error.
#pragma once

#include "study/grid.h"
#include "study/spec.h"
#include "study/store.h"

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace lowbit::study {

// Worker mode (`lowbit study --worker`, a PostgreSQL store): any number of processes on any
// machines run one study together. Each registers the study (idempotent; the first creates it
// and its work items), then repeatedly claims the next claimable (cell, evaluation) items of one
// cell (store.h, Store::claim), quantizes the cell once for them, and writes each evaluation in
// the transaction that completes its item. A heartbeat thread extends the worker's leases every
// lease/4 seconds; a worker that dies stops beating, its leases expire, and another worker takes
// its items over. A cell that throws (a method's error, out of memory) fails its claimed items,
// each retried by some worker up to `retries` times, then left failed; the worker goes on. A
// worker ends when no item is pending or running; while items run elsewhere it waits (polling)
// to take them over should their worker die. Failed items stay failed (and reported by --status)
// until a worker is started with retry_failed.
struct RunOptions {
  bool resume = false;
  int threads = -1;  // -1: the spec's
  bool worker = false;
  double lease_seconds = 120;
  int retries = 2;
  bool retry_failed = false;  // put the study's failed items back to pending first
};

// Where the whole study stands. Units are quantizations and evaluations still to do when the
// run started; the ETA weighs each by the seconds such a unit took before (in this run or in
// earlier runs recorded in the store), and is negative while nothing is known.
struct StudyProgress {
  int64_t done = 0, total = 0;
  double elapsed = 0, eta = -1;
};

struct StudyStart {
  std::string db;
  int64_t cells = 0, evaluations = 0;  // per cell
  int64_t stored = 0;                  // evaluations already in the store
  int64_t pending_cells = 0, pending_evaluations = 0;
  int threads = 0;
  std::string device;
};

struct StudyEvents {
  std::function<void(const StudyStart&)> on_start;
  // A cell with work to do: its index among the cells with work, and how many of its
  // evaluations are missing. Worker mode: the index of the claim, and count 0 (not known).
  std::function<void(const Cell&, int64_t index, int64_t count, int64_t missing)> on_cell;
  std::function<void(const Cell&, double seconds, const StudyProgress&)> on_quantized;
  // Inside an evaluation: items (windows, questions) done of total.
  std::function<void(const Cell&, const Evaluation&, int64_t done, int64_t total, const StudyProgress&)> on_eval_progress;
  std::function<void(const Cell&, const Evaluation&, const std::vector<MetricValue>&, double seconds,
                     const StudyProgress&)>
      on_eval_done;
  std::function<void(const std::string&)> on_note;
};

struct StudySummary {
  int64_t evaluations_run = 0, results_written = 0, results_total = 0;
  int64_t cells_failed = 0;  // worker mode: claims whose cell threw (their items were failed)
  double seconds = 0;
};

// Runs (or continues) the study; `spec` comes from load_study_spec (checked). Throws
// lowbit::Error for a store that cannot be used, and for failures inside a cell (naming it);
// what was stored before stays stored. With opt.worker, runs as one worker of the study (the
// store must be PostgreSQL); failures inside a cell are recorded in the store instead.
StudySummary run_study(const StudySpec& spec, const RunOptions& opt, const StudyEvents& events);

}  // namespace lowbit::study
