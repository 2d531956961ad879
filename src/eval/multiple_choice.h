// Multiple-choice log-likelihood evaluation as lm-evaluation-harness computes it (HF backend):
//
//   - each request is (context, continuation); trailing whitespace of the context moves to the
//     front of the continuation; the continuation's tokens are encode(context + continuation)
//     minus the first len(encode(context)) tokens; the model reads context tokens + continuation
//     tokens, left-truncated to max_length + 1 and without the last token;
//   - a request's score is the sum of log p(continuation token | everything before it);
//   - acc: argmax of the scores (first on ties) == gold; acc_norm: argmax of score / length of
//     the choice string in characters (code points); stderr: sample standard deviation / sqrt(n).
//
// BOS follows `bos`: Default is the tokenizer's own (current harness), Off none (the harness
// before it delegated BOS to the tokenizer, and the study's bundled version), On one BOS.
//
// Speed: requests are scored with a KV cache. The longest token prefix shared by an item's
// requests runs once and each request runs only its remainder on top of it; the cache also keeps
// the previous item's prefix, so consecutive items that share a prefix (MMLU's five shots of one
// subject) reuse it too. Only the positions that are scored go through the LM head.
//
// A GPU instead scores whole requests many at a time (McScoring::Batched: no cache, requests of
// similar length right-padded into one forward): one short run per request leaves it waiting on
// kernel launches. Requests of an item that read the same tokens (MMLU's four letters) run once.
#pragma once

#include "eval/tasks.h"
#include "formats/tokenizer.h"
#include "model/llama_model.h"

#include <functional>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace lowbit {

struct McEncoded {
  std::vector<int32_t> context, continuation;
};
// The harness's _encode_pair.
McEncoded encode_pair(const Tokenizer& tok, std::string context, std::string continuation, BosMode bos);

struct McItemResult {
  std::vector<double> loglik;  // per choice
  std::vector<bool> greedy;    // whether every continuation token is the argmax
  int pred = 0, pred_norm = 0;
};

struct Metric {
  double value = 0, stderr_ = 0;
};

struct McResult {
  std::string task;
  int64_t n = 0;
  Metric acc, acc_norm;  // acc_norm only when the task has it
  bool has_acc_norm = true;
  double seconds = 0;
  int64_t tokens_run = 0;       // tokens that went through the model
  int64_t tokens_requested = 0; // tokens of all requests' inputs (what a run without reuse costs)
  std::vector<McItemResult> items;
  // MMLU: per subject accuracy and size, categories and averages.
  std::map<std::string, std::pair<double, int64_t>> subjects;
};

// What the scoring engine needs from a device: a KV cache over one sequence, runs of tokens on
// top of it whose final-normed rows stay available until clear_runs(), and log-probabilities of
// targets at given rows of given runs.
class McBackend {
 public:
  virtual ~McBackend() = default;
  virtual int64_t max_length() const = 0;
  virtual void truncate(int64_t n) = 0;
  // Appends tokens after the cached positions; returns the run's id.
  virtual int run(std::span<const int32_t> tokens) = 0;
  struct Row {
    int run;
    int64_t index;  // row within the run
    int32_t target;
  };
  virtual void score(const std::vector<Row>& rows, double* loglik, bool* greedy) = 0;
  virtual void clear_runs() = 0;

  // Whole sequences at once, without the cache (McScoring::Batched): log p(target | row `index`
  // of sequence `seq`) and whether the target is the argmax, for each row. The cache's contents
  // are undefined afterwards.
  struct SeqRow {
    int64_t seq;
    int64_t index;
    int32_t target;
  };
  virtual void score_sequences(const std::vector<std::vector<int32_t>>& seqs, const std::vector<SeqRow>& rows,
                               double* loglik, bool* greedy) = 0;
  // Whether McScoring::Auto batches on this backend (a GPU) rather than running cached prefixes.
  virtual bool prefers_batches() const { return false; }
};
// The CPU backend (LlamaModel with a KvCache).
std::unique_ptr<McBackend> make_cpu_mc_backend(const LlamaModel& model, int64_t max_length);

// How requests are run: Cached (prefix reuse through the KV cache, one run at a time), Batched
// (whole requests in padded batches) or Auto (what the backend prefers). Both give the same
// scores up to floating-point summation order.
enum class McScoring { Auto, Cached, Batched };

struct McOptions {
  BosMode bos = BosMode::Default;
  McScoring scoring = McScoring::Auto;
  int64_t max_length = 0;  // 0: the model's max_position_embeddings
  int64_t limit = 0;       // 0: every item
};

// (items done, items in all, seconds so far, running acc)
using McProgress = std::function<void(int64_t, int64_t, double, double)>;

McResult evaluate_multiple_choice(const LlamaModel& model, const Tokenizer& tok, const McTask& task,
                                  const McOptions& opt, const McProgress& progress = {});
// The same on any backend (opt.max_length is the backend's).
McResult evaluate_multiple_choice(McBackend& backend, const Tokenizer& tok, const McTask& task, const McOptions& opt,
                                  const McProgress& progress = {});

// MMLU aggregates from per-subject results: for each category and overall, the unweighted mean
// over subjects (the study's convention) and the size-weighted mean (the harness's groups).
struct MmluSummary {
  std::map<std::string, double> category_unweighted, category_weighted;
  double average_unweighted = 0;  // over all subjects
  double average_of_categories = 0;
  double harness_weighted = 0;    // over all questions
};
MmluSummary summarize_mmlu(const McResult& r);

}  // namespace lowbit
