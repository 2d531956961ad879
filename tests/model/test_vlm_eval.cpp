// The benchmark readers on small generated jsonl files (tiny PNG and JPEG images), and the
// evaluation driver end to end on the random-weight LLaVA-Next of tests/fixtures/llava_next with
// the byte-level tokenizer of tests/fixtures/vlm/tokenizer.json (scripts/make_vlm_eval_fixture.py):
// every benchmark runs, each answer is the model's greedy generation on the task's prompt, and
// the records and metrics are what the task's scoring functions (checked against lmms-eval in
// test_vlm_scoring) give for those answers.
#include "core/error.h"
#include "eval/vlm/py_text.h"
#include "eval/vlm/vlm_eval.h"
#include "eval/vlm/vlm_task.h"
#include "formats/tokenizer.h"
#include "model/llava_next.h"
#include "test_util.h"
#include "vision/image.h"
#include "vision/image_processor.h"

#include <gtest/gtest.h>

#include <filesystem>

namespace lowbit::vlm {
namespace {

using test::fixtures_dir;
namespace fs = std::filesystem;

// A task's items written as TASK.jsonl in dir, each with one of the fixture images copied beside it.
std::string write_items(const test::TempDir& dir, const std::string& task, const std::vector<Json>& docs) {
  const char* images[] = {"la_24x20.png", "gray_20x13.jpg", "rgba_64x48.png"};
  fs::create_directories(dir.path / "img");
  std::string text;
  for (size_t i = 0; i < docs.size(); ++i) {
    const std::string name = images[i % 3];
    if (!fs::exists(dir.path / "img" / name)) fs::copy_file(fixtures_dir() + "/vision/" + name, dir.path / "img" / name);
    Json d = docs[i];
    d["image"] = "img/" + name;
    text += d.dump() + "\n";
  }
  const std::string path = dir / (task + ".jsonl");
  test::spit(path, text);
  return path;
}

std::vector<Json> sample_docs(const std::string& task) {
  if (task == "ai2d")
    return {{{"question", "Which label shows the sun?"}, {"options", {"A", "B", "C", "D"}}, {"answer", "1"}},
            {{"question", "What eats the grasshopper?"}, {"options", {"frog", "grass", "sun"}}, {"answer", 0}}};
  if (task == "chartqa")
    return {{{"question", "What is the highest value?"}, {"answer", "42"}, {"type", "human_test"}},
            {{"question", "Which year had the lowest sales?"}, {"answer", "2019"}, {"type", "augmented_test"}}};
  if (task == "docvqa")
    return {{{"questionId", 337}, {"question", "What is the date?"}, {"answers", {"March 5, 1968", "5 March 1968"}}},
            {{"questionId", "338"}, {"question", "Who signed the letter?"}, {"answers", {"Dr. Smith"}}}};
  if (task == "mmbench_en")
    return {{{"index", 0}, {"question", "What is the main object?"}, {"hint", nullptr}, {"A", "teddy bear"},
             {"B", "rabbit"}, {"C", "cat"}, {"D", "dog"}, {"answer", "A"}, {"category", "image_topic"},
             {"L2-category", "coarse_perception"}, {"source", "MMBench"}, {"split", "dev"}},
            {{"index", 1000000}, {"question", "What is the main object?"}, {"hint", nullptr}, {"A", "rabbit"},
             {"B", "cat"}, {"C", "dog"}, {"D", "teddy bear"}, {"answer", "D"}, {"category", "image_topic"},
             {"L2-category", "coarse_perception"}, {"source", "MMBench"}, {"split", "dev"}},
            {{"index", 1}, {"question", "Which color is the car?"}, {"hint", "The car is parked."}, {"A", "red"},
             {"B", "blue"}, {"C", nullptr}, {"D", nullptr}, {"answer", "B"}, {"category", "attribute_recognition"},
             {"L2-category", "finegrained_perception"}, {"source", "MMBench"}, {"split", "dev"}}};
  // mme: a perception pair and a cognition pair.
  return {{{"question_id", "count/0.png"}, {"question", "Are there two cats? Please answer yes or no."},
           {"answer", "Yes"}, {"category", "count"}},
          {{"question_id", "count/0.png"}, {"question", "Are there three cats? Please answer yes or no."},
           {"answer", "No"}, {"category", "count"}},
          {{"question_id", "code_reasoning/1.png"}, {"question", "Does it print 3? Please answer yes or no."},
           {"answer", "No"}, {"category", "code_reasoning"}},
          {{"question_id", "code_reasoning/1.png"}, {"question", "Does it print 5? Please answer yes or no."},
           {"answer", "Yes"}, {"category", "code_reasoning"}}};
}

template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

#define EXPECT_HAS(text, part) EXPECT_NE(std::string(text).find(part), std::string::npos) << (text)

TEST(VlmData, ReadsEveryTask) {
  for (const std::string& name : vlm_task_names()) {
    test::TempDir dir;
    const auto docs = sample_docs(name);
    const std::string file = write_items(dir, name, docs);
    const auto items = load_vlm_items(vlm_task(name), file);
    ASSERT_EQ(items.size(), docs.size()) << name;
    EXPECT_EQ(items[0].where, file + ":1");
    EXPECT_EQ(items[1].image, (dir.path / "img" / "gray_20x13.jpg").string());
    EXPECT_EQ(items[1].doc["question"], docs[1]["question"]);
    // A folder holding TASK.jsonl, and --limit.
    EXPECT_EQ(load_vlm_items(vlm_task(name), dir.path.string(), 1).size(), 1u) << name;
  }
}

TEST(VlmData, BadFilesAreNamed) {
  test::TempDir dir;
  const VlmTask& t = vlm_task("chartqa");
  const std::string good = Json{{"question", "Q?"}, {"answer", "1"}, {"type", "human_test"}, {"image", "a.png"}}.dump();
  fs::copy_file(fixtures_dir() + "/vision/la_24x20.png", dir / "a.png");
  const std::string f = dir / "chartqa.jsonl";
  test::spit(f, good + "\n{\"question\": \"Q?\", \"answer\": \"1\", \"image\": \"a.png\"}\n");
  EXPECT_HAS(error_of([&] { load_vlm_items(t, f); }), f + ":2: chartqa item has no field 'type'");
  test::spit(f, good + "\n" + good + "\n{\"question\": 3, \"answer\": \"1\", \"type\": \"x\", \"image\": \"a.png\"}\n");
  EXPECT_HAS(error_of([&] { load_vlm_items(t, f); }), f + ":3: field 'question' must be a string, got number 3");
  test::spit(f, "{\"question\": \"Q?\",\n");
  EXPECT_HAS(error_of([&] { load_vlm_items(t, f); }), f + ":1: not valid JSON");
  test::spit(f, Json{{"question", "Q?"}, {"answer", "1"}, {"type", "human_test"}, {"image", "gone.png"}}.dump());
  EXPECT_HAS(error_of([&] { load_vlm_items(t, f); }), f + ":1: image '" + (dir / "gone.png") + "' not found");
  test::spit(f, Json{{"question", "Q?"}, {"answer", "1"}, {"type", "human_test"}}.dump());
  EXPECT_HAS(error_of([&] { load_vlm_items(t, f); }), f + ":1: chartqa item has no field 'image'");
  test::spit(f, "\n");
  EXPECT_HAS(error_of([&] { load_vlm_items(t, f); }), f + ": no items");
  EXPECT_HAS(error_of([&] { load_vlm_items(vlm_task("docvqa"), dir.path.string()); }),
             "docvqa data '" + (dir / "docvqa.jsonl") + "' not found");
  const std::string a = dir / "ai2d.jsonl";
  test::spit(a, Json{{"question", "Q?"}, {"options", {"x", "y"}}, {"answer", "one"}, {"image", "a.png"}}.dump());
  EXPECT_HAS(error_of([&] { load_vlm_items(vlm_task("ai2d"), a); }),
             a + ":1: field 'answer' must be an integer or a string of digits, got string \"one\"");
}

// The fixture model with the test tokenizer, in a temporary directory.
struct EvalModel {
  test::TempDir dir;
  std::unique_ptr<LlavaNextModel> model;
  std::unique_ptr<Tokenizer> tok;
  EvalModel() {
    const std::string src = fixtures_dir() + "/llava_next/";
    for (const char* f : {"config.json", "preprocessor_config.json"}) fs::copy_file(src + f, dir / f);
    fs::copy_file(fixtures_dir() + "/vlm/tokenizer.json", dir / "tokenizer.json");
    test::spit(dir / "model.safetensors", test::read_zst(src + "model.safetensors.zst"));
    model = LlavaNextModel::open(dir.path.string());
    tok = load_tokenizer(model->tokenizer_path());
  }
};

EvalModel& eval_model() {
  static EvalModel m;
  return m;
}

TEST(VlmEval, EveryTaskEndToEnd) {
  EvalModel& m = eval_model();
  const int64_t n_new = 6;
  for (const std::string& name : vlm_task_names()) {
    SCOPED_TRACE(name);
    const VlmTask& task = vlm_task(name);
    test::TempDir dir;
    const auto items = load_vlm_items(task, write_items(dir, name, sample_docs(name)));
    size_t seen = 0;
    const VlmEvalResult r = evaluate_vlm(*m.model, *m.tok, task, items, VlmEvalOptions{n_new},
                                         [&](size_t i, size_t n, const VlmPrediction&) {
                                           EXPECT_EQ(i, seen++);
                                           EXPECT_EQ(n, items.size());
                                         });
    ASSERT_EQ(r.items.size(), items.size());
    EXPECT_EQ(r.max_new_tokens, n_new);
    std::vector<Json> records;
    for (size_t i = 0; i < items.size(); ++i) {
      const VlmPrediction& p = r.items[i];
      // The answer is the model's own greedy continuation of the task's prompt.
      const vision::ProcessedImage im =
          vision::preprocess_llava_next(vision::read_image(items[i].image), m.model->processor());
      const auto ids = vlm_prompt_ids(*m.model, *m.tok, task, items[i].doc, m.model->image_token_count(im.height, im.width));
      EXPECT_EQ(p.prompt_tokens, int64_t(ids.size()));
      const std::string prompt = m.tok->decode(ids);
      EXPECT_HAS(prompt, task.doc_to_text(items[i].doc));
      EXPECT_EQ(prompt.rfind("<|start_header_id|>assistant<|end_header_id|>\n\n"), prompt.size() - 47);
      const std::vector<vision::ProcessedImage> images = {im};
      const std::vector<int64_t> stop = {m.model->config().text.eos_token_ids[0], 260};
      const auto out = m.model->generate(ids, images, n_new, stop);
      EXPECT_EQ(p.new_tokens, int64_t(out.size()));
      EXPECT_LE(p.new_tokens, n_new);
      EXPECT_EQ(p.prediction, decode_answer(*m.tok, out));
      EXPECT_EQ(p.record, task.process(items[i].doc, p.prediction));
      records.push_back(p.record);
    }
    EXPECT_EQ(r.metrics, task.aggregate(records));
    // The metric structure lmms-eval reports for the task.
    const std::map<std::string, std::vector<std::string>> keys = {
        {"ai2d", {"exact_match"}},
        {"chartqa", {"relaxed_overall", "relaxed_human_split", "relaxed_augmented_split"}},
        {"docvqa", {"anls"}},
        {"mmbench_en", {"gpt_eval_score"}},
        {"mme", {"mme_perception_score", "mme_cognition_score"}}};
    for (const std::string& k : keys.at(name)) {
      ASSERT_TRUE(r.metrics.contains(k)) << k;
      ASSERT_TRUE(r.metrics[k].is_number()) << k << " " << r.metrics.dump();
    }
  }
}

TEST(VlmEval, DecodeSkipsSpecialTokensAndReplacesBrokenUtf8) {
  EvalModel& m = eval_model();
  // "Hi", <|eot_id|>, a lone 0xC3 lead byte, then "!".
  const std::vector<int32_t> ids = {72, 105, 260, 0xC3, 33};
  EXPECT_EQ(decode_answer(*m.tok, ids), "Hi\xEF\xBF\xBD!");
  EXPECT_EQ(utf8_lossy("\xE2\x82"), "\xEF\xBF\xBD");          // one maximal subpart, one replacement
  EXPECT_EQ(utf8_lossy("\xF0\x80\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");  // F0 80: not a prefix
}

TEST(VlmEval, BadItemsAreRefusedBeforeTheModelRuns) {
  EvalModel& m = eval_model();
  test::TempDir dir;
  auto docs = sample_docs("ai2d");
  std::string file = write_items(dir, "ai2d", docs);
  // A corrupt image in the second item.
  const std::string cut = test::slurp(fixtures_dir() + "/vision/gray_20x13.jpg").substr(0, 200);
  test::spit(dir / "img/gray_20x13.jpg", cut);
  size_t calls = 0;
  auto items = load_vlm_items(vlm_task("ai2d"), file);
  std::string e = error_of([&] {
    evaluate_vlm(*m.model, *m.tok, vlm_task("ai2d"), items, VlmEvalOptions{2}, [&](size_t, size_t, const VlmPrediction&) { ++calls; });
  });
  EXPECT_HAS(e, file + ":2: image '");
  EXPECT_HAS(e, "corrupt JPEG");
  EXPECT_EQ(calls, 0u);
  // An answer index past the options.
  docs[1]["answer"] = "7";
  fs::copy_file(fixtures_dir() + "/vision/gray_20x13.jpg", dir / "img/gray_20x13.jpg", fs::copy_options::overwrite_existing);
  file = write_items(dir, "ai2d", docs);
  items = load_vlm_items(vlm_task("ai2d"), file);
  e = error_of([&] { evaluate_vlm(*m.model, *m.tok, vlm_task("ai2d"), items, VlmEvalOptions{2}); });
  EXPECT_HAS(e, file + ":2: ai2d item: answer 7 is not an index of its 3 options");
  // An unsupported image mode.
  test::TempDir d2;
  auto mdocs = sample_docs("mme");
  const std::string mf = write_items(d2, "mme", mdocs);
  fs::copy_file(fixtures_dir() + "/vision/cmyk_8x8.jpg", d2 / "img/rgba_64x48.png", fs::copy_options::overwrite_existing);
  items = load_vlm_items(vlm_task("mme"), mf);
  e = error_of([&] { evaluate_vlm(*m.model, *m.tok, vlm_task("mme"), items, VlmEvalOptions{2}); });
  EXPECT_HAS(e, mf + ":3: image '");
  EXPECT_HAS(e, "unsupported image mode: CMYK");
  // An MME answer that is not Yes/No.
  mdocs[0]["answer"] = "Maybe";
  const std::string mf2 = write_items(d2, "mme", mdocs);
  fs::copy_file(fixtures_dir() + "/vision/rgba_64x48.png", d2 / "img/rgba_64x48.png", fs::copy_options::overwrite_existing);
  items = load_vlm_items(vlm_task("mme"), mf2);
  e = error_of([&] { evaluate_vlm(*m.model, *m.tok, vlm_task("mme"), items, VlmEvalOptions{2}); });
  EXPECT_HAS(e, mf2 + ":1: mme item 'count/0.png': answer 'Maybe' is not Yes or No");
}

}  // namespace
}  // namespace lowbit::vlm
