// Studies without models: spec parsing and its errors (file:line:column), grid expansion, the
// results store (one row per result, transactions, the writer's lock), number formatting and
// the tables rendered from a store.
#include "core/error.h"
#include "study/grid.h"
#include "study/report.h"
#include "study/spec.h"
#include "study/store.h"
#include "study_spec_errors.h"
#include "test_util.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <limits>

namespace lowbit::study {
namespace {

using spec_test::error_of;
using spec_test::kNoFiles;

// Markdown with runs of spaces and of dashes squeezed to one, so that tests do not depend on
// column widths.
std::string squeeze(const std::string& s) {
  std::string out;
  for (char c : s)
    if (!((c == ' ' || c == '-') && !out.empty() && out.back() == c)) out += c;
  return out;
}

// A valid spec; tests replace parts of it to break one thing at a time.
std::string base_spec(const std::string& methods = "[[method]]\nname = \"rtn\"\nw = [2, 3, 4]\ng = [128, -1]\n",
                      const std::string& eval = "[eval]\nppl = [\"wikitext2\", \"ptb\"]\ntasks = [\"piqa\", \"mmlu\"]\n") {
  return "[study]\nname = \"t\"\n\n[[model]]\nname = \"m\"\npath = \"models/m\"\n\n"
         "[calibration]\nset = \"ptb\"\nnsamples = 8\nseqlen = 64\n\n" +
         eval + "\n" + methods;
}

TEST(StudySpec, ParsesAndExpandsTheGrid) {
  const StudySpec s = parse_study_spec(
      base_spec("[[method]]\nname = \"fp16\"\n\n[[method]]\nname = \"rtn\"\nw = [4, 3]\ng = [128, -1]\na = 16\n\n"
                "[[method]]\nname = \"gptq\"\nw = 4\ng = 128\nact_order = true\n\n"
                "[[method]]\nname = \"smoothquant\"\nw = [8, 6, 4]\na = [8, 6, 4]\nzip = [\"w\", \"a\"]\nalpha = 0.5\n"),
      "/tmp/x/spec.toml", kNoFiles);
  EXPECT_EQ(s.name, "t");
  EXPECT_EQ(s.db, "/tmp/x/t.sqlite");
  ASSERT_EQ(s.models.size(), 1u);
  EXPECT_EQ(s.models[0].path, "/tmp/x/models/m");
  EXPECT_EQ(s.models[0].pos.line, 6);
  std::vector<std::string> specs;
  for (const auto& m : s.methods) specs.push_back(m.spec);
  const std::vector<std::string> want = {"fp16",
                                         "rtn:w=4,g=128",
                                         "rtn:w=4,g=-1",
                                         "rtn:w=3,g=128",
                                         "rtn:w=3,g=-1",
                                         "gptq:w=4,g=128,act_order=1",
                                         "smoothquant:w=8,a=8,alpha=0.5",
                                         "smoothquant:w=6,a=6,alpha=0.5",
                                         "smoothquant:w=4,a=4,alpha=0.5"};
  EXPECT_EQ(specs, want);
  EXPECT_EQ(s.calibration.key(), "ptb:n=8,seqlen=64,seed=0,bos=auto");
  EXPECT_EQ(s.eval.ppl, (std::vector<std::string>{"wikitext2", "ptb"}));
  EXPECT_EQ(s.eval.tasks, (std::vector<std::string>{"piqa", "mmlu"}));
  EXPECT_TRUE(s.needs_calibration());
}

// Vision-language benchmarks of LLaVA-Next models: their evaluations keyed as vlm-eval --store
// keys them, and bad settings named by line and column.
TEST(StudySpec, VisionLanguageTasks) {
  const StudySpec s = parse_study_spec(
      base_spec("[[method]]\nname = \"rtn\"\nw = 4\n",
                "[eval]\nvlm_tasks = [\"ai2d\", \"mme\"]\nvlm_data = \"vlm\"\nvlm_limit = 5\n"),
      "/tmp/spec.toml", spec_test::kNoFiles);
  EXPECT_EQ(s.eval.vlm_tasks, (std::vector<std::string>{"ai2d", "mme"}));
  EXPECT_EQ(s.eval.vlm_data, "/tmp/vlm");
  EXPECT_EQ(s.eval.vlm_limit, 5);
  EXPECT_EQ(s.eval.vlm_conversation, "llava");
  const StudyPlan plan = expand_plan(s);
  ASSERT_EQ(plan.evaluations.size(), 2u);
  EXPECT_EQ(plan.evaluations[0].kind, EvalKind::VisionLanguage);
  EXPECT_EQ(plan.evaluations[0].key, "ai2d:conversation=llava,max_new_tokens=16,limit=5");
  EXPECT_EQ(plan.evaluations[1].key, "mme:conversation=llava,max_new_tokens=16,limit=5");

  auto starts = [](const std::string& msg, const std::string& prefix) {
    return msg.substr(0, prefix.size()) == prefix ? ::testing::AssertionSuccess()
                                                  : ::testing::AssertionFailure() << msg;
  };
  const std::string m = "[[method]]\nname = \"rtn\"\nw = 4\n";
  EXPECT_TRUE(starts(error_of(base_spec(m, "[eval]\nvlm_tasks = [\"ai2d\", \"vqa\"]\nvlm_data = \"vlm\"\n")),
                     "/tmp/spec.toml:14:22: unknown vision-language task 'vqa' (known: ai2d, chartqa, docvqa, "
                     "mmbench_en, mme)"));
  EXPECT_TRUE(starts(error_of(base_spec(m, "[eval]\nvlm_tasks = [\"ai2d\", \"ai2d\"]\nvlm_data = \"vlm\"\n")),
                     "/tmp/spec.toml:14:22: vision-language task 'ai2d' is listed twice"));
  EXPECT_TRUE(starts(error_of(base_spec(m, "[eval]\nvlm_tasks = [\"ai2d\"]\n")),
                     "/tmp/spec.toml:14:13: vlm_tasks need vlm_data"));
  EXPECT_TRUE(starts(error_of(base_spec(m, "[eval]\nppl = [\"ptb\"]\nvlm_limit = 3\n")),
                     "/tmp/spec.toml:15:13: 'vlm_limit' is set but vlm_tasks names no vision-language task"));
  EXPECT_TRUE(starts(error_of(base_spec(m, "[eval]\nvlm_tasks = [\"mme\"]\nvlm_data = \"v\"\nvlm_conversation = \"hf\"\n")),
                     "/tmp/spec.toml:16:20: 'vlm_conversation' = \"hf\" is not one of llava, llava_hf"));
}

TEST(StudySpec, GridExpansionCrossesAndZips) {
  EXPECT_EQ(expand_method_grid("rtn", {{"w", {"2", "3"}}, {"g", {"128", "-1"}}}, {}),
            (std::vector<std::string>{"rtn:w=2,g=128", "rtn:w=2,g=-1", "rtn:w=3,g=128", "rtn:w=3,g=-1"}));
  EXPECT_EQ(expand_method_grid("sq", {{"w", {"8", "4"}}, {"a", {"8", "4"}}, {"alpha", {"0.5", "0.8"}}}, {"w", "a"}),
            (std::vector<std::string>{"sq:w=8,a=8,alpha=0.5", "sq:w=8,a=8,alpha=0.8", "sq:w=4,a=4,alpha=0.5",
                                      "sq:w=4,a=4,alpha=0.8"}));
  EXPECT_EQ(expand_method_grid("nf4", {}, {}), (std::vector<std::string>{"nf4"}));
  EXPECT_EQ(expand_method_grid("rtn", {{"w", {"4"}}, {"a", {""}}}, {}), (std::vector<std::string>{"rtn:w=4"}));
  EXPECT_THROW(expand_method_grid("sq", {{"w", {"8", "4"}}, {"a", {"8"}}}, {"w", "a"}), Error);
}

TEST(StudySpec, OptionsValidOnlyTogether) {
  // pbllm's g=64 alone is refused (block's default is 128), beside block=64 it is a cell.
  const StudyPlan plan = expand_plan(parse_study_spec(
      base_spec("[[method]]\nname = \"pbllm\"\ng = 64\nblock = 64\n"), "/tmp/spec.toml", kNoFiles));
  ASSERT_EQ(plan.cells.size(), 1u);
  EXPECT_EQ(plan.cells[0].method, "pbllm:g=64,block=64");
}

TEST(StudySpec, ExpandsEnvironmentVariables) {
  ::setenv("LOWBIT_TEST_SPEC_VAR", "/data/x", 1);
  ::unsetenv("LOWBIT_TEST_SPEC_UNSET");
  EXPECT_EQ(expand_env("${LOWBIT_TEST_SPEC_VAR}/m"), "/data/x/m");
  EXPECT_EQ(expand_env("${LOWBIT_TEST_SPEC_UNSET:-/default}/m"), "/default/m");
  EXPECT_EQ(expand_env("plain/$HOME"), "plain/$HOME");
  EXPECT_THROW(expand_env("${LOWBIT_TEST_SPEC_UNSET}/m"), Error);
}

// Each bad spec fails naming the file, the line and the column of the offending value.
TEST(StudySpec, ErrorsNameTheLine) {
  // Lines of base_spec: 13 [eval], 14 ppl, 15 tasks, 16 empty, 17 [[method]], 18 name, 19 w.
  auto starts = [](const std::string& msg, const std::string& prefix) {
    return msg.substr(0, prefix.size()) == prefix ? ::testing::AssertionSuccess()
                                                  : ::testing::AssertionFailure() << msg;
  };
  EXPECT_TRUE(starts(error_of(base_spec("[[method]]\nname = \"rtx\"\n")),
                     "/tmp/spec.toml:18:8: unknown method 'rtx' (known: fp16, rtn, gptq, awq, slim, quip, dbllm, pbllm, billm, smoothquant, nf4, icq)"));
  EXPECT_TRUE(starts(error_of(base_spec("[[method]]\nname = \"gptq\"\nw = [4, 9]\n")),
                     "/tmp/spec.toml:19:9: gptq: option w=9 is out of range [2, 8]"));
  EXPECT_TRUE(starts(error_of(base_spec("[[method]]\nname = \"rtn\"\nw = 4\nbits = 4\n")),
                     "/tmp/spec.toml:20:8: rtn: unknown option 'bits' (known:"));
  EXPECT_TRUE(starts(error_of(base_spec("[[method]]\nname = \"gptq\"\nw = 4\na = 8\n")),
                     "/tmp/spec.toml:20:5: gptq quantizes weights only: activation bits (a=8)"));
  EXPECT_TRUE(starts(error_of(base_spec("[[method]]\nname = \"smoothquant\"\nw = [8, 4]\na = [8]\nzip = [\"w\", \"a\"]\n")),
                     "/tmp/spec.toml:17:1: smoothquant: zipped options 'w' (2 values) and 'a' (1 values) differ in "
                     "length"));
  // A value valid only beside another option (pbllm's g=64 needs block=64, block's default being
  // 128) is refused only when no combination of the grid holds it validly; then at the value.
  EXPECT_TRUE(starts(error_of(base_spec("[[method]]\nname = \"pbllm\"\ng = 64\n")),
                     "/tmp/spec.toml:19:5: pbllm: option g=64 is not a multiple of block=128"));
  EXPECT_TRUE(starts(error_of(base_spec("[[method]]\nname = \"pbllm\"\ng = [64, 128]\nblock = [128, 32]\nzip = [\"g\", \"block\"]\n")),
                     "/tmp/spec.toml:19:6: pbllm: option g=64 is not a multiple of block=128"));
  EXPECT_TRUE(starts(error_of(base_spec("[[method]]\nname = \"pbllm\"\ng = [64, 128]\nblock = [64, 128]\n")),
                     "/tmp/spec.toml:17:1: pbllm: option g=64 is not a multiple of block=128"));
  EXPECT_TRUE(starts(error_of(base_spec("[[method]]\nname = \"rtn\"\nw = 4\n\n[[method]]\nname = \"rtn\"\nw = 4\n")),
                     "/tmp/spec.toml:21:1: method 'rtn:w=4' appears twice in the grid (first from /tmp/spec.toml:17:1)"));
  // A list of values varies any option of the method, not only the registry's grid axes (BiLLM
  // declares none, GPTQ's act_order is not one of its axes); a single value is taken as well.
  EXPECT_EQ(expand_plan(parse_study_spec(base_spec("[[method]]\nname = \"billm\"\nblock = [64, 128]\n"),
                                         "/tmp/spec.toml", spec_test::kNoFiles))
                .cells.size(),
            2u);
  EXPECT_EQ(expand_plan(parse_study_spec(base_spec("[[method]]\nname = \"gptq\"\nw = [4, 3]\nact_order = [0, 1]\n"),
                                         "/tmp/spec.toml", spec_test::kNoFiles))
                .cells.size(),
            4u);
  EXPECT_EQ(expand_plan(parse_study_spec(base_spec("[[method]]\nname = \"gptq\"\nw = [4, 3]\nact_order = 1\n"),
                                         "/tmp/spec.toml", spec_test::kNoFiles))
                .cells.size(),
            2u);
  EXPECT_TRUE(starts(error_of(base_spec("[[method]]\nname = \"fp16\"\nw = 4\n")),
                     "/tmp/spec.toml:19:1: method fp16 (the 16-bit baseline) takes no options ('w')"));
  EXPECT_TRUE(starts(error_of(base_spec("[[method]]\nname = \"rtn\"\n",
                                        "[eval]\nppl = [\"wikitext2\"]\ntasks = [\"piqa\",\n  \"hellaswog\"]\n")),
                     "/tmp/spec.toml:16:3: unknown task 'hellaswog' (known: piqa, arc_easy, arc_challenge, hellaswag, "
                     "hellaswag_derived, winogrande, mmlu, and mmlu_SUBJECT for one MMLU subject)"));
  EXPECT_TRUE(starts(error_of(base_spec("[[method]]\nname = \"rtn\"\n", "[eval]\nppl = [\"wikitext3\"]\n")),
                     "/tmp/spec.toml:14:8: unknown dataset 'wikitext3': not one of wikitext2, ptb, ptb-new, c4, "
                     "c4-new, nor a file path"));
  EXPECT_TRUE(starts(error_of(base_spec("[[method]]\nname = \"rtn\"\n", "[eval]\nppl = [\"ptb\"]\nseqlen = \"long\"\n")),
                     "/tmp/spec.toml:15:10: 'seqlen' must be an integer"));
  EXPECT_TRUE(starts(error_of(base_spec("[[method]]\nname = \"rtn\"\n", "[eval]\nppl = [\"ptb\"]\nwindows = 3\n")),
                     "/tmp/spec.toml:15:1: unknown key 'windows' in [eval] (known: batch, bos, kld, limit, max_length, "
                     "mmlu_limit, mmlu_shots, ppl, seqlen, task_limit, tasks, vlm_conversation, vlm_data, vlm_limit, "
                     "vlm_max_new_tokens, vlm_tasks)"));
  // TOML syntax errors come with toml++'s position.
  EXPECT_TRUE(starts(error_of("[study]\nname = \"x\"\nname = \"y\"\n"), "/tmp/spec.toml:3:"));
  EXPECT_TRUE(starts(error_of("[study]\nname = \"x\"\n"),
                     "/tmp/spec.toml:1:1: no [[model]] table (each names a model: [[model]] path = \"...\")"));
  ::unsetenv("LOWBIT_TEST_SPEC_UNSET");
  std::string with_var = base_spec();
  with_var.replace(with_var.find("models/m"), 8, "${LOWBIT_TEST_SPEC_UNSET}/m");
  EXPECT_TRUE(starts(error_of(with_var), "/tmp/spec.toml:6:8: '${LOWBIT_TEST_SPEC_UNSET}/m': environment variable "
                                         "LOWBIT_TEST_SPEC_UNSET is not set"));
}

TEST(StudySpec, MissingModelIsAnErrorBeforeAnyWork) {
  test::TempDir dir;
  const std::string msg = error_of(base_spec(), SpecOptions{true});
  EXPECT_EQ(msg, "/tmp/spec.toml:6:8: model 'm' not found: /tmp/models/m does not exist");
}

TEST(StudySpec, ExamplesParse) {
  const std::string examples = std::string(LOWBIT_SOURCE_DIR) + "/examples";
  ::setenv("LOWBIT_MODELS", "/nonexistent", 0);
  ::setenv("LOWBIT_MODELS_CACHE", "/nonexistent", 0);
  const StudySpec quick = load_study_spec(examples + "/quick.toml", kNoFiles);
  EXPECT_GE(quick.methods.size(), 9u);
  EXPECT_GE(load_study_spec(examples + "/quick-testbed.toml", kNoFiles).methods.size(), 8u);
  // The LoRA-FT track: fp16, NormalFloat, QLoRA, IR-QLoRA, the FDB initialization, DB-LLM.
  const StudyPlan lora = expand_plan(load_study_spec(examples + "/lora-ft-testbed.toml", kNoFiles));
  ASSERT_EQ(lora.cells.size(), 6u);
  EXPECT_EQ(lora.cells[2].train.kind, TrainKind::Finetune);
  EXPECT_EQ(lora.cells[3].method, "irqlora");
  EXPECT_EQ(lora.cells[5].train.kind, TrainKind::Distill);
  const StudySpec full = load_study_spec(examples + "/smollm2-full.toml", kNoFiles);
  EXPECT_EQ(full.device, "cuda");
  EXPECT_EQ(expand_plan(full).cells.size(), 10u);
  // The paper's Tables 7-8: LLaVA-Next-8B, the baseline and RTN, GPTQ, AWQ at w2-4 g128; three
  // perplexities and the five vision-language benchmarks.
  const StudyPlan t8 = expand_plan(load_study_spec(examples + "/llava-next-table8.toml", kNoFiles));
  EXPECT_EQ(t8.cells.size(), 1u + 3 * 3);
  ASSERT_EQ(t8.evaluations.size(), 3u + 5);
  EXPECT_EQ(t8.evaluations[3].kind, EvalKind::VisionLanguage);
  EXPECT_EQ(t8.evaluations[7].key, "mme:conversation=llava,max_new_tokens=16,limit=0");
  // The same on SmolLM2, with PB-LLM and BiLLM (groups of 64: pbllm's g=64 beside block=64).
  const StudySpec smol_ft = load_study_spec(examples + "/smollm2-lora-ft.toml", kNoFiles);
  const StudyPlan smol_ft_plan = expand_plan(smol_ft);
  ASSERT_EQ(smol_ft_plan.cells.size(), 8u);
  EXPECT_EQ(smol_ft_plan.cells[4].method, "pbllm:g=64,block=64,high_bit=8,low_frac=0.9");
  EXPECT_EQ(smol_ft_plan.cells[7].train.kind, TrainKind::Distill);
  EXPECT_EQ(smol_ft.device, "cuda");
  const StudySpec t1 = load_study_spec(examples + "/llama3-table1.toml", kNoFiles);
  const StudyPlan plan = expand_plan(t1);
  // The paper's Table 1 rows that lowbit implements: the baseline, RTN and GPTQ and AWQ at
  // w2-4 g128 and w2-4,8 per-channel, SliM-LLM and QuIP at w2-4, PB-LLM at 2 and 1.7 bits,
  // BiLLM, SmoothQuant W8A8/W6A6/W4A4, and NF4.
  EXPECT_EQ(plan.cells.size(), 1u + 7 + 7 + 7 + 3 + 3 + 2 + 1 + 3 + 1);
  EXPECT_EQ(plan.evaluations.size(), 3u + 5 + 1);
  EXPECT_EQ(t1.device, "cuda");
}

TEST(StudyGrid, CellsAndKeys) {
  const StudySpec s = parse_study_spec(
      base_spec("[[method]]\nname = \"fp16\"\n[[method]]\nname = \"rtn\"\nw = 3\ng = -1\n[[method]]\nname = \"gptq\"\n"
                "w = 4\ng = 128\n[[method]]\nname = \"nf4\"\n"),
      "/tmp/spec.toml", kNoFiles);
  const StudyPlan p = expand_plan(s);
  ASSERT_EQ(p.cells.size(), 4u);
  EXPECT_EQ(p.cells[0].key, "m|fp16|none");
  EXPECT_EQ(p.cells[0].w, 16);
  EXPECT_EQ(p.cells[1].key, "m|rtn:w=3,g=-1|none");
  EXPECT_EQ(p.cells[1].w, 3);
  EXPECT_EQ(p.cells[1].g, -1);
  EXPECT_FALSE(p.cells[1].calibrated);
  EXPECT_EQ(p.cells[2].key, "m|gptq:w=4,g=128|ptb:n=8,seqlen=64,seed=0,bos=auto");
  EXPECT_TRUE(p.cells[2].calibrated);
  EXPECT_EQ(p.cells[3].key, "m|nf4|none");
  EXPECT_EQ(p.cells[3].g, 64);
  ASSERT_EQ(p.evaluations.size(), 4u);
  EXPECT_EQ(p.evaluations[0].key, "wikitext2:seqlen=2048,limit=0,bos=auto");
  EXPECT_EQ(p.evaluations[2].key, "piqa:limit=0,bos=auto,max_length=0");
  EXPECT_EQ(p.evaluations[3].key, "mmlu:limit=0,bos=auto,max_length=0,shots=5");
  EXPECT_EQ(p.evaluations[3].kind, EvalKind::MultipleChoice);
}

// [eval] kld: KL-divergence from each cell's 16-bit model, on perplexity windows.
TEST(StudySpec, KlDivergenceSets) {
  const std::string eval = "[eval]\nppl = [\"ptb\"]\nkld = [\"wikitext2\"]\nseqlen = 128\n";
  const StudyPlan p = expand_plan(parse_study_spec(base_spec("[[method]]\nname = \"rtn\"\n", eval), "/tmp/spec.toml", kNoFiles));
  ASSERT_EQ(p.evaluations.size(), 2u);
  EXPECT_EQ(p.evaluations[0].kind, EvalKind::Perplexity);
  EXPECT_EQ(p.evaluations[1].kind, EvalKind::KlDivergence);
  EXPECT_EQ(p.evaluations[1].name, "wikitext2");
  EXPECT_EQ(p.evaluations[1].key, "kld:wikitext2:seqlen=128,limit=0,bos=auto");
  // A study may evaluate KL-divergence alone.
  EXPECT_NO_THROW(parse_study_spec(base_spec("[[method]]\nname = \"rtn\"\n", "[eval]\nkld = [\"ptb\"]\n"),
                                   "/tmp/spec.toml", kNoFiles));
  auto starts = [](const std::string& msg, const std::string& prefix) {
    return msg.substr(0, prefix.size()) == prefix ? ::testing::AssertionSuccess()
                                                  : ::testing::AssertionFailure() << msg;
  };
  EXPECT_TRUE(starts(error_of(base_spec("[[method]]\nname = \"rtn\"\n", "[eval]\nppl = [\"ptb\"]\nkld = [\"wikitext3\"]\n")),
                     "/tmp/spec.toml:15:8: unknown dataset 'wikitext3': not one of wikitext2, ptb, ptb-new, c4, "
                     "c4-new, nor a file path"));
  EXPECT_TRUE(starts(error_of(base_spec("[[method]]\nname = \"rtn\"\n", "[eval]\nkld = [\"ptb\", \"ptb\"]\n")),
                     "/tmp/spec.toml:14:15: dataset 'ptb' is listed twice"));
}

TEST(StudyFormat, NumbersLikeThePaper) {
  // The paper's own print: one decimal, E notation from 100 on.
  EXPECT_EQ(format_ppl(6.1234, 1, 100), "6.1");
  EXPECT_EQ(format_ppl(95.6, 1, 100), "95.6");
  EXPECT_EQ(format_ppl(99.96, 1, 100), "1.0E2");  // rounds to 100.0
  EXPECT_EQ(format_ppl(110.4, 1, 100), "1.1E2");
  EXPECT_EQ(format_ppl(1934, 1, 100), "1.9E3");
  EXPECT_EQ(format_ppl(9960, 1, 100), "1.0E4");
  EXPECT_EQ(format_ppl(2.7e6, 1, 100), "2.7E6");
  // lowbit's default: E notation from 1000 on.
  EXPECT_EQ(format_ppl(425.26), "425.3");
  EXPECT_EQ(format_ppl(999.96), "1.0E3");
  EXPECT_EQ(format_ppl(1934), "1.9E3");
  EXPECT_EQ(format_ppl(6.1234, 2), "6.12");
  EXPECT_EQ(format_ppl(1934, 2), "1.93E3");
  EXPECT_EQ(format_ppl(std::numeric_limits<double>::infinity()), "inf");
  EXPECT_EQ(format_ppl(std::nan("")), "nan");
  EXPECT_EQ(format_acc(0.7986), "79.9");
  EXPECT_EQ(format_acc(0.5), "50.0");
  EXPECT_EQ(format_acc(0.79864, 2), "79.86");
  EXPECT_EQ(format_bits(4), "4");
  EXPECT_EQ(format_bits(1.1), "1.1");
}

CellRecord cell(const std::string& method, const std::string& name, double w, int a, int64_t g, int64_t ord) {
  CellRecord c;
  c.model = "m";
  c.key = "m|" + method + "|none";
  c.model_path = "/models/m";
  c.model_sha256 = "abc";
  c.method = method;
  c.method_name = name;
  c.resolved = method;
  c.w = w;
  c.a = a;
  c.g = g;
  c.calibration = "none";
  c.calibration_json = "null";
  c.ord = ord;
  return c;
}

EvalRecord eval(const std::string& name, const std::string& kind) {
  EvalRecord e;
  e.eval = name;
  e.eval_key = name + ":k";
  e.kind = kind;
  e.seconds = 1;
  e.device = "cpu";
  e.threads = 2;
  e.run_id = 1;
  e.identity = "{}";
  return e;
}

// A store with the study's name and one run (results name their run).
void start(Store& s) {
  s.lock();
  s.set_study_name("t");
  RunRecord rr;
  rr.spec_path = "spec.toml";
  rr.device = "cpu";
  s.begin_run(rr);
}

TEST(StudyStore, OneRowPerResultInTransactions) {
  test::TempDir dir;
  const std::string db = dir / "s.sqlite";
  {
    Store s(db, Store::Mode::ReadWrite);
    s.lock();
    s.set_study_name("t");
    RunRecord rr;
    rr.spec_path = "spec.toml";
    rr.spec_text = "";
    rr.device = "cpu";
    EXPECT_EQ(s.begin_run(rr), 1);
    const CellRecord c = cell("rtn:w=4,g=128", "rtn", 4, 16, 128, 1);
    s.write_evaluation(c, eval("wikitext2", "perplexity"), {{"ppl", 12.5, 0.25, 4}});
    s.write_evaluation(c, eval("piqa", "multiple_choice"), {{"acc", 0.75, 0.01, 100}, {"acc_norm", 0.7, 0.01, 100}});
    // Writing a stored result again fails, and the whole evaluation with it.
    EXPECT_THROW(s.write_evaluation(c, eval("ptb", "perplexity"), {{"ppl", 30, std::nullopt, 4}, {"ppl", 31, 1.0, 4}}),
                 Error);
    EXPECT_THROW(s.write_evaluation(c, eval("wikitext2", "perplexity"), {{"ppl", 12.5, 0.25, 4}}), Error);
    EXPECT_EQ(s.result_count(), 3);
    // One writer at a time.
    Store other(db, Store::Mode::ReadWrite);
    EXPECT_THROW(other.lock(), Error);
  }
  Store s(db, Store::Mode::ReadOnly);
  EXPECT_EQ(s.study_name().value_or(""), "t");
  EXPECT_EQ(s.result_count(), 3);
  const auto stored = s.stored_evaluations();
  EXPECT_EQ(stored.size(), 2u);
  EXPECT_TRUE(stored.count({"m|rtn:w=4,g=128|none", "piqa:k"}));
  EXPECT_FALSE(stored.count({"m|rtn:w=4,g=128|none", "ptb:k"}));
  const auto results = s.results();
  ASSERT_EQ(results.size(), 3u);
  EXPECT_EQ(results[2].metric, "ppl");
  EXPECT_EQ(results[2].value, 12.5);
  EXPECT_EQ(results[2].stderr_.value_or(-1), 0.25);
  EXPECT_EQ(s.cells().size(), 1u);
  EXPECT_EQ(s.model_sha256("m").value_or(""), "abc");
  ASSERT_EQ(s.runs().size(), 1u);
  EXPECT_TRUE(s.runs()[0].finished.empty());
}

TEST(StudyStore, RejectsAFileThatIsNotAStore) {
  test::TempDir dir;
  test::spit(dir / "x.sqlite", "this is not a database, just text long enough to look like a header............");
  EXPECT_THROW(Store(dir / "x.sqlite", Store::Mode::ReadOnly), Error);
  EXPECT_THROW(Store::probe(dir / "x.sqlite"), Error);
  EXPECT_THROW(Store(dir / "missing.sqlite", Store::Mode::ReadOnly), Error);
  // A run killed before its schema was committed leaves an empty file: a new store.
  EXPECT_EQ(Store::probe(dir / "missing.sqlite"), Store::Kind::Empty);
  test::spit(dir / "empty.sqlite", "");
  EXPECT_EQ(Store::probe(dir / "empty.sqlite"), Store::Kind::Empty);
  { Store s(dir / "study.sqlite", Store::Mode::ReadWrite); }
  EXPECT_EQ(Store::probe(dir / "study.sqlite"), Store::Kind::Study);
}

// The tables: rows in the paper's order, values formatted like the paper, Avg. over the
// zero-shot tasks, "-" where a result is missing.
TEST(StudyReport, TablesFromAStore) {
  test::TempDir dir;
  const std::string db = dir / "s.sqlite";
  {
    Store s(db, Store::Mode::ReadWrite);
    start(s);
    // Stored in an order unlike the table's.
    const CellRecord base = cell("fp16", "fp16", 16, 16, -1, 0);
    const CellRecord r2 = cell("rtn:w=2,g=128", "rtn", 2, 16, 128, 3);
    const CellRecord r4 = cell("rtn:w=4,g=128", "rtn", 4, 16, 128, 1);
    const CellRecord r4c = cell("rtn:w=4,g=-1", "rtn", 4, 16, -1, 2);
    const CellRecord sq = cell("smoothquant:w=8,a=8", "smoothquant", 8, 8, -1, 4);
    const CellRecord ao = cell("gptq:w=4,g=128,act_order=1", "gptq", 4, 16, 128, 5);
    for (const auto& [c, ppl, piqa, wino] : {std::tuple{r2, 1934.0, 0.5, 0.52}, std::tuple{base, 6.14, 0.799, 0.728},
                                             std::tuple{r4c, 8.7, 0.75, 0.69}, std::tuple{r4, 8.5, 0.766, 0.71},
                                             std::tuple{sq, 6.3, 0.795, 0.737}}) {
      s.write_evaluation(c, eval("wikitext2", "perplexity"), {{"ppl", ppl, 0.1, 4}});
      s.write_evaluation(c, eval("piqa", "multiple_choice"), {{"acc", piqa, 0.01, 100}});
      s.write_evaluation(c, eval("winogrande", "multiple_choice"), {{"acc", wino, 0.01, 100}});
    }
    s.write_evaluation(ao, eval("wikitext2", "perplexity"), {{"ppl", 6.5, 0.1, 4}});
  }
  const ReportData r = load_report(db);
  const std::string md = squeeze(render_markdown(r));
  const std::string want_ppl =
      "| Method | #W | #A | #G | WikiText2 |\n"
      "| - | -: | -: | -: | -: |\n"
      "| m | 16 | 16 | - | 6.1 |\n"
      "| RTN | 4 | 16 | 128 | 8.5 |\n"
      "| | 2 | 16 | 128 | 1.9E3 |\n"
      "| | 4 | 16 | - | 8.7 |\n"
      "| GPTQ (act_order=1) | 4 | 16 | 128 | 6.5 |\n"
      "| SmoothQuant | 8 | 8 | - | 6.3 |\n";
  EXPECT_NE(md.find(want_ppl), std::string::npos) << md;
  const std::string want_zs =
      "| Method | #W | #A | #G | PIQA | Wino | Avg. |\n"
      "| - | -: | -: | -: | -: | -: | -: |\n"
      "| m | 16 | 16 | - | 79.9 | 72.8 | 76.4 |\n"
      "| RTN | 4 | 16 | 128 | 76.6 | 71.0 | 73.8 |\n"
      "| | 2 | 16 | 128 | 50.0 | 52.0 | 51.0 |\n"
      "| | 4 | 16 | - | 75.0 | 69.0 | 72.0 |\n"
      "| GPTQ (act_order=1) | 4 | 16 | 128 | - | - | - |\n"
      "| SmoothQuant | 8 | 8 | - | 79.5 | 73.7 | 76.6 |\n";
  EXPECT_NE(md.find(want_zs), std::string::npos) << md;

  const std::string csv = render_csv(r);
  EXPECT_NE(csv.find("model,method,spec,calibration,W,A,G,WikiText2 PPL,PIQA acc%,Wino acc%,Avg. acc%\n"),
            std::string::npos)
      << csv;
  EXPECT_NE(csv.find("m,RTN,\"rtn:w=2,g=128\",none,2,16,128,1934,50,52,51\n"), std::string::npos) << csv;
  const std::string tex = render_latex(r);
  EXPECT_NE(tex.find("RTN & 4 & 16 & 128 & 8.5 \\\\"), std::string::npos) << tex;
  EXPECT_NE(tex.find("\\#W"), std::string::npos);
  const std::string rows = render_rows(r);
  EXPECT_NE(rows.find("m|rtn:w=2,g=128|none\twikitext2:k\tppl\t1934\t0.10000000000000001\t4\n"), std::string::npos)
      << rows;
  const std::string html = render_html(r);
  EXPECT_NE(html.find("<th>WikiText2</th>"), std::string::npos);
  EXPECT_NE(html.find("1.9E3"), std::string::npos);
  EXPECT_EQ(html.find("<script"), std::string::npos);  // self-contained, static
}

// Vision-language results (lowbit vlm-eval --store) laid out as the paper's Table 8: AI2D, ChartQA
// and DocVQA (fractions) in percent, MMBench (stored 0-100) and MME's scores as stored.
TEST(StudyReport, VisionLanguageTable) {
  test::TempDir dir;
  const std::string db = dir / "s.sqlite";
  {
    Store s(db, Store::Mode::ReadWrite);
    start(s);
    const CellRecord base = cell("fp16", "fp16", 16, 16, -1, 0);
    const CellRecord g4 = cell("gptq:w=4,g=128", "gptq", 4, 16, 128, 1);
    for (const auto& [c, ai2d, mme_c, mme_p] :
         {std::tuple{g4, 0.707, 331.6, 1563.4}, std::tuple{base, 0.717, 376.8, 1588.3}}) {
      s.write_evaluation(c, eval("ai2d", "vision_language"), {{"exact_match", ai2d, std::nullopt, 3088}});
      s.write_evaluation(c, eval("mme", "vision_language"),
                         {{"mme_perception_score", mme_p, std::nullopt, 2374},
                          {"mme_cognition_score", mme_c, std::nullopt, 2374}});
    }
    s.write_evaluation(base, eval("mmbench_en", "vision_language"), {{"gpt_eval_score", 72.2, std::nullopt, 4329}});
    s.write_evaluation(base, eval("docvqa", "vision_language"), {{"anls", 0.782, std::nullopt, 5349}});
  }
  const ReportData r = load_report(db);
  const std::string md = squeeze(render_markdown(r));
  const std::string want =
      "| Method | #W | #A | #G | AI2D | DocVQA | MMBench | MME Cognition | MME Perception |\n"
      "| - | -: | -: | -: | -: | -: | -: | -: | -: |\n"
      "| m | 16 | 16 | - | 71.7 | 78.2 | 72.2 | 376.8 | 1588.3 |\n"
      "| GPTQ | 4 | 16 | 128 | 70.7 | - | - | 331.6 | 1563.4 |\n";
  EXPECT_NE(md.find(want), std::string::npos) << md;
  EXPECT_NE(md.find("Vision-language benchmarks"), std::string::npos) << md;
  const std::string csv = render_csv(r);
  EXPECT_NE(csv.find("AI2D acc%,DocVQA acc%,MMBench,MME Cognition,MME Perception\n"), std::string::npos) << csv;
}

TEST(StudyReport, HtmlWithoutGnuplotStillHasTables) {
  test::TempDir dir;
  const std::string db = dir / "s.sqlite";
  {
    Store s(db, Store::Mode::ReadWrite);
    start(s);
    s.write_evaluation(cell("rtn:w=4,g=128", "rtn", 4, 16, 128, 1), eval("wikitext2", "perplexity"),
                       {{"ppl", 8.5, 0.1, 4}});
  }
  ::setenv("LOWBIT_GNUPLOT", "/nonexistent/gnuplot", 1);
  const ReportData r = load_report(db);
  const PlotSet p = render_plots(r);
  const std::string html = render_html(r);
  ::unsetenv("LOWBIT_GNUPLOT");
  EXPECT_TRUE(p.plots.empty());
  EXPECT_NE(p.error.find("gnuplot was not found"), std::string::npos) << p.error;
  EXPECT_NE(html.find("No plots: gnuplot was not found"), std::string::npos);
  EXPECT_NE(html.find("<td title=\"rtn:w=4,g=128\">8.5</td>"), std::string::npos) << html;
}

}  // namespace
}  // namespace lowbit::study
