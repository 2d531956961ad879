#include "eval/multiple_choice.h"

#include "backend/ops.h"
#include "core/error.h"
#include "core/utf8.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>

namespace lowbit {

namespace {

int64_t code_points(const std::string& s) {
  int64_t n = 0;
  for (size_t i = 0; i < s.size(); ++i) n += (static_cast<unsigned char>(s[i]) & 0xc0) != 0x80;
  return n;
}

Metric mean_with_stderr(const std::vector<double>& x) {
  Metric m;
  if (x.empty()) return m;
  const double n = double(x.size());
  m.value = std::accumulate(x.begin(), x.end(), 0.0) / n;
  if (x.size() > 1) {
    double ss = 0;
    for (double v : x) ss += (v - m.value) * (v - m.value);
    m.stderr_ = std::sqrt(ss / (n - 1)) / std::sqrt(n);
  }
  return m;
}

size_t common_prefix(const std::vector<int32_t>& a, const std::vector<int32_t>& b) {
  size_t n = 0;
  while (n < a.size() && n < b.size() && a[n] == b[n]) ++n;
  return n;
}

struct Request {
  std::vector<int32_t> input;    // what the model reads
  std::vector<int32_t> targets;  // the continuation tokens
  size_t first_scored = 0;       // input position whose output predicts targets[0]
};

}  // namespace

McEncoded encode_pair(const Tokenizer& tok, std::string context, std::string continuation, BosMode bos) {
  size_t n_spaces = 0;
  while (n_spaces < context.size()) {
    const unsigned char c = static_cast<unsigned char>(context[context.size() - 1 - n_spaces]);
    if (!(c == ' ' || (c >= '\t' && c <= '\r') || (c >= 0x1c && c <= 0x1f))) break;
    ++n_spaces;
  }
  if (n_spaces > 0) {
    continuation = context.substr(context.size() - n_spaces) + continuation;
    context.resize(context.size() - n_spaces);
  }
  LB_CHECK(!context.empty(), "multiple choice: empty context");
  const std::vector<int32_t> whole = tok.encode(context + continuation, bos);
  McEncoded e;
  e.context = tok.encode(context, bos);
  if (whole.size() > e.context.size()) e.continuation.assign(whole.begin() + std::ptrdiff_t(e.context.size()), whole.end());
  LB_CHECK(!e.continuation.empty(), "multiple choice: continuation '{}' encodes to no tokens after its context",
           continuation);
  return e;
}

namespace {

class CpuMcBackend final : public McBackend {
 public:
  CpuMcBackend(const LlamaModel& model, int64_t max_length)
      : model_(model), max_length_(max_length), cache_(model.make_kv_cache(max_length)) {}
  int64_t max_length() const override { return max_length_; }
  void truncate(int64_t n) override { cache_.truncate(n); }
  int run(std::span<const int32_t> tokens) override {
    runs_.emplace_back(tokens.size() * size_t(model_.config().hidden_size));
    model_.forward_cached(tokens, cache_, runs_.back().data());
    return int(runs_.size()) - 1;
  }
  void score(const std::vector<Row>& rows, double* loglik, bool* greedy) override {
    const int64_t H = model_.config().hidden_size, V = model_.config().vocab_size, n = int64_t(rows.size());
    std::vector<float> x(size_t(n * H)), logits(size_t(n * V));
    std::vector<int32_t> targets(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
      const float* src = runs_[size_t(rows[size_t(i)].run)].data() + rows[size_t(i)].index * H;
      std::copy(src, src + H, x.data() + i * H);
      targets[size_t(i)] = rows[size_t(i)].target;
    }
    model_.lm_head(x.data(), n, logits.data());
    std::vector<double> nll(static_cast<size_t>(n));
    ops::nll_rows(logits.data(), targets.data(), nll.data(), n, V);
    for (int64_t i = 0; i < n; ++i) {
      loglik[i] = -nll[size_t(i)];
      const float* l = logits.data() + i * V;
      greedy[i] = int32_t(std::max_element(l, l + V) - l) == targets[size_t(i)];
    }
  }
  void clear_runs() override { runs_.clear(); }
  // One sequence at a time through the cache: the CPU gains nothing from padding, but the
  // batched bookkeeping of the engine is tested against the cached one here.
  void score_sequences(const std::vector<std::vector<int32_t>>& seqs, const std::vector<SeqRow>& rows,
                       double* loglik, bool* greedy) override {
    std::vector<std::vector<size_t>> of_seq(seqs.size());
    for (size_t i = 0; i < rows.size(); ++i) of_seq[size_t(rows[i].seq)].push_back(i);
    for (size_t s = 0; s < seqs.size(); ++s) {
      if (of_seq[s].empty()) continue;
      truncate(0);
      clear_runs();
      const int run_id = run(seqs[s]);
      std::vector<Row> rs;
      for (size_t i : of_seq[s]) rs.push_back({run_id, rows[i].index, rows[i].target});
      std::vector<double> ll(rs.size());
      std::unique_ptr<bool[]> g(new bool[rs.size()]);
      score(rs, ll.data(), g.get());
      for (size_t k = 0; k < rs.size(); ++k) {
        loglik[of_seq[s][k]] = ll[k];
        greedy[of_seq[s][k]] = g[k];
      }
    }
    truncate(0);
    clear_runs();
  }

