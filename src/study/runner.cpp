#include "study/runner.h"

#include "backend/ops.h"
#include "calib/calib_data.h"
#include "core/error.h"
#include "core/process.h"
#include "eval/datasets.h"
#include "eval/eval_session.h"
#include "eval/identity.h"
#include "eval/kl_divergence.h"
#include "eval/multiple_choice.h"
#include "eval/perplexity.h"
#include "eval/tasks.h"
#include "eval/vlm/vlm_eval.h"
#include "eval/vlm/vlm_task.h"
#include "model/llava_next.h"
#include "model/llava_next_device.h"
#include "quant/llava_next_quantized.h"
#include "formats/tokenizer.h"
#include "quant/method.h"
#include "quant/quantize.h"
#include "quant/quantized_in_memory.h"
#include "quant/quantize_device.h"
#include "train/adapter_io.h"
#include "train/distill.h"
#include "train/finetune.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <thread>
#include <unistd.h>

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace lowbit {
}

namespace lowbit::study {

namespace {

using Clock = std::chrono::steady_clock;

double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }


// Seconds per unit of work, from what the store recorded and what this run measures.
class Eta {
 public:
  void add_eval(const std::string& model, const std::string& key, double s) { add(evals_[{model, key}], s); }
  void add_quant(const std::string& model, const std::string& method, double s) { add(quants_[{model, method}], s); }

  // Estimated seconds of one unit; nullopt when nothing comparable was ever measured.
  std::optional<double> eval(const std::string& model, const std::string& key) const {
    if (auto it = evals_.find({model, key}); it != evals_.end()) return it->second.mean();
    return mean_where(evals_, [&](const auto& k) { return k.second == key; });
  }
  std::optional<double> quant(const std::string& model, const std::string& method) const {
    if (is_baseline_method(method)) return 0.0;
    if (auto it = quants_.find({model, method}); it != quants_.end()) return it->second.mean();
    if (auto m = mean_where(quants_, [&](const auto& k) { return k.second == method; })) return m;
    return mean_where(quants_, [&](const auto& k) { return k.first == model; });
  }

 private:
  struct Acc {
    double sum = 0;
    int64_t n = 0;
    double mean() const { return sum / double(n); }
  };
  using Map = std::map<std::pair<std::string, std::string>, Acc>;
  static void add(Acc& a, double s) {
    a.sum += s;
    a.n += 1;
  }
  template <typename F>
  static std::optional<double> mean_where(const Map& m, F pred) {
    double sum = 0;
    int64_t n = 0;
    for (const auto& [k, a] : m)
      if (pred(k)) {
        sum += a.mean();
        ++n;
      }
    if (n == 0) return std::nullopt;
    return sum / double(n);
  }
  Map evals_, quants_;
};

// The ETA's name of a cell's quantization: a trained cell's (quantization and training) takes
// other times than its method's alone.
std::string eta_method(const std::string& method_name, bool trained) {
  return trained ? method_name + "+training" : method_name;
}

// One unit of remaining work.
struct Unit {
  const Cell* cell;
  const Evaluation* eval;  // null: the cell's quantization
};

// What the runner keeps per model while it works on the model's cells.
struct ModelState {
  const ModelSpec* spec = nullptr;
  std::string sha256;
  json identity;
  std::unique_ptr<Tokenizer> tok;
  std::map<std::string, std::vector<std::vector<int32_t>>> windows;  // per PPL dataset
  std::map<std::string, int64_t> windows_available;
  std::map<std::string, TextSet> sets;
  std::optional<Calibration> calib;
};

// What training a cell gives: the model to evaluate and what the store records of it.
struct TrainOutcome {
  std::unique_ptr<LlamaModel> model;
  double quantize_seconds = 0, train_seconds = 0;
  std::optional<double> final_loss;
  std::string resolved;  // the method as the cell's record resolves it
  json record;           // CellRecord::training
};

// A multiple-choice task restricted to the first `limit` items (MMLU: of each subject, as the
// harness's --limit applies to each of MMLU's subtasks).
McTask limit_task(McTask t, int64_t limit) {
  if (limit <= 0) return t;
  std::vector<McItem> kept;
  std::map<std::string, int64_t> per_subject;
  for (auto& it : t.items)
    if (per_subject[it.subject]++ < limit) kept.push_back(std::move(it));
  t.items = std::move(kept);
  return t;
}

class Runner {
 public:
  Runner(const StudySpec& spec, const RunOptions& opt, const StudyEvents& ev)
      : spec_(spec), opt_(opt), ev_(ev), plan_(expand_plan(spec)) {}

  StudySummary run();
  StudySummary run_worker();

