// Studies on stories260K: the in-memory quantized model against the checkpoint round trip, and
// the runner's store semantics (resume after an interruption gives the uninterrupted numbers,
// --resume required to continue a store, a changed model refused).
#include "calib/calib_data.h"
#include "core/error.h"
#include "eval/datasets.h"
#include "eval/kl_divergence.h"
#include "eval/perplexity.h"
#include "quant/quantize.h"
#include "quant/quantized_in_memory.h"
#include "study/report.h"
#include "study/runner.h"
#include "study/spec.h"
#include "test_util.h"

#include <gtest/gtest.h>

#include <filesystem>

namespace lowbit::study {
namespace {

std::string stories() { return test::models_dir() + "/stories260K/stories260K.bin"; }

// Windows of the PTB validation text.
std::vector<std::vector<int32_t>> ptb_windows(const Tokenizer& tok, int64_t T, size_t n) {
  std::vector<int32_t> ids = tok.encode(test::slurp(test::data_dir() + "/ptb/ptb.valid.txt"), BosMode::Default);
  std::vector<std::vector<int32_t>> w;
  for (size_t i = 0; i < n; ++i) w.emplace_back(ids.begin() + int64_t(i) * T, ids.begin() + int64_t(i + 1) * T);
  return w;
}

// What the study evaluates (the quantized model held in memory) is what the quantized checkpoint
// gives when written and read back, activation quantization included.
TEST(StudyInMemory, EvaluatesLikeTheWrittenCheckpoint) {
  LOWBIT_REQUIRE_PATH(stories());
  LOWBIT_REQUIRE_PATH(test::data_dir() + "/ptb/ptb.valid.txt");
  test::TempDir dir;
  auto tok = load_tokenizer(open_model(stories()).tokenizer_path);
  const Calibration calib = make_calibration(resolve_calibration_set("ptb", test::data_dir()), *tok, 4, 128, 0,
                                             BosMode::Default);
  for (const std::string spec : {"rtn:w=3,g=32", "gptq:w=3,g=32", "smoothquant:w=8,a=4"}) {
    const Checkpoint source = open_model(stories());
    LlamaModel work(source);
    auto method = make_method(spec);
    QuantizedModel qm = quantize_model(work, *method, method->needs_calibration() ? &calib : nullptr, {});
    const std::string out = dir / ("q" + std::to_string(spec.size()));
    write_quantized_checkpoint(out, work, qm, nlohmann::json::object(), false);
    auto loaded = load_model(out);
    LlamaModel mem(quantized_checkpoint_in_memory(source, std::move(qm), {{"path", stories()}}));
    install_quantized_forward(mem);
    EXPECT_EQ(mem.forward_hooks() == nullptr, loaded->forward_hooks() == nullptr) << spec;
    EXPECT_EQ(mem.checkpoint().quantization["method"]["spec"], spec);
    const auto windows = ptb_windows(*tok, 128, 3);
    EXPECT_EQ(perplexity(mem, windows).ppl, perplexity(*loaded, windows).ppl) << spec;
  }
}

std::string write_spec(const test::TempDir& dir, const std::string& model, const std::string& name = "runner") {
  const std::string spec = dir / (name + ".toml");
  test::spit(spec, "[study]\nname = \"" + name + "\"\ndb = \"" + name + ".sqlite\"\nthreads = 2\ndata_dir = \"" +
                       test::data_dir() + "\"\n\n[[model]]\nname = \"stories\"\npath = \"" + model +
                       "\"\n\n[calibration]\nset = \"ptb\"\nnsamples = 4\nseqlen = 128\n\n"
                       "[eval]\nppl = [\"ptb\", \"wikitext2\"]\nseqlen = 128\nlimit = 2\ntasks = [\"piqa\"]\n"
                       "task_limit = 6\n\n"
                       "[[method]]\nname = \"fp16\"\n\n[[method]]\nname = \"rtn\"\nw = [4, 2]\ng = 32\n\n"
                       "[[method]]\nname = \"gptq\"\nw = 3\ng = 32\n");
  return spec;
}

std::string rows_of(const std::string& db) { return render_rows(load_report(db)); }

TEST(StudyRunner, ResumeAfterAnInterruptionGivesTheUninterruptedResults) {
  LOWBIT_REQUIRE_PATH(stories());
  LOWBIT_REQUIRE_PATH(test::data_dir() + "/piqa/valid.jsonl");
  test::TempDir a, b;
  const StudySpec sa = load_study_spec(write_spec(a, stories()));
  const StudySummary full = run_study(sa, {}, {});
  EXPECT_EQ(full.evaluations_run, 4 * 3);
  EXPECT_EQ(full.results_total, 4 * (2 + 2));  // ppl x 2, piqa acc and acc_norm
  const std::string want = rows_of(sa.db);

  // The same study stopped after 5 evaluations (an exception out of the progress callback, as a
  // failure inside a cell would), then resumed.
  const StudySpec sb = load_study_spec(write_spec(b, stories()));
  StudyEvents stop;
  int done = 0;
  stop.on_eval_done = [&](const Cell&, const Evaluation&, const std::vector<MetricValue>&, double,
                          const StudyProgress&) {
    if (++done == 5) throw Error("interrupted");
  };
  EXPECT_THROW(run_study(sb, {}, stop), Error);
  EXPECT_EQ(load_report(sb.db).results.size(), 6u);  // ppl, ppl, piqa acc and acc_norm; ppl, ppl
  // A store with results is continued only on request.
  try {
    run_study(sb, {}, {});
    ADD_FAILURE() << "a store with results was continued without --resume";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("pass --resume"), std::string::npos) << e.what();
  }
  RunOptions resume;
  resume.resume = true;
  StudyEvents count;
  int64_t starts = 0;
  count.on_start = [&](const StudyStart& s) {
    EXPECT_EQ(s.stored, 5);
    ++starts;
  };
  const StudySummary rest = run_study(sb, resume, count);
  EXPECT_EQ(starts, 1);
  EXPECT_EQ(rest.evaluations_run, 12 - 5);
  EXPECT_EQ(rows_of(sb.db), want);
  // Nothing left: a further resume runs nothing.
  EXPECT_EQ(run_study(sb, resume, {}).evaluations_run, 0);
  EXPECT_EQ(rows_of(sb.db), want);
  // The interrupted run, the resumed one and the last: the refused run never started.
  EXPECT_EQ(Store(sb.db, Store::Mode::ReadOnly).runs().size(), 3u);
}

// [eval] kld: every cell's KL-divergence from the study's 16-bit model is what kl_divergence()
// gives on the same windows (0 for the baseline), stored with the base in the identity.
TEST(StudyRunner, KlDivergenceOfEachCellFromTheBaseline) {
  LOWBIT_REQUIRE_PATH(stories());
  LOWBIT_REQUIRE_PATH(test::data_dir() + "/ptb/ptb.valid.txt");
  test::TempDir dir;
  StudySpec spec = load_study_spec(write_spec(dir, stories()));
  spec.methods.resize(2);  // fp16, rtn:w=4,g=32
  spec.eval.ppl.clear();
  spec.eval.tasks.clear();
  spec.eval.kld = {"ptb"};
  run_study(spec, {}, {});
  const ReportData r = load_report(spec.db);
  std::map<std::pair<std::string, std::string>, const ResultRecord*> by;
  for (const ResultRecord& x : r.results) by[{x.cell_key, x.metric}] = &x;
  auto at = [&](const std::string& cell, const std::string& metric) { return by.at({cell, metric}); };
  ASSERT_TRUE(by.count(std::make_pair(std::string("stories|fp16|none"), std::string("kld_mean"))));
  EXPECT_EQ(at("stories|fp16|none", "kld_mean")->value, 0.0);
  EXPECT_EQ(at("stories|fp16|none", "top1_agreement")->value, 1.0);

  auto tok = load_tokenizer(open_model(stories()).tokenizer_path);
  auto windows = eval_windows(resolve_eval_set("ptb", test::data_dir()), *tok, 128, BosMode::Default);
  windows.resize(2);
  LlamaModel base(open_model(stories()));
  const Checkpoint source = open_model(stories());
  LlamaModel work(source);
  auto method = make_method("rtn:w=4,g=32");
  LlamaModel q(quantized_checkpoint_in_memory(source, quantize_model(work, *method, nullptr, {}), {{"path", stories()}}));
  install_quantized_forward(q);
  const KlDivergenceResult want = kl_divergence(base, q, windows);
  const std::string cell = "stories|rtn:w=4,g=32|none";
  ASSERT_TRUE(by.count(std::make_pair(cell, std::string("kld_mean"))));
  EXPECT_EQ(at(cell, "kld_mean")->value, want.kld.mean);
  EXPECT_EQ(at(cell, "kld_mean")->stderr_, want.kld.stderr_);
  EXPECT_EQ(at(cell, "kld_p99")->value, want.kld.p99);
  EXPECT_EQ(at(cell, "top1_agreement")->value, want.kld.top1);
  EXPECT_EQ(at(cell, "kld_mean")->n, want.kld.positions);
  EXPECT_GT(want.kld.mean, 0.0);
  const nlohmann::json id = nlohmann::json::parse(at(cell, "kld_mean")->identity);
  EXPECT_EQ(id["evaluation"]["kind"], "kl_divergence");
  EXPECT_EQ(id["evaluation"]["base"]["method"]["spec"], "fp16");
  EXPECT_EQ(id["method"]["spec"], "rtn:w=4,g=32");
  // The report's KLD table.
  EXPECT_NE(render_markdown(r, {}).find("| PTB KLD | PTB top-1 % |"), std::string::npos);
}

TEST(StudyRunner, RefusesAnotherStudysStoreAndAChangedModel) {
  LOWBIT_REQUIRE_PATH(stories());
  LOWBIT_REQUIRE_PATH(test::data_dir() + "/piqa/valid.jsonl");
  test::TempDir dir;
  const std::string copy = dir / "stories.bin";
  std::filesystem::copy_file(stories(), copy);
  std::filesystem::copy_file(std::filesystem::path(stories()).parent_path() / "tok512.bin", dir / "tok512.bin");
  StudySpec spec = load_study_spec(write_spec(dir, copy));
  spec.methods.resize(1);  // the baseline alone is enough here
  spec.eval.tasks.clear();
  RunOptions resume;
  resume.resume = true;
  run_study(spec, resume, {});
  StudySpec other = spec;
  other.name = "another";
  try {
    run_study(other, resume, {});
    ADD_FAILURE() << "ran another study into the store";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("belongs to study 'runner', not 'another'"), std::string::npos) << e.what();
  }
  // Change one weight byte: the stored results are not this model's any more.
  std::string bytes = test::slurp(copy);
  bytes[bytes.size() - 7] ^= 0x40;
  test::spit(copy, bytes);
  spec.eval.limit = 1;  // new evaluation keys, so that there is work to do
  try {
    run_study(spec, resume, {});
    ADD_FAILURE() << "a changed model was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("has changed since its results were stored"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace lowbit::study