 private:
  const LlamaModel& model_;
  int64_t max_length_;
  KvCache cache_;
  std::vector<std::vector<float>> runs_;
};

}  // namespace

std::unique_ptr<McBackend> make_cpu_mc_backend(const LlamaModel& model, int64_t max_length) {
  return std::make_unique<CpuMcBackend>(model, max_length);
}

McResult evaluate_multiple_choice(const LlamaModel& model, const Tokenizer& tok, const McTask& task,
                                  const McOptions& opt, const McProgress& progress) {
  const LlamaConfig& c = model.config();
  const int64_t max_length = opt.max_length > 0 ? opt.max_length : c.max_position_embeddings;
  LB_CHECK(max_length <= c.max_position_embeddings, "max length {} exceeds the model's context {}", max_length,
           c.max_position_embeddings);
  auto backend = make_cpu_mc_backend(model, max_length);
  return evaluate_multiple_choice(*backend, tok, task, opt, progress);
}

namespace {

// An item's requests as the harness builds them (left-truncated to max_length + 1 tokens).
std::vector<Request> encode_item(const McTask& task, const McItem& item, const Tokenizer& tok, BosMode bos,
                                 int64_t max_length, McResult& res) {
  const size_t nreq = item.num_requests();
  LB_CHECK(nreq == item.choices.size(), "{} item {}: {} requests for {} choices", task.name, item.id, nreq,
           item.choices.size());
  std::vector<Request> reqs(nreq);
  for (size_t r = 0; r < nreq; ++r) {
    const McEncoded e = encode_pair(tok, item.context(r), item.continuation(r), bos);
    LB_CHECK(int64_t(e.continuation.size()) <= max_length, "{} item {}: continuation of {} tokens exceeds max "
             "length {}", task.name, item.id, e.continuation.size(), max_length);
    std::vector<int32_t> all = e.context;
    all.insert(all.end(), e.continuation.begin(), e.continuation.end());
    if (int64_t(all.size()) > max_length + 1) all.erase(all.begin(), all.end() - (max_length + 1));
    reqs[r].targets = e.continuation;
    reqs[r].input.assign(all.begin(), all.end() - 1);
    reqs[r].first_scored = reqs[r].input.size() - e.continuation.size();
    res.tokens_requested += int64_t(reqs[r].input.size());
  }
  return reqs;
}

// Scores one item's requests with prefix reuse through the backend's cache. `cached`: the tokens
// the cache holds, updated.
McItemResult score_cached(McBackend& backend, const std::vector<Request>& reqs, std::vector<int32_t>& cached,
                          McResult& res) {
  const size_t nreq = reqs.size();
  // The shared prefix P of the requests' inputs, run once; positions before `keep` may come
  // from the cache (none of them is scored).
  size_t plen = reqs[0].input.size(), keep = reqs[0].first_scored;
  for (const auto& r : reqs) {
    plen = std::min(plen, common_prefix(r.input, reqs[0].input));
    keep = std::min(keep, r.first_scored);
  }
  const std::vector<int32_t> prefix(reqs[0].input.begin(), reqs[0].input.begin() + std::ptrdiff_t(plen));
  const size_t reuse = std::min({common_prefix(cached, prefix), keep, plen > 0 ? plen - 1 : 0});
  backend.truncate(int64_t(reuse));
  backend.clear_runs();
  int prefix_run = -1;
  if (plen > reuse) {
    prefix_run = backend.run(std::span<const int32_t>(prefix.data() + reuse, plen - reuse));
    res.tokens_run += int64_t(plen - reuse);
  }
  cached = prefix;
  std::vector<McBackend::Row> rows;
  std::vector<size_t> owner;  // request of each row
  for (size_t r = 0; r < nreq; ++r) {
    const Request& q = reqs[r];
    int tail_run = -1;
    if (q.input.size() > plen) {
      tail_run = backend.run(std::span<const int32_t>(q.input.data() + plen, q.input.size() - plen));
      res.tokens_run += int64_t(q.input.size() - plen);
      backend.truncate(int64_t(plen));
    }
    for (size_t j = 0; j < q.targets.size(); ++j) {
      const size_t pos = q.first_scored + j;
      if (pos < plen) rows.push_back({prefix_run, int64_t(pos - reuse), q.targets[j]});
      else rows.push_back({tail_run, int64_t(pos - plen), q.targets[j]});
      owner.push_back(r);
    }
  }
  std::vector<double> ll(rows.size());
  std::unique_ptr<bool[]> g(new bool[rows.size()]);
  backend.score(rows, ll.data(), g.get());
  McItemResult ir;
  ir.loglik.assign(nreq, 0.0);
  ir.greedy.assign(nreq, true);
  for (size_t i = 0; i < rows.size(); ++i) {
    ir.loglik[owner[i]] += ll[i];
    ir.greedy[owner[i]] = ir.greedy[owner[i]] && g[i];
  }
  return ir;
}

// Scores the requests of several items in one call of score_sequences: each distinct input of
// an item once.
std::vector<McItemResult> score_batched(McBackend& backend, const std::vector<std::vector<Request>>& items,
                                        McResult& res) {
  std::vector<std::vector<int32_t>> seqs;
  std::vector<McBackend::SeqRow> rows;
  std::vector<std::pair<size_t, size_t>> owner;  // (item, request) of each row
  for (size_t it = 0; it < items.size(); ++it) {
    const std::vector<Request>& reqs = items[it];
    const size_t first_seq = seqs.size();
    for (size_t r = 0; r < reqs.size(); ++r) {
      size_t s = first_seq;
      while (s < seqs.size() && seqs[s] != reqs[r].input) ++s;
      if (s == seqs.size()) {
        seqs.push_back(reqs[r].input);
        res.tokens_run += int64_t(reqs[r].input.size());
      }
      for (size_t j = 0; j < reqs[r].targets.size(); ++j) {
        rows.push_back({int64_t(s), int64_t(reqs[r].first_scored + j), reqs[r].targets[j]});
        owner.emplace_back(it, r);
      }
    }
  }
  std::vector<double> ll(rows.size());
  std::unique_ptr<bool[]> g(new bool[rows.size()]);
  backend.score_sequences(seqs, rows, ll.data(), g.get());
  std::vector<McItemResult> out(items.size());
  for (size_t it = 0; it < items.size(); ++it) {
    out[it].loglik.assign(items[it].size(), 0.0);
    out[it].greedy.assign(items[it].size(), true);
  }
  for (size_t i = 0; i < rows.size(); ++i) {
    McItemResult& ir = out[owner[i].first];
    ir.loglik[owner[i].second] += ll[i];
    ir.greedy[owner[i].second] = ir.greedy[owner[i].second] && g[i];
  }
  return out;
}

}  // namespace

McResult evaluate_multiple_choice(McBackend& backend, const Tokenizer& tok, const McTask& task, const McOptions& opt,
                                  const McProgress& progress) {
  const auto t0 = std::chrono::steady_clock::now();
  const int64_t max_length = backend.max_length();
  const size_t n_items = opt.limit > 0 ? std::min(task.items.size(), size_t(opt.limit)) : task.items.size();
  const bool batched = opt.scoring == McScoring::Batched ||
                       (opt.scoring == McScoring::Auto && backend.prefers_batches());
  McResult res;
  res.task = task.name;
  res.has_acc_norm = task.has_acc_norm;
  std::vector<int32_t> cached;  // the tokens the cache holds
  std::vector<double> acc, acc_norm;
  // Items scored per call of score_sequences: enough for the backend to fill its batches,
  // few enough for a steady progress report.
  const size_t chunk = batched ? 256 : 1;
  for (size_t i0 = 0; i0 < n_items; i0 += chunk) {
    const size_t i1 = std::min(n_items, i0 + chunk);
    std::vector<std::vector<Request>> reqs;
    for (size_t ii = i0; ii < i1; ++ii) reqs.push_back(encode_item(task, task.items[ii], tok, opt.bos, max_length, res));
    std::vector<McItemResult> scored;
    if (batched) scored = score_batched(backend, reqs, res);
    else scored.push_back(score_cached(backend, reqs[0], cached, res));
    for (size_t ii = i0; ii < i1; ++ii) {
      const McItem& item = task.items[ii];
      McItemResult& ir = scored[ii - i0];
      const size_t nreq = ir.loglik.size();
      ir.pred = int(std::max_element(ir.loglik.begin(), ir.loglik.end()) - ir.loglik.begin());
      std::vector<double> normed(nreq);
      for (size_t r = 0; r < nreq; ++r) normed[r] = ir.loglik[r] / double(code_points(item.choices[r]));
      ir.pred_norm = int(std::max_element(normed.begin(), normed.end()) - normed.begin());
      acc.push_back(ir.pred == item.gold ? 1.0 : 0.0);
      acc_norm.push_back(ir.pred_norm == item.gold ? 1.0 : 0.0);
      if (!item.subject.empty()) {
        auto& s = res.subjects[item.subject];
        s.first += acc.back();
        s.second += 1;
      }
      res.items.push_back(std::move(ir));
    }
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (progress)
      progress(int64_t(i1), int64_t(n_items), elapsed, std::accumulate(acc.begin(), acc.end(), 0.0) / double(acc.size()));
  }
  for (auto& [k, v] : res.subjects) v.first /= double(v.second);
  res.n = int64_t(n_items);
  res.acc = mean_with_stderr(acc);
  if (task.has_acc_norm) res.acc_norm = mean_with_stderr(acc_norm);
  res.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return res;
}

MmluSummary summarize_mmlu(const McResult& r) {
  MmluSummary s;
  std::map<std::string, std::pair<double, int64_t>> unweighted, weighted;
  double sum_subjects = 0, correct = 0, total = 0;
  for (const auto& [subject, v] : r.subjects) {
    const std::string& cat = mmlu_category(subject);
    unweighted[cat].first += v.first;
    unweighted[cat].second += 1;
    weighted[cat].first += v.first * double(v.second);
    weighted[cat].second += v.second;
    sum_subjects += v.first;
    correct += v.first * double(v.second);
    total += double(v.second);
  }
  double cats = 0;
  for (const auto& [cat, v] : unweighted) {
    s.category_unweighted[cat] = v.first / double(v.second);
    cats += s.category_unweighted[cat];
  }
  for (const auto& [cat, v] : weighted) s.category_weighted[cat] = v.first / double(v.second);
  if (!r.subjects.empty()) {
    s.average_unweighted = sum_subjects / double(r.subjects.size());
    s.average_of_categories = cats / double(unweighted.size());
    s.harness_weighted = correct / total;
  }
  return s;
}

}  // namespace lowbit