 private:
  void setup_device();
  void prepare_store();
  // What earlier runs measured, for the ETA.
  void load_history();
  void plan_units();
  StudyProgress progress(double current_fraction = 0) const;
  ModelState& model_state(size_t m);
  void run_cell(const Cell& cell, const std::vector<const Evaluation*>& pending);
  // A trained cell's model: quantized and fine-tuned (adapters merged) or distilled.
  TrainOutcome train_cell(const Cell& cell, ModelState& ms, const Checkpoint& source);
  // The calibration windows of the model (made once per model).
  const Calibration& calibration(ModelState& ms);
  // On the session's device: `placed` is the model placed there (once per cell); `base` is the
  // cell's 16-bit model, for KL-divergence.
  std::vector<MetricValue> evaluate(const Cell& cell, ModelState& ms, const LlamaModel& model, PlacedModel& placed,
                                    const LlamaModel* base, const Evaluation& e, json& evaluation, double& seconds);
  // A vision-language benchmark (`lowbit vlm-eval`'s evaluation, on the CPU) of the cell's LLaVA-Next
  // model `vlm`: the cell's language model under the model's vision tower and projector.
  std::vector<MetricValue> evaluate_vision_language(const Cell& cell, ModelState& ms, const LlavaNextModel& vlm,
                                                    const Evaluation& e, json& evaluation, double& seconds);
  // The perplexity windows of a set (cached per model).
  const std::vector<std::vector<int32_t>>& windows(ModelState& ms, const std::string& set);
  const McTask& task(const std::string& name);
  void note(const std::string& s) const {
    if (ev_.on_note) ev_.on_note(s);
  }

