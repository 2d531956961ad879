// A study's trained cells on stories260K: QLoRA, IR-QLoRA and DB-LLM trained a few steps, stored
// with their training (loss log, seconds) and evaluated on the model the standalone training
// gives (run_finetune's adapters merged over its base; run_distill's weights); a study
// interrupted after a trained cell resumes without training it again, to the uninterrupted
// study's numbers.
#include "calib/calib_data.h"
#include "backend/device_check.h"
#include "core/error.h"
#include "eval/datasets.h"
#include "eval/eval_session.h"
#include "eval/perplexity.h"
#include "formats/tokenizer.h"
#include "quant/lowbit_checkpoint.h"
#include "quant/quantize.h"
#include "study/report.h"
#include "study/runner.h"
#include "study/spec.h"
#include "train/adapter_io.h"
#include "train/distill.h"
#include "train/finetune.h"
#include "test_util.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>

namespace lowbit::study {
namespace {

std::string stories() { return test::models_dir() + "/stories260K/stories260K.bin"; }
std::string alpaca() { return test::data_dir() + "/alpaca/alpaca_5000.json"; }

// Texts of the test's own in `text_dir` (tokenizing PTB would take most of the test's time):
// calibration windows for DB-LLM, and two evaluation texts (two, so that a cell can stop between
// its evaluations).
std::string write_spec(const test::TempDir& dir, const std::string& text_dir) {
  const std::string spec = dir / "train.toml";
  const std::vector<std::string> sentences = {
      "Once upon a time there was a little girl who liked to play in the park. ",
      "One day she found a shiny red ball under a big tree and she was very happy. ",
      "Her brother wanted the ball too, so they played together until the sun went down. ",
      "The dog barked at the cat, and the cat ran up the tree to hide from the dog. "};
  std::string story, calib, other;
  for (int i = 0; i < 40; ++i) {
    story += sentences[size_t(i) % 2];
    other += sentences[2 + size_t(i) % 2];
    for (const auto& x : sentences) calib += x;
  }
  test::spit(text_dir + "/story.txt", story);
  test::spit(text_dir + "/other.txt", other);
  test::spit(text_dir + "/calib.txt", calib);
  test::spit(spec, "[study]\nname = \"train\"\nthreads = 1\n\n[[model]]\nname = \"stories\"\npath = \"" + stories() +
                       "\"\n\n[calibration]\nset = \"" + text_dir + "/calib.txt\"\nnsamples = 4\nseqlen = 64\n\n"
                       "[eval]\nppl = [\"" + text_dir + "/story.txt\", \"" + text_dir +
                       "/other.txt\"]\nseqlen = 64\nlimit = 2\n\n"
                       "[[finetune]]\nmethod = [\"qlora\", \"irqlora\"]\ndata = \"" + alpaca() +
                       "\"\nr = 4\nalpha = 8\nsteps = 4\nbatch = 2\ngrad_accum = 2\nlr = 1e-3\nlimit = 120\n\n"
                       "[[distill]]\ng = 4\nsteps = 3\ngrad_accum = 2\nlr = 1e-3\n");
  return spec;
}

void require_files() {
  LOWBIT_REQUIRE_PATH(stories());
  LOWBIT_REQUIRE_PATH(alpaca());
}

TEST(StudyTrain, CellsAreTheStandaloneTrainingsModels) {
  require_files();
  test::TempDir dir;
  const StudySpec spec = load_study_spec(write_spec(dir, dir.path.string()));
  int trained = 0;
  StudyEvents ev;
  ev.on_quantized = [&](const Cell& c, double, const StudyProgress&) { trained += c.train.kind != TrainKind::None; };
  const StudySummary s = run_study(spec, {}, ev);
  EXPECT_EQ(trained, 3);
  EXPECT_EQ(s.evaluations_run, 3 * 2);
  const ReportData r = load_report(spec.db);
  ASSERT_EQ(r.cells.size(), 3u);

  auto tok = load_tokenizer(open_model(stories()).tokenizer_path);
  auto windows = eval_windows(resolve_eval_set(dir / "story.txt", ""), *tok, 64, BosMode::Default);
  windows.resize(2);
  std::map<std::string, double> ppl;
  for (const ResultRecord& x : r.results)
    if (x.eval == dir / "story.txt") ppl[x.cell_key] = x.value;

  for (const CellRecord& c : r.cells) {
    SCOPED_TRACE(c.key);
    const nlohmann::json t = nlohmann::json::parse(c.training);
    ASSERT_TRUE(t.is_object());
    const nlohmann::json& log = t["log"];
    ASSERT_EQ(int64_t(log.size()), c.method_name == "dbllm" ? 3 : 4);
    for (const auto& rec : log) EXPECT_TRUE(std::isfinite(rec["loss"].get<double>()));
    EXPECT_LT(log.back()["loss"].get<double>(), log.front()["loss"].get<double>());
    ASSERT_TRUE(c.train_loss.has_value());
    EXPECT_EQ(*c.train_loss, log.back()["loss"].get<double>());
    EXPECT_GT(c.train_seconds, 0);
    ASSERT_TRUE(ppl.count(c.key));

    if (c.method_name == "dbllm") {
      // lowbit distill's model: run_distill's weights, written and read back.
      const Checkpoint source = open_model(stories());
      train::DistillOptions o;
      o.method = "dbllm:g=4";
      o.steps = 3;
      o.grad_accum = 2;
      o.lr = 1e-3;
      const Calibration calib = make_calibration(resolve_calibration_set(dir / "calib.txt", ""), *tok, 4, 64, 0,
                                                 BosMode::Default);
      train::DistillResult d = train::run_distill(stories(), o, calib);
      EXPECT_EQ(t["log"], d.training["log"]);
      // The products' precision is recorded: fp32, the default on every device.
      EXPECT_EQ(d.training["compute"], "fp32");
      EXPECT_EQ(t["compute"], "fp32");
      {
        // With no steps nothing trains: a GPU that is not there is not asked for, and a GPU
        // precision is taken (checked against the device's kind only).
        train::DistillOptions z = o;
        z.steps = 0;
        z.device = "cuda:99";
        z.compute = "bf16";
        EXPECT_NO_THROW(train::run_distill(stories(), z, calib));
      }
      LlamaModel teacher(open_model(stories()));
      write_quantized_checkpoint(dir / "dbllm", teacher, d.qm, nlohmann::json::object(), false);
      EXPECT_EQ(perplexity(*load_model(dir / "dbllm"), windows).ppl, ppl[c.key]);
      continue;
    }
    // lowbit finetune's adapters, written in PEFT's format, merged over the base quantized as
    // `lowbit quantize` does it (written and read back).
    train::FinetuneOptions o;
    o.model = stories();
    o.method = c.method_name + ":r=4,alpha=8";
    o.data = alpaca();
    o.steps = 4;
    o.batch = 2;
    o.grad_accum = 2;
    o.lr = 1e-3;
    o.limit = 120;
    const train::FinetuneResult f = train::run_finetune(o);
    EXPECT_EQ(t["log"], f.summary["log"]);
    // The same run but for how the paths were written.
    nlohmann::json run = t["run"], want_run = f.summary["run"];
    for (const char* k : {"model", "data"}) {
      EXPECT_TRUE(std::filesystem::equivalent(run[k].get<std::string>(), want_run[k].get<std::string>()));
      run.erase(k);
      want_run.erase(k);
    }
    EXPECT_EQ(run, want_run);
    const std::string adapter = dir / ("adapter-" + c.method_name);
    train::save_peft_adapter(adapter, f.adapters, stories());
    const std::string base = dir / ("base-" + c.method_name);
    {
      LlamaModel work(open_model(stories()));
      auto method = make_method(train::parse_finetune_method(o.method).base_spec);
      const QuantizedModel qm = quantize_model(work, *method, nullptr, {});
      write_quantized_checkpoint(base, work, qm, nlohmann::json::object(), false);
    }
    auto model = load_model(base);
    train::merge_adapters(*model, train::load_peft_adapter(adapter, model->config()));
    EXPECT_EQ(perplexity(*model, windows).ppl, ppl[c.key]);
  }
  // The paper's rows.
  const std::string md = render_markdown(r);
  for (const char* label : {"| QLoRA (alpha=8, r=4) ", "| IR-QLoRA (alpha=8, r=4) ", "| DB-LLM "})
    EXPECT_NE(md.find(label), std::string::npos) << md;
}

// A [[distill]] cell on generated windows: no calibration text in the spec or the cell (its
// calibration "none"), the training record naming the generation, and the model `lowbit distill
// --data generated` gives with the same options.
TEST(StudyTrain, DistillOnGeneratedData) {
  LOWBIT_REQUIRE_PATH(stories());
  test::TempDir dir;
  const std::string story = dir / "story.txt";
  std::string text;
  for (int i = 0; i < 40; ++i) text += "Once upon a time there was a little girl who liked to play in the park. ";
  test::spit(story, text);
  const std::string spec_path = dir / "gen.toml";
  test::spit(spec_path, "[study]\nname = \"gen\"\nthreads = 1\n\n[[model]]\nname = \"stories\"\npath = \"" +
                            stories() + "\"\n\n[eval]\nppl = [\"" + story + "\"]\nseqlen = 64\nlimit = 2\n\n"
                            "[[distill]]\ng = 4\nsteps = 3\ngrad_accum = 2\nlr = 1e-3\ndata = \"generated\"\n"
                            "gen_nsamples = 4\ngen_seqlen = 48\ngen_seed = 9\n");
  const StudySpec spec = load_study_spec(spec_path);
  EXPECT_FALSE(spec.needs_calibration());
  run_study(spec, {}, {});
  const ReportData r = load_report(spec.db);
  ASSERT_EQ(r.cells.size(), 1u);
  const CellRecord& c = r.cells[0];
  EXPECT_EQ(c.calibration, "none");
  EXPECT_NE(c.key.find("|none|dad:"), std::string::npos) << c.key;
  EXPECT_NE(c.key.find(",data=generated,gen_nsamples=4,gen_seqlen=48,gen_seed=9,"), std::string::npos) << c.key;
  const nlohmann::json t = nlohmann::json::parse(c.training);
  EXPECT_EQ(t["data"]["set"], "generated");
  EXPECT_EQ(t["data"]["seed"], 9);
  // fp32, the default: recorded, and not in the key (which names compute, when not fp32, before
  // the generation).
  EXPECT_EQ(t["compute"], "fp32");
  EXPECT_EQ(c.key.find("compute="), std::string::npos) << c.key;

  train::DistillOptions o;
  o.method = "dbllm:g=4";
  o.steps = 3;
  o.grad_accum = 2;
  o.lr = 1e-3;
  o.data = "generated";
  o.gen.nsamples = 4;
  o.gen.seqlen = 48;
  o.gen.seed = 9;
  const train::DistillResult d = train::run_distill(stories(), o, nullptr);
  EXPECT_EQ(t["log"], d.training["log"]);
  EXPECT_EQ(t["data"], d.training["data"]);
  LlamaModel teacher(open_model(stories()));
  write_quantized_checkpoint(dir / "dbllm", teacher, d.qm, nlohmann::json::object(), false);
  auto tok = load_tokenizer(open_model(stories()).tokenizer_path);
  auto windows = eval_windows(resolve_eval_set(story, ""), *tok, 64, BosMode::Default);
  windows.resize(2);
  ASSERT_EQ(r.results.size(), 1u);
  EXPECT_EQ(perplexity(*load_model(dir / "dbllm"), windows).ppl, r.results[0].value);
}

TEST(StudyTrain, ResumeDoesNotRetrainFinishedCells) {
  require_files();
  test::TempDir a, b;
  const StudySpec sa = load_study_spec(write_spec(a, a.path.string()));
  run_study(sa, {}, {});
  const std::string want = render_rows(load_report(sa.db));

  // Interrupted inside the second cell (after its first evaluation).
  const StudySpec sb = load_study_spec(write_spec(b, a.path.string()));
  StudyEvents stop;
  int done = 0;
  stop.on_eval_done = [&](const Cell&, const Evaluation&, const std::vector<MetricValue>&, double,
                          const StudyProgress&) {
    if (++done == 3) throw Error("interrupted");
  };
  EXPECT_THROW(run_study(sb, {}, stop), Error);
  RunOptions resume;
  resume.resume = true;
  std::vector<std::string> trained;
  StudyEvents count;
  count.on_quantized = [&](const Cell& c, double, const StudyProgress&) { trained.push_back(c.method_name); };
  const StudySummary rest = run_study(sb, resume, count);
  // The first cell (qlora) is finished and not trained again; the interrupted one and the last are.
  EXPECT_EQ(trained, (std::vector<std::string>{"irqlora", "dbllm"}));
  EXPECT_EQ(rest.evaluations_run, 6 - 3);
  EXPECT_EQ(render_rows(load_report(sb.db)), want);
  trained.clear();
  EXPECT_EQ(run_study(sb, resume, count).evaluations_run, 0);
  EXPECT_TRUE(trained.empty());
}

// The model a LoRA-FT cell evaluates: trained adapters merged over the NF4 base. Its block
// weights are merge_adapters' (the CPU forward's numbers are those of `--adapter`), and its
// checkpoint's weights, which a GPU placement uploads, are those same merged weights.
train::FinetuneResult small_qlora() {
  train::FinetuneOptions o;
  o.model = stories();
  o.method = "qlora:r=4,alpha=8,targets=q_proj+v_proj+down_proj";
  o.data = alpaca();
  o.steps = 4;
  o.batch = 2;
  o.grad_accum = 2;
  o.lr = 1e-2;
  o.limit = 40;
  return train::run_finetune(o);
}

TEST(StudyTrain, MergedModelCarriesTheMergeInItsWeights) {
  LOWBIT_REQUIRE_PATH(stories());
  LOWBIT_REQUIRE_PATH(alpaca());
  const train::FinetuneResult f = small_qlora();
  const auto merged = train::merged_model(*f.model, f.adapters);
  LlamaModel in_place(f.model->checkpoint());
  train::merge_adapters(in_place, f.adapters);
  const WeightSource& w = *merged->checkpoint().weights;
  const WeightSource& base = *f.model->checkpoint().weights;
  int64_t changed = 0;
  for (int64_t l = 0; l < merged->config().num_hidden_layers; ++l) {
    const auto mine = merged->block_weights(l), want = in_place.block_weights(l);
    for (LinearKind k : kAllLinears) {
      const Tensor& a = (*mine)[k];
      const Tensor& b = (*want)[k];
      ASSERT_EQ(a.numel(), b.numel());
      EXPECT_EQ(std::memcmp(a.data(), b.data(), size_t(a.nbytes())), 0) << l << " " << linear_name(k);
      // What a GPU uploads: the merged fp32 weight where adapted, the base's tensor elsewhere.
      const Tensor t = w.get(linear_weight_name(l, k));
      const bool adapted = f.adapters.layers[size_t(l)][size_t(k)].active();
      const Tensor& expect = adapted ? b : base.get(linear_weight_name(l, k));
      ASSERT_EQ(t.dtype(), expect.dtype());
      ASSERT_EQ(t.nbytes(), expect.nbytes());
      EXPECT_EQ(std::memcmp(t.data(), expect.data(), size_t(t.nbytes())), 0) << l << " " << linear_name(k);
      if (adapted) {
        const Tensor d = base.get(linear_weight_name(l, k));
        changed += d.dtype() != t.dtype() || std::memcmp(d.data(), t.data(), size_t(t.nbytes())) != 0;
      }
    }
  }
  EXPECT_EQ(changed, 3 * merged->config().num_hidden_layers);
  EXPECT_EQ(merged->checkpoint().quantization, f.model->checkpoint().quantization);
}

// On a GPU (skipped without one): the merged model's perplexity is the CPU's within the bf16
// forward's error, and not the base's (the adapters are read).
TEST(StudyTrain, OnAGpuTheMergedAdaptersAreEvaluated) {
  LOWBIT_REQUIRE_PATH(stories());
  LOWBIT_REQUIRE_PATH(alpaca());
  if (!cuda_backend_built()) GTEST_SKIP() << "built without CUDA";
  try {
    check_device_available(parse_device("cuda:0"));
  } catch (const Error& e) {
    GTEST_SKIP() << e.what();
  }
  const train::FinetuneResult f = small_qlora();
  const auto merged = train::merged_model(*f.model, f.adapters);
  auto tok = load_tokenizer(open_model(stories()).tokenizer_path);
  test::TempDir dir;
  std::string text;
  for (int i = 0; i < 60; ++i) text += "Once upon a time there was a little girl who liked to play in the park. ";
  test::spit(dir / "t.txt", text);
  auto windows = eval_windows(resolve_eval_set(dir / "t.txt", ""), *tok, 64, BosMode::Default);
  const auto gpu = open_eval_session(parse_device("cuda:0"));
  const double cpu_merged = perplexity(*merged, windows).ppl;
  const double gpu_merged = gpu->place(*merged)->perplexity(windows, 2, {}).ppl;
  const double gpu_base = gpu->place(*f.model)->perplexity(windows, 2, {}).ppl;
  std::printf("ppl: merged CPU %.4f GPU %.4f, base GPU %.4f\n", cpu_merged, gpu_merged, gpu_base);
  EXPECT_NEAR(gpu_merged, cpu_merged, 0.01 * cpu_merged);
  EXPECT_NE(gpu_merged, gpu_base);
}

}  // namespace
}  // namespace lowbit::study
