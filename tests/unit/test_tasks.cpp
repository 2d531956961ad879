// Task requests as lm-evaluation-harness builds them: the preprocessing helpers against CPython's
// own string functions, and every task's request strings against the harness-mirroring
// reference (scripts/make_mc_fixtures.py, in tests/fixtures/mc).
#include "core/error.h"
#include "core/mapped_file.h"
#include "eval/tasks.h"
#include "test_util.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <map>

namespace lowbit {
namespace {

// Expected values printed by CPython 3.11 (the harness's preprocess and str.capitalize()).
TEST(Tasks, HellaswagPreprocessMatchesPython) {
  EXPECT_EQ(hellaswag_preprocess("  How to grow [title] Choose a spot. [step] Water it.  "),
            "How to grow. Choose a spot. Water it.");
  EXPECT_EQ(hellaswag_preprocess("a   b    c"), "a  b  c");
  EXPECT_EQ(hellaswag_preprocess("[header] x [title] y [substeps] z"), " x. y z");
  EXPECT_EQ(hellaswag_preprocess("no [closing bracket"), "no [closing bracket");
  EXPECT_EQ(hellaswag_preprocess(" Pick them green [step] and store them. "), "Pick them green and store them.");
}

TEST(Tasks, CapitalizeMatchesPython) {
  EXPECT_EQ(py_capitalize("hELLO World"), "Hello world");
  EXPECT_EQ(py_capitalize("\xc3\x89" "COLE \xc3\x89T\xc3\x89"), "\xc3\x89" "cole \xc3\xa9t\xc3\xa9");
  EXPECT_EQ(py_capitalize("\xc3\xa9lan VITAL"), "\xc3\x89lan vital");
  EXPECT_EQ(py_capitalize(""), "");
  EXPECT_EQ(py_capitalize("1st PLACE"), "1st place");
  EXPECT_EQ(py_capitalize("then"), "Then");
}

TEST(Tasks, MmluCategoriesCoverEverySubject) {
  std::map<std::string, int> counts;
  for (const auto& s : mmlu_subjects()) ++counts[mmlu_category(s)];
  EXPECT_EQ(mmlu_subjects().size(), 57u);
  EXPECT_EQ(counts["stem"], 19);
  EXPECT_EQ(counts["humanities"], 13);
  EXPECT_EQ(counts["social_sciences"], 12);
  EXPECT_EQ(counts["other"], 13);
}

// The request strings of the fixture's items (piqa, arc, hellaswag, winogrande, mmlu subjects),
// exactly as the reference built them.
TEST(Tasks, RequestStringsMatchTheHarness) {
  const std::string fx = test::fixtures_dir() + "/mc/testbed-44m.json.zst";
  LOWBIT_REQUIRE_PATH(fx);
  LOWBIT_REQUIRE_PATH(test::data_dir() + "/piqa/valid.jsonl");
  const nlohmann::json ref = nlohmann::json::parse(test::read_zst(fx));
  std::map<std::string, McTask> tasks;
  std::map<std::string, int64_t> checked;
  for (const auto& it : ref["items"]) {
    const std::string name = it["task"];
    if (!tasks.count(name))
      tasks[name] = load_task(name, name == "hellaswag" ? test::fixtures_dir() + "/mc" : test::data_dir());
    const McTask& t = tasks[name];
    const McItem* found = nullptr;
    for (const auto& x : t.items)
      if (x.id == it["id"].get<std::string>()) found = &x;
    ASSERT_NE(found, nullptr) << name << " " << it["id"];
    EXPECT_EQ(found->contexts, it["contexts"].get<std::vector<std::string>>()) << name << " " << it["id"];
    EXPECT_EQ(found->continuations, it["continuations"].get<std::vector<std::string>>()) << name << " " << it["id"];
    EXPECT_EQ(found->choices, it["choices"].get<std::vector<std::string>>()) << name << " " << it["id"];
    EXPECT_EQ(found->gold, it["gold"].get<int>()) << name << " " << it["id"];
    ++checked[name];
  }
  for (const char* t : {"piqa", "arc_easy", "arc_challenge", "hellaswag", "winogrande", "mmlu_abstract_algebra"})
    EXPECT_GT(checked[t], 0) << t;
}

// hellaswag_derived against scripts/make_hellaswag_derived_fixture.py, which reads the file as
// llama.cpp does and builds the harness's HellaSwag requests from it.
TEST(Tasks, HellaswagDerivedMatchesTheReference) {
  const std::string data = test::data_dir() + "/hellaswag/hellaswag_val_full.txt";
  LOWBIT_REQUIRE_PATH(data);
  const nlohmann::json ref =
      nlohmann::json::parse(read_file(test::fixtures_dir() + "/mc/hellaswag_derived.json"));
  const McTask t = load_task("hellaswag_derived", test::data_dir());
  EXPECT_EQ(t.name, "hellaswag_derived");
  EXPECT_TRUE(t.has_acc_norm);
  ASSERT_EQ(t.files.size(), 1u);
  EXPECT_EQ(t.files[0].sha256, ref["sha256"].get<std::string>());
  ASSERT_EQ(int64_t(t.items.size()), ref["items_total"].get<int64_t>());
  EXPECT_EQ(t.items.size(), 10042u);
  std::vector<int64_t> gold(4, 0);
  for (const McItem& it : t.items) {
    ASSERT_EQ(it.contexts.size(), 1u);
    ASSERT_EQ(it.choices.size(), 4u);
    ASSERT_EQ(it.num_requests(), 4u);
    ++gold[size_t(it.gold)];
  }
  EXPECT_EQ(gold, ref["gold_counts"].get<std::vector<int64_t>>());
  for (const auto& r : ref["items"]) {
    const McItem& it = t.items.at(std::stoul(r["id"].get<std::string>()));
    EXPECT_EQ(it.id, r["id"].get<std::string>());
    EXPECT_EQ(it.contexts, r["contexts"].get<std::vector<std::string>>()) << it.id;
    EXPECT_EQ(it.continuations, r["continuations"].get<std::vector<std::string>>()) << it.id;
    EXPECT_EQ(it.choices, r["choices"].get<std::vector<std::string>>()) << it.id;
    EXPECT_EQ(it.gold, r["gold"].get<int>()) << it.id;
    for (size_t k = 0; k < it.num_requests(); ++k)
      EXPECT_EQ(it.context(k) + it.continuation(k), it.contexts[0] + " " + it.choices[k]) << it.id;
  }
  // PROVENANCE.md's statement of the first task (rowanz ind 24).
  EXPECT_EQ(t.items[0].contexts[0], "Roof shingle removal: A man is sitting on a roof. he");
  EXPECT_EQ(t.items[0].gold, 3);
}

TEST(Tasks, HellaswagDerivedBadInputIsAClearError) {
  test::TempDir dir;
  std::filesystem::create_directories(dir.path / "hellaswag");
  auto err = [&] {
    try {
      load_task("hellaswag_derived", dir.path.string());
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(err().find("needs hellaswag/hellaswag_val_full.txt"), std::string::npos) << err();
  EXPECT_NE(err().find("klosax/hellaswag_text_data"), std::string::npos) << err();
  test::spit(dir / "hellaswag/hellaswag_val_full.txt", "ctx\n3\na\nb\nc\nd\n");
  EXPECT_NE(err().find("has SHA-256"), std::string::npos) << err();
}

TEST(Tasks, BadInputIsAClearError) {
  test::TempDir dir;
  auto err = [&](const std::string& task) {
    try {
      load_task(task, dir.path.string());
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(err("piqq").find("unknown task 'piqq'"), std::string::npos);
  EXPECT_NE(err("mmlu_astrology").find("'astrology' is not an MMLU subject"), std::string::npos);
  EXPECT_NE(err("piqa").find("needs piqa/valid.jsonl"), std::string::npos) << err("piqa");
  EXPECT_NE(err("hellaswag").find("rowanz/hellaswag"), std::string::npos) << err("hellaswag");
  std::filesystem::create_directories(dir.path / "piqa");
  test::spit(dir / "piqa/valid.jsonl", "{\"goal\": \"a\", \"sol1\": \"b\", \"sol2\": \"c\"}\n{\"goal\": 3}\n");
  test::spit(dir / "piqa/valid-labels.lst", "0\n1\n");
  EXPECT_NE(err("piqa").find("valid.jsonl:2: missing string field 'goal'"), std::string::npos) << err("piqa");
  test::spit(dir / "piqa/valid.jsonl", "{\"goal\": \"a\", \"sol1\": \"b\", \"sol2\": \"c\"}\nnot json\n");
  EXPECT_NE(err("piqa").find("valid.jsonl:2: not a JSON object"), std::string::npos) << err("piqa");
  test::spit(dir / "piqa/valid.jsonl", "{\"goal\": \"a\", \"sol1\": \"b\", \"sol2\": \"c\"}\n");
  EXPECT_NE(err("piqa").find("has 2 labels for 1 items"), std::string::npos) << err("piqa");
  std::filesystem::create_directories(dir.path / "mmlu/test");
  std::filesystem::create_directories(dir.path / "mmlu/dev");
  test::spit(dir / "mmlu/test/anatomy_test.csv", "q,a,b,c,d,A\nq2,a,b,c,d,E\n");
  test::spit(dir / "mmlu/dev/anatomy_dev.csv", "q,a,b,c,d,A\nq,a,b,c,d,A\nq,a,b,c,d,A\nq,a,b,c,d,A\nq,a,b,c,d,A\n");
  EXPECT_NE(err("mmlu_anatomy").find("anatomy_test.csv:2: answer 'E' is not A, B, C or D"), std::string::npos)
      << err("mmlu_anatomy");
}

}  // namespace
}  // namespace lowbit