  const StudySpec& spec_;
  const RunOptions& opt_;
  const StudyEvents& ev_;
  StudyPlan plan_;
  std::unique_ptr<Store> store_;
  int64_t run_id_ = 0;
  std::set<std::pair<std::string, std::string>> stored_;
  std::vector<Unit> units_;
  int64_t done_ = 0;
  size_t current_unit_ = 0;
  Eta eta_;
  Clock::time_point t0_ = Clock::now();
  std::map<size_t, std::unique_ptr<ModelState>> models_;
  std::map<std::string, McTask> tasks_;
  std::map<std::string, std::vector<vlm::VlmItem>> vlm_items_;  // per vision-language task
  std::string device_name_ = "cpu";
  std::string worker_;  // worker mode: this worker's id, whose leases its writes need
  std::unique_ptr<EvalSession> session_;  // the study's evaluation device
  bool peak_reset_ = false;
  StudySummary summary_;
};

void Runner::prepare_store() {
  const Store::Kind kind = Store::probe(spec_.db);
  LB_CHECK(kind != Store::Kind::Other, "'{}' is not a lowbit study store (it holds other tables); give the study "
           "another db", spec_.db);
  if (kind == Store::Kind::Study) {
    Store existing(spec_.db, Store::Mode::ReadOnly);
    const int64_t n = existing.result_count();
    const auto name = existing.study_name();
    LB_CHECK(!name || *name == spec_.name, "results store '{}' belongs to study '{}', not '{}'", spec_.db, *name,
             spec_.name);
    LB_CHECK(n == 0 || opt_.resume,
             "results store '{}' already holds {} results of study '{}'; pass --resume to continue the study, or "
             "remove the file to start over",
             spec_.db, n, spec_.name);
  } else {
    const fs::path parent = fs::path(spec_.db).parent_path();
    if (!parent.empty()) fs::create_directories(parent);
  }
  store_ = std::make_unique<Store>(spec_.db, Store::Mode::ReadWrite);
  store_->lock();
  store_->set_study_name(spec_.name);
  stored_ = store_->stored_evaluations();
  load_history();
}

void Runner::load_history() {
  std::map<std::string, std::string> cell_model;
  for (const CellRecord& c : store_->cells()) {
    cell_model[c.key] = c.model;
    const bool trained = c.training != "null";
    eta_.add_quant(c.model, eta_method(c.method_name, trained), c.quantize_seconds + c.train_seconds);
  }
  std::set<std::pair<std::string, std::string>> seen;
  for (const ResultRecord& r : store_->results())
    if (seen.emplace(r.cell_key, r.eval_key).second) eta_.add_eval(cell_model[r.cell_key], r.eval_key, r.seconds);
}

void Runner::plan_units() {
  for (const Cell& c : plan_.cells) {
    std::vector<Unit> cell_units;
    for (const Evaluation& e : plan_.evaluations)
      if (!stored_.count({c.key, e.key})) cell_units.push_back({&c, &e});
    if (cell_units.empty()) continue;
    if (!is_baseline_method(c.method_name)) units_.push_back({&c, nullptr});
    units_.insert(units_.end(), cell_units.begin(), cell_units.end());
  }
}

StudyProgress Runner::progress(double current_fraction) const {
  StudyProgress p;
  p.done = done_;
  p.total = int64_t(units_.size());
  p.elapsed = since(t0_);
  double known = 0;
  int64_t n_known = 0, n_unknown = 0;
  for (size_t i = current_unit_; i < units_.size(); ++i) {
    const Unit& u = units_[i];
    const std::string& model = u.cell->model_name;
    std::optional<double> s = u.eval ? eta_.eval(model, u.eval->key) : eta_.quant(model, eta_method(u.cell->method_name, u.cell->train.kind != TrainKind::None));
    const double left = i == current_unit_ ? 1 - current_fraction : 1;
    if (s) {
      known += *s * left;
      ++n_known;
    } else {
      ++n_unknown;
    }
  }
  if (n_unknown == 0) p.eta = known;
  else if (n_known > 0) p.eta = known + double(n_unknown) * known / double(n_known);
  return p;
}

ModelState& Runner::model_state(size_t m) {
  auto& slot = models_[m];
  if (slot) return *slot;
  // One model at a time: the previous model's windows and calibration go.
  for (auto it = models_.begin(); it != models_.end();)
    it = it->first == m ? std::next(it) : models_.erase(it);
  auto ms = std::make_unique<ModelState>();
  ms->spec = &spec_.models[m];
  const Checkpoint ck = open_model(ms->spec->path);
  ms->sha256 = weights_sha256(ck);
  const auto stored = store_->model_sha256(ms->spec->name);
  LB_CHECK(!stored || *stored == ms->sha256,
           "model '{}' ({}) has changed since its results were stored (weights SHA-256 {}, stored {}); give it another "
           "name in the spec, or start a new store",
           ms->spec->name, ms->spec->path, ms->sha256, *stored);
  TokenizerOptions topt;
  topt.spm = parse_spm_convention(spec_.spm);
  ms->tok = load_tokenizer(ck.tokenizer_path, topt);
  ms->identity = model_identity(ck, ms->spec->name, ms->spec->path, ms->sha256, *ms->tok, spec_.spm);
  slot = std::move(ms);
  return *slot;
}

const McTask& Runner::task(const std::string& name) {
  auto it = tasks_.find(name);
  if (it == tasks_.end())
    it = tasks_
             .emplace(name, limit_task(load_task(name, spec_.data_dir, spec_.eval.mmlu_shots),
                                       name.starts_with("mmlu") ? spec_.eval.mmlu_limit : spec_.eval.task_limit))
             .first;
  return it->second;
}

const std::vector<std::vector<int32_t>>& Runner::windows(ModelState& ms, const std::string& name) {
  if (!ms.windows.count(name)) {
    const EvalSpec& es = spec_.eval;
    const TextSet set = resolve_eval_set(name, spec_.data_dir);
    auto w = eval_windows(set, *ms.tok, es.seqlen, parse_bos_mode(es.bos));
    ms.windows_available[name] = int64_t(w.size());
    if (es.limit > 0 && es.limit < int64_t(w.size())) w.resize(size_t(es.limit));
    ms.windows[name] = std::move(w);
    ms.sets[name] = set;
  }
  return ms.windows[name];
}

std::vector<MetricValue> Runner::evaluate(const Cell& cell, ModelState& ms, const LlamaModel& model, PlacedModel& placed,
                                          const LlamaModel* base, const Evaluation& e, json& evaluation,
                                          double& seconds) {
  const EvalSpec& es = spec_.eval;
  auto report = [&](int64_t done, int64_t total) {
    if (ev_.on_eval_progress)
      ev_.on_eval_progress(cell, e, done, total, progress(total > 0 ? double(done) / double(total) : 0));
  };
  std::vector<MetricValue> out;
  if (e.kind == EvalKind::KlDivergence) {
    LB_CHECK(base != nullptr, "KL-divergence of cell {}: no 16-bit model", cell.key);
    const auto& w = windows(ms, e.name);
    auto on_progress = [&](int64_t done, int64_t total, double, double) { report(done, total); };
    // The base beside the cell's model on the same device (the cell's own placement for the baseline).
    std::unique_ptr<PlacedModel> base_holder;
    PlacedModel* placed_base = &placed;
    if (base != &model) {
      base_holder = session_->place(*base);
      placed_base = base_holder.get();
    }
    const KlDivergenceResult r = placed.kl_divergence(*placed_base, w, on_progress);
    seconds = r.seconds;
    // The base: the study's model as given, 16-bit.
    json base_id = ms.identity;
    const json base_method = method_part(base->checkpoint());
    for (const auto& [k, v] : base_method.items()) base_id[k] = v;
    evaluation = kl_divergence_identity(ms.sets[e.name], {e.key, es.seqlen, es.limit, ms.windows_available[e.name], es.bos},
                                        r, base_id);
    out.push_back({"kld_mean", r.kld.mean, r.kld.stderr_, r.kld.positions});
    out.push_back({"kld_median", r.kld.median, std::nullopt, r.kld.positions});
    out.push_back({"kld_p99", r.kld.p99, std::nullopt, r.kld.positions});
    out.push_back({"kld_max", r.kld.max, std::nullopt, r.kld.positions});
    out.push_back({"top1_agreement", r.kld.top1, r.kld.top1_stderr, r.kld.positions});
    return out;
  }
  if (e.kind == EvalKind::Perplexity) {
    const auto& windows = this->windows(ms, e.name);
    const TextSet& set = ms.sets[e.name];
    auto on_progress = [&](int64_t done, int64_t total, double, double) { report(done, total); };
    const PerplexityResult r = placed.perplexity(windows, es.batch, on_progress);
    seconds = r.seconds;
    evaluation = perplexity_identity(set, {e.key, es.seqlen, es.limit, ms.windows_available[e.name], es.bos}, r);
    out.push_back({"ppl", r.ppl, r.ppl_stderr, r.windows});
    return out;
  }
  const McTask& t = task(e.name);
  McOptions mo;
  mo.bos = parse_bos_mode(es.bos);
  mo.max_length = es.max_length;
  const int64_t max_length = es.max_length > 0 ? es.max_length : model.config().max_position_embeddings;
  std::unique_ptr<McBackend> backend = placed.mc_backend(max_length);
  const McResult r = evaluate_multiple_choice(*backend, *ms.tok, t, mo,
                                              [&](int64_t done, int64_t total, double, double) { report(done, total); });
  seconds = r.seconds;
  const bool mmlu = e.name.starts_with("mmlu");
  evaluation = multiple_choice_identity(t, {e.key, mmlu ? es.mmlu_limit : es.task_limit, es.bos, max_length, mmlu}, r);
  out.push_back({"acc", r.acc.value, r.acc.stderr_, r.n});
  if (t.has_acc_norm) out.push_back({"acc_norm", r.acc_norm.value, r.acc_norm.stderr_, r.n});
  if (!r.subjects.empty()) {
    const MmluSummary s = summarize_mmlu(r);
    int64_t n_subjects = int64_t(r.subjects.size());
    // The study's convention: unweighted means over subjects, per category and overall.
    out.push_back({"avg_subjects", s.average_unweighted, std::nullopt, n_subjects});
    out.push_back({"avg_categories", s.average_of_categories, std::nullopt, int64_t(s.category_unweighted.size())});
    for (const auto& [cat, v] : s.category_unweighted) {
      int64_t n = 0;
      for (const auto& [subject, sv] : r.subjects) n += mmlu_category(subject) == cat ? 1 : 0;
      out.push_back({cat, v, std::nullopt, n});
    }
    for (const auto& [subject, v] : r.subjects) out.push_back({"subject:" + subject, v.first, std::nullopt, v.second});
  }
  return out;
}

const Calibration& Runner::calibration(ModelState& ms) {
  if (!ms.calib) {
    const CalibrationSpec& cs = spec_.calibration;
    const CalibrationSet set = resolve_calibration_set(cs.set, spec_.data_dir);
    ms.calib = make_calibration(set, *ms.tok, cs.nsamples, cs.seqlen, cs.seed, parse_bos_mode(cs.bos));
  }
  return *ms.calib;
}

TrainOutcome Runner::train_cell(const Cell& cell, ModelState& ms, const Checkpoint& source) {
  const ModelSpec& mspec = *ms.spec;
  TrainOutcome out;
  // A progress note every tenth of the steps (and at the last).
  auto progress_note = [&](int64_t step, int64_t steps, double loss, double eta) {
    if (steps >= 10 && step % (steps / 10) != 0 && step != steps) return;
    note(fmt::format("training step {}/{}: loss {:.4f}, ETA {:.0f} s", step, steps, loss, eta));
  };
  if (cell.train.kind == TrainKind::Finetune) {
    train::FinetuneOptions o = cell.train.finetune;
    o.model = mspec.path;
    train::FinetuneEvents fe;
    fe.on_step = [&](const train::FinetuneStep& st) {
      progress_note(st.step, st.steps, st.record["loss"].get<double>(), st.eta_seconds);
    };
    train::FinetuneResult r = train::run_finetune(o, fe);
    // The evaluated model: the frozen base with the adapters merged into its weights, as
    // `lowbit ppl|eval --adapter` evaluates them (and into the weights a GPU placement uploads).
    out.model = train::merged_model(*r.model, r.adapters);
    out.quantize_seconds = r.quantize_seconds;
    out.train_seconds = r.train_seconds;
    const json& log = r.summary["log"];
    if (!log.empty()) out.final_loss = log.back()["loss"].get<double>();
    const train::FinetuneMethod m = train::parse_finetune_method(o.method);
    out.resolved = m.name + ":" + m.canonical_options();
    out.record = {{"kind", "finetune"}, {"key", cell.train.key}, {"base_quantization", m.base_spec},
                  {"run", r.summary["run"]}, {"log", log}, {"train_seconds", r.train_seconds},
                  {"quantize_seconds", r.quantize_seconds}, {"trainable_parameters", r.adapters.num_parameters()}};
    if (r.summary.contains("eval_loss")) out.record["eval_loss"] = r.summary["eval_loss"];
    out.record["base_resident"] = r.summary["base_resident"];
    return out;
  }
  LB_ASSERT(cell.train.kind == TrainKind::Distill);
  train::DistillEvents de;
  de.on_step = [&](const train::DistillStep& st) {
    progress_note(st.step, st.steps, st.record["loss"].get<double>(), st.eta);
  };
  const bool generated = cell.train.distill.data == "generated";
  train::DistillResult r =
      train::run_distill(mspec.path, cell.train.distill, generated ? nullptr : &calibration(ms), de);
  out.quantize_seconds = r.init_seconds;
  out.train_seconds = r.train_seconds;
  const json& log = r.training["log"];
  if (!log.empty()) out.final_loss = log.back()["loss"].get<double>();
  out.record = r.training;
  out.record["kind"] = "distill";
  out.record["key"] = cell.train.key;
  out.record["init_seconds"] = r.init_seconds;
  json source_id = {{"path", mspec.path}, {"format", source.format}, {"sha256", ms.sha256},
                    {"dtype", source.config.torch_dtype}, {"parameters", source.config.parameter_count()}};
  out.model = std::make_unique<LlamaModel>(quantized_checkpoint_in_memory(source, std::move(r.qm), source_id));
  install_quantized_forward(*out.model);
  return out;
}

std::vector<MetricValue> Runner::evaluate_vision_language(const Cell& cell, ModelState& ms, const LlavaNextModel& vlm,
                                                          const Evaluation& e, json& evaluation, double& seconds) {
  const EvalSpec& es = spec_.eval;
  const vlm::VlmTask& task = vlm::vlm_task(e.name);
  auto it = vlm_items_.find(e.name);
  if (it == vlm_items_.end()) it = vlm_items_.emplace(e.name, vlm::load_vlm_items(task, es.vlm_data, es.vlm_limit)).first;
  vlm::VlmEvalOptions opt;
  opt.max_new_tokens = es.vlm_max_new_tokens;
  opt.conversation = vlm::parse_vlm_conversation(es.vlm_conversation);
  const auto t0 = Clock::now();
  // On the study's device: on a GPU the vision tower, projector and language model in bf16.
  const std::unique_ptr<LlavaNextRunner> runner = place_llava_next(vlm, session_->device());
  const vlm::VlmEvalResult r =
      vlm::evaluate_vlm(vlm, *ms.tok, task, it->second, opt, [&](size_t i, size_t n, const vlm::VlmPrediction&) {
        if (ev_.on_eval_progress)
          ev_.on_eval_progress(cell, e, int64_t(i + 1), int64_t(n), progress(double(i + 1) / double(n)));
      }, runner.get());
  seconds = since(t0);
  evaluation = json::parse(
      vlm::vlm_evaluation_identity(task, vlm::vlm_data_file(task, es.vlm_data), opt, es.vlm_limit, r).dump());
  // The metrics as `lowbit vlm-eval --store` records them: every numeric aggregate, over the items.
  std::vector<MetricValue> out;
  for (const auto& [k, v] : r.metrics.items())
    if (v.is_number()) out.push_back({k, v.get<double>(), std::nullopt, int64_t(r.items.size())});
  return out;
}

void Runner::run_cell(const Cell& cell, const std::vector<const Evaluation*>& pending) {
  ModelState& ms = model_state(cell.model);
  peak_reset_ = reset_peak_rss();
  session_->reset_peak_memory();
  const ModelSpec& mspec = *ms.spec;
  Checkpoint source = open_model(mspec.path);
  std::unique_ptr<LlamaModel> model;
  double quantize_seconds = 0;
  std::string quantize_device = "none";
  TrainOutcome trained;
  if (cell.train.kind != TrainKind::None) {
    trained = train_cell(cell, ms, source);
    model = std::move(trained.model);
    quantize_seconds = trained.quantize_seconds;
    quantize_device = "cpu";
    eta_.add_quant(cell.model_name, eta_method(cell.method_name, true), trained.quantize_seconds + trained.train_seconds);
    ++done_;
    ++current_unit_;
    if (ev_.on_quantized) ev_.on_quantized(cell, trained.quantize_seconds + trained.train_seconds, progress());
  } else if (is_baseline_method(cell.method_name)) {
    model = std::make_unique<LlamaModel>(std::move(source));
  } else {
    auto method = make_method(cell.method);
    if (method->needs_calibration()) (void)calibration(ms);
    const auto t0 = Clock::now();
    LlamaModel work(source);
    QuantizeRun run;
    QuantizedModel qm = quantize_model_on(parse_device(cell.quantize_device), work, *method,
                                          method->needs_calibration() ? &*ms.calib : nullptr, {}, &run);
    quantize_device = run.device_name;
    quantize_seconds = since(t0);
    json source_id = {{"path", mspec.path}, {"format", source.format}, {"sha256", ms.sha256},
                      {"dtype", source.config.torch_dtype}, {"parameters", source.config.parameter_count()}};
    model = std::make_unique<LlamaModel>(quantized_checkpoint_in_memory(source, std::move(qm), source_id));
    install_quantized_forward(*model);
    eta_.add_quant(cell.model_name, cell.method_name, quantize_seconds);
    ++done_;
    ++current_unit_;
    if (ev_.on_quantized) ev_.on_quantized(cell, quantize_seconds, progress());
  }
  // The method, calibration, activation scheme and source as the model's metadata holds them.
  const json method = method_part(model->checkpoint());
  // The 16-bit model beside a quantized one, for KL-divergence: the cell's own model for fp16.
  std::unique_ptr<LlamaModel> base_holder;
  const LlamaModel* base = nullptr;
  for (const Evaluation* e : pending)
    if (e->kind == EvalKind::KlDivergence && base == nullptr) {
      if (is_baseline_method(cell.method_name)) {
        base = model.get();
      } else {
        base_holder = std::make_unique<LlamaModel>(open_model(mspec.path));
        base = base_holder.get();
      }
    }
  const bool on_gpu = session_->device().is_cuda();
  // One upload per cell, when some evaluation runs on the session's device.
  std::unique_ptr<PlacedModel> placed;
  for (const Evaluation* e : pending)
    if (e->kind != EvalKind::VisionLanguage && !placed) placed = session_->place(*model);
  // The LLaVA-Next model of a vision-language evaluation: the model's vision tower and projector
  // (as stored) around the cell's language model, exactly as load_llava_next() reads the checkpoint
  // `lowbit quantize` writes for this cell. It runs on the CPU.
  std::unique_ptr<LlavaNextModel> vlm_model;
  for (const Evaluation* e : pending)
    if (e->kind == EvalKind::VisionLanguage && !vlm_model) {
      vlm_model = llava_next_with_language_model(mspec.path, model->checkpoint());
      vlm_model->language_model().set_keep_16bit_weights(true);  // as vlm-eval decodes
    }
  CellRecord rec;
  rec.key = cell.key;
  rec.model = cell.model_name;
  rec.model_path = mspec.path;
  rec.model_sha256 = ms.sha256;
  rec.method = cell.method;
  rec.method_name = cell.method_name;
  rec.resolved = trained.resolved.empty() ? method["method"].value("resolved", cell.method) : trained.resolved;
  rec.w = cell.w;
  rec.a = cell.a;
  rec.g = cell.g;
  rec.calibration = cell.calibration;
  rec.calibration_json = method["calibration"].dump();
  rec.quantize_seconds = quantize_seconds;
  rec.ord = int64_t(&cell - plan_.cells.data());
  rec.train_seconds = trained.train_seconds;
  rec.train_loss = trained.final_loss;
  rec.training = trained.record.dump();

  for (const Evaluation* e : pending) {
    double seconds = 0;
    json evaluation;
    const bool vision_language = e->kind == EvalKind::VisionLanguage;
    const std::vector<MetricValue> metrics =
        vision_language ? evaluate_vision_language(cell, ms, *vlm_model, *e, evaluation, seconds)
                        : evaluate(cell, ms, *model, *placed, base, *e, evaluation, seconds);
    const bool eval_on_gpu = on_gpu;
    RuntimeFacts facts;
    facts.seconds = seconds;
    facts.peak = peak_rss(peak_reset_ ? "this cell (quantization and evaluations so far)" : "");
    facts.device = eval_on_gpu ? device_name_ : "cpu";
    facts.gpu = eval_on_gpu;
    facts.threads = num_threads();
    if (eval_on_gpu)
      if (auto peak = session_->peak_memory_bytes()) facts.peak_gpu_bytes = *peak;
    json id = result_identity(ms.identity, method, evaluation, runtime_part(facts));
    id["study"] = spec_.name;
    id["cell"] = cell.key;
    id["quantize_seconds"] = quantize_seconds;
    id["quantize_device"] = quantize_device;
    if (cell.train.kind != TrainKind::None) {
      // The training's identity without its loss log (the cell's record holds that once).
      json t = trained.record;
      t.erase("log");
      // A distillation in fp32 (the default) keeps the identity it had before the option; tf32
      // and bf16 are named, as the cell's key names them.
      if (t.value("kind", "") == "distill" && t.value("compute", "fp32") == "fp32") t.erase("compute");
      id["training"] = t;
    }
    id["run"] = run_id_;
    EvalRecord er;
    er.eval = e->name;
    er.eval_key = e->key;
    er.kind = evaluation["kind"].get<std::string>();
    er.seconds = seconds;
    er.peak_rss_bytes = facts.peak.bytes;
    er.device = facts.device;
    er.threads = facts.threads;
    er.run_id = run_id_;
    er.identity = id.dump();
    if (!store_->write_evaluation(rec, er, metrics, worker_)) {
      note(fmt::format("{} of cell {}: another worker took the item over (this worker's lease had expired); "
                       "its result is that worker's to write", e->key, cell.key));
      ++done_;
      ++current_unit_;
      continue;
    }
    eta_.add_eval(cell.model_name, e->key, seconds);
    ++done_;
    ++current_unit_;
    ++summary_.evaluations_run;
    summary_.results_written += int64_t(metrics.size());
    if (ev_.on_eval_done) ev_.on_eval_done(cell, *e, metrics, seconds, progress());
  }
}

void Runner::setup_device() {
  const int threads = opt_.threads >= 0 ? opt_.threads : spec_.threads;
  set_num_threads(threads);
  session_ = open_eval_session(parse_device(spec_.device));
  device_name_ = session_->name();
}

StudySummary Runner::run() {
  LB_CHECK(!is_postgres_uri(spec_.db), "results store '{}' is a PostgreSQL database, shared by workers: run "
           "`lowbit study SPEC --db URI --worker` (any number of them)", redact_db(spec_.db));
  setup_device();
  prepare_store();
  plan_units();
  RunRecord rr;
  rr.spec_path = fs::absolute(spec_.path).string();
  rr.spec_text = spec_.text;
  rr.device = device_name_;
  rr.threads = num_threads();
  run_id_ = store_->begin_run(rr);

  // The cells with work, grouped by evaluation to do.
  std::vector<std::pair<const Cell*, std::vector<const Evaluation*>>> work;
  for (const Cell& c : plan_.cells) {
    std::vector<const Evaluation*> pending;
    for (const Evaluation& e : plan_.evaluations)
      if (!stored_.count({c.key, e.key})) pending.push_back(&e);
    if (!pending.empty()) work.emplace_back(&c, std::move(pending));
  }
  if (ev_.on_start) {
    StudyStart s;
    s.db = spec_.db;
    s.cells = int64_t(plan_.cells.size());
    s.evaluations = int64_t(plan_.evaluations.size());
    s.stored = 0;
    for (const Cell& c : plan_.cells)
      for (const Evaluation& e : plan_.evaluations) s.stored += stored_.count({c.key, e.key}) ? 1 : 0;
    s.pending_cells = int64_t(work.size());
    s.pending_evaluations = s.cells * s.evaluations - s.stored;
    s.threads = num_threads();
    s.device = device_name_;
    ev_.on_start(s);
  }
  for (size_t i = 0; i < work.size(); ++i) {
    const Cell& cell = *work[i].first;
    if (ev_.on_cell) ev_.on_cell(cell, int64_t(i), int64_t(work.size()), int64_t(work[i].second.size()));
    try {
      run_cell(cell, work[i].second);
    } catch (const Error& e) {
      throw Error(fmt::format("cell {}: {} (the results stored so far are kept; --resume continues)", cell.key,
                              e.what()));
    }
  }
  store_->finish_run(run_id_);
  summary_.results_total = store_->result_count();
  summary_.seconds = since(t0_);
  return summary_;
}

StudySummary Runner::run_worker() {
  LB_CHECK(is_postgres_uri(spec_.db), "--worker: results store '{}' is a SQLite file, which one `lowbit study` "
           "writes at a time; workers share a PostgreSQL store (--db postgresql://...)", spec_.db);
  LB_CHECK(opt_.lease_seconds >= 1, "--lease {}: a lease lasts at least 1 second", opt_.lease_seconds);
  LB_CHECK(opt_.retries >= 0, "--retries {}: must be 0 or more", opt_.retries);
  setup_device();
  store_ = std::make_unique<Store>(spec_.db, Store::Mode::ReadWrite);
  std::vector<WorkItem> items;
  std::map<std::string, const Cell*> cells;
  std::map<std::string, const Evaluation*> evals;
  for (size_t i = 0; i < plan_.cells.size(); ++i) {
    cells[plan_.cells[i].key] = &plan_.cells[i];
    for (size_t j = 0; j < plan_.evaluations.size(); ++j)
      items.push_back({plan_.cells[i].key, plan_.evaluations[j].key, int64_t(i), int64_t(j)});
  }
  for (const Evaluation& e : plan_.evaluations) evals[e.key] = &e;
  store_->register_study(spec_.name, items);
  if (opt_.retry_failed) {
    const int64_t n = store_->retry_failed();
    if (n > 0) note(fmt::format("{} failed item{} back to pending", n, n == 1 ? "" : "s"));
  }
  load_history();

  RunRecord rr;
  rr.spec_path = fs::absolute(spec_.path).string();
  rr.spec_text = spec_.text;
  rr.device = spec_.device == "cpu" ? "cpu" : fmt::format("{} ({})", spec_.device, device_name_);
  rr.threads = num_threads();
  run_id_ = store_->begin_run(rr);
  WorkerInfo w;
  w.host = this_host();
  w.id = fmt::format("{}:{}:run{}", w.host, ::getpid(), run_id_);
  w.device = rr.device;
  w.run_id = run_id_;
  worker_ = w.id;
  store_->start_heartbeat(w.id, opt_.lease_seconds);
  if (ev_.on_start) {
    const QueueStatus q = store_->queue_status();
    StudyStart s;
    s.db = redact_db(spec_.db);
    s.cells = int64_t(plan_.cells.size());
    s.evaluations = int64_t(plan_.evaluations.size());
    s.stored = q.done;
    s.pending_evaluations = q.pending + q.running;
    s.pending_cells = -1;
    s.threads = num_threads();
    s.device = rr.device;
    ev_.on_start(s);
  }
  // While other workers hold every open item, poll for expired leases and for the study's end at
  // this period (a poll is one short query; a longer period would keep an idle worker alive for
  // seconds after the last item is done).
  const auto poll = std::chrono::duration<double>(std::clamp(opt_.lease_seconds / 4, 0.2, 1.0));
  bool waiting = false;
  for (int64_t claims = 0;;) {
    const Claim c = store_->claim(w, opt_.lease_seconds);
    if (c.cell_key.empty()) {
      const int64_t open = store_->open_items();
      if (open == 0) break;
      if (!waiting) note(fmt::format("waiting: {} items are running on other workers", open));
      waiting = true;
      std::this_thread::sleep_for(poll);
      continue;
    }
    waiting = false;
    auto ci = cells.find(c.cell_key);
    LB_CHECK(ci != cells.end(), "results store '{}': work item of unknown cell '{}'", redact_db(spec_.db), c.cell_key);
    const Cell& cell = *ci->second;
    std::vector<const Evaluation*> pending;
    for (const std::string& k : c.eval_keys) {
      auto ei = evals.find(k);
      LB_CHECK(ei != evals.end(), "results store '{}': work item of unknown evaluation '{}'", redact_db(spec_.db), k);
      pending.push_back(ei->second);
    }
    if (c.taken_over > 0)
      note(fmt::format("cell {}: took over {} item{} whose worker's lease expired", cell.key, c.taken_over,
                       c.taken_over == 1 ? "" : "s"));
    // Progress and ETA of this claim.
    units_.clear();
    current_unit_ = 0;
    done_ = 0;
    if (!is_baseline_method(cell.method_name)) units_.push_back({&cell, nullptr});
    for (const Evaluation* e : pending) units_.push_back({&cell, e});
    if (ev_.on_cell) ev_.on_cell(cell, claims++, 0, int64_t(pending.size()));
    try {
      run_cell(cell, pending);
    } catch (const std::exception& e) {
      // The cell's items not yet done go back to the queue (or fail for good after `retries`).
      store_->fail_items(w.id, cell.key, e.what(), opt_.retries);
      ++summary_.cells_failed;
      note(fmt::format("cell {} failed: {} (recorded; retried up to {} times)", cell.key, e.what(), opt_.retries));
    }
  }
  store_->finish_run(run_id_);
  summary_.results_total = store_->result_count();
  summary_.seconds = since(t0_);
  return summary_;
}

}  // namespace

StudySummary run_study(const StudySpec& spec, const RunOptions& opt, const StudyEvents& events) {
  Runner r(spec, opt, events);
  return opt.worker ? r.run_worker() : r.run();
}

}  // namespace lowbit::study
