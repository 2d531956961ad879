// A LLaVA-Next model with its language model quantized (quant/llava_next_quantized.h), on the tiny
// random-weight LLaVA-Next of tests/fixtures/llava_next with the byte-level test tokenizer:
//   - the written checkpoint's language model is, tensor for tensor and byte for byte, what
//     quantizing the language model alone gives: the LLM extracted here as a plain LlamaForCausalLM
//     checkpoint by renaming the source file's tensors (not through lowbit's LLaVA reader) and
//     quantized with the same method and calibration windows;
//   - the vision tower, projector and image_newline are the source's bytes;
//   - vlm-generate's model read from it equals the source's vision parts around the quantized
//     language model held in memory (logits bit for bit, the same greedy tokens);
//   - bad input is refused before any work and leaves nothing behind;
//   - a study with a vision-language task and two methods stores what vlm-eval gives on the
//     checkpoints `lowbit quantize` writes for its cells, and reports Table 8.
#include "core/error.h"
#include "eval/vlm/vlm_eval.h"
#include "eval/vlm/vlm_task.h"
#include "formats/llava_next_checkpoint.h"
#include "formats/safetensors.h"
#include "formats/tokenizer.h"
#include "model/llava_next.h"
#include "quant/llava_next_quantized.h"
#include "quant/lowbit_checkpoint.h"
#include "quant/quantize.h"
#include "quant/quantized_in_memory.h"
#include "random_calibration.h"
#include "study/report.h"
#include "study/runner.h"
#include "study/spec.h"
#include "study/store.h"
#include "test_util.h"
#include "vision/image.h"
#include "vision/image_processor.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <fmt/format.h>

#include <cstring>
#include <filesystem>
#include <set>
#include <sstream>

namespace lowbit {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using test::fixtures_dir;

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

// The fixture model with the test tokenizer in `dir`.
void write_llava(const std::string& dir) {
  fs::create_directories(dir);
  const std::string src = fixtures_dir() + "/llava_next/";
  for (const char* f : {"config.json", "preprocessor_config.json"}) fs::copy_file(src + f, dir + "/" + f);
  fs::copy_file(fixtures_dir() + "/vlm/tokenizer.json", dir + "/tokenizer.json");
  test::spit(dir + "/model.safetensors", test::read_zst(src + "model.safetensors.zst"));
}

// The language model of the LLaVA-Next checkpoint in `llava` as a plain LlamaForCausalLM
// directory: the llava-hf layout's names mapped by hand ("language_model.model.X" -> "model.X",
// "language_model.lm_head.weight" -> "lm_head.weight"), the config its text_config.
void extract_language_model(const std::string& llava, const std::string& out) {
  fs::create_directories(out);
  auto file = SafetensorsFile::open(llava + "/model.safetensors");
  SafetensorsWriter w;
  for (const auto& e : file->entries()) {
    if (e.name.rfind("language_model.model.", 0) == 0) w.add("model." + e.name.substr(21), file->tensor(e.name));
    else if (e.name == "language_model.lm_head.weight") w.add("lm_head.weight", file->tensor(e.name));
  }
  w.write(out + "/model.safetensors");
  json cfg = json::parse(test::slurp(llava + "/config.json"));
  json text = cfg["text_config"];
  text["architectures"] = {"LlamaForCausalLM"};
  test::spit(out + "/config.json", text.dump());
  fs::copy_file(llava + "/tokenizer.json", out + "/tokenizer.json");
}

std::string bytes_of(const Tensor& t) {
  return std::string(static_cast<const char*>(t.data()), size_t(t.nbytes()));
}

QuantizedModel quantize(const Checkpoint& ck, const std::string& spec, const Calibration& calib) {
  LlamaModel work(ck);
  auto method = make_method(spec);
  return quantize_model(work, *method, method->needs_calibration() ? &calib : nullptr, {});
}

const char* kSpecs[] = {"rtn:w=4,g=32", "gptq:w=4,g=32"};

TEST(QuantizedLlava, LanguageModelIsTheLanguageModelQuantizedAlone) {
  test::TempDir dir;
  const std::string llava = dir / "llava", plain = dir / "plain";
  write_llava(llava);
  extract_language_model(llava, plain);
  const Calibration calib = test::random_calibration(320, 4, 32);
  for (const std::string spec : kSpecs) {
    SCOPED_TRACE(spec);
    const std::string out = dir / ("q-" + spec.substr(0, 4)), out_plain = dir / ("p-" + spec.substr(0, 4));
    {
      LlamaModel src(open_model(llava));
      auto method = make_method(spec);
      const QuantizedModel qm = quantize_model(src, *method, method->needs_calibration() ? &calib : nullptr, {});
      write_quantized_llava_next(out, llava, src, qm, json::object(), false);
    }
    {
      LlamaModel src(open_model(plain));
      ASSERT_EQ(src.checkpoint().format, "hf-safetensors");
      auto method = make_method(spec);
      const QuantizedModel qm = quantize_model(src, *method, method->needs_calibration() ? &calib : nullptr, {});
      write_quantized_checkpoint(out_plain, src, qm, json::object(), false);
    }
    // Every tensor of the plain quantized checkpoint (codes, scales, zeros, norms, embeddings,
    // LM head) is in the LLaVA one under the same name with the same bytes.
    auto q = SafetensorsFile::open(out + "/model.safetensors");
    auto p = SafetensorsFile::open(out_plain + "/model.safetensors");
    for (const auto& e : p->entries()) {
      const SafetensorsEntry* f = q->find(e.name);
      ASSERT_NE(f, nullptr) << e.name;
      EXPECT_EQ(f->dtype, e.dtype) << e.name;
      EXPECT_EQ(f->shape, e.shape) << e.name;
      EXPECT_EQ(bytes_of(q->tensor(e.name)), bytes_of(p->tensor(e.name))) << e.name;
    }
    // The dequantized weights as every evaluation reads them.
    const Checkpoint a = open_model(out), b = open_model(out_plain);
    EXPECT_EQ(a.format, "lowbit-quantized");
    EXPECT_TRUE(is_quantized_llava_next(a));
    EXPECT_FALSE(is_quantized_llava_next(b));
    EXPECT_EQ(a.config.hidden_size, 64);
    for_each_expected_llama_tensor(a.config, [&](const std::string& name, const std::vector<int64_t>&) {
      EXPECT_EQ(bytes_of(a.weights->get(name)), bytes_of(b.weights->get(name))) << name;
    });
    EXPECT_EQ(a.quantization["method"], b.quantization["method"]);
    EXPECT_EQ(a.quantization["linears"], b.quantization["linears"]);
    EXPECT_EQ(a.quantization["source"]["format"], "llava-next-language-model");

    // Everything else of the source, as stored; nothing more.
    auto s = SafetensorsFile::open(llava + "/model.safetensors");
    std::vector<std::string> kept;
    for (const auto& e : s->entries()) {
      if (e.name.rfind("language_model.", 0) == 0) continue;
      kept.push_back(e.name);
      const SafetensorsEntry* f = q->find(e.name);
      ASSERT_NE(f, nullptr) << e.name;
      EXPECT_EQ(f->dtype, e.dtype) << e.name;
      EXPECT_EQ(f->shape, e.shape) << e.name;
      EXPECT_EQ(bytes_of(q->tensor(e.name)), bytes_of(s->tensor(e.name))) << e.name;
    }
    std::sort(kept.begin(), kept.end());
    EXPECT_EQ(q->entries().size(), p->entries().size() + kept.size());
    EXPECT_EQ(a.quantization["multimodal"]["kept"].get<std::vector<std::string>>(), kept);
    EXPECT_EQ(a.quantization["multimodal"]["calibration_input"], "text");
    EXPECT_GT(kept.size(), 50u);  // the 3-layer tower, the projector, image_newline
    for (const char* f : {"config.json", "preprocessor_config.json", "tokenizer.json"})
      EXPECT_EQ(test::slurp(out + "/" + f), test::slurp(llava + "/" + f)) << f;
  }
}

TEST(QuantizedLlava, GeneratesAsTheQuantizedWeightsInMemory) {
  test::TempDir dir;
  const std::string llava = dir / "llava";
  write_llava(llava);
  const Calibration calib = test::random_calibration(320, 4, 32);
  // The prompt's ids (first line of the CLI fixture: comma-separated, with the image's tokens).
  std::vector<int32_t> ids;
  {
    std::istringstream line(test::slurp(fixtures_dir() + "/llava_next/cli_tall_150x420.txt"));
    std::string first, id;
    std::getline(line, first);
    std::istringstream items(first);
    while (std::getline(items, id, ',')) ids.push_back(int32_t(std::stoi(id)));
  }
  ASSERT_EQ(ids.size(), 89u);
  auto fp16 = load_llava_next(llava);
  const std::vector<vision::ProcessedImage> images = {
      vision::preprocess_llava_next(vision::read_image(fixtures_dir() + "/vision/tall_150x420.jpg"), fp16->processor())};
  const Tensor base = fp16->forward(ids, images);
  const std::vector<int64_t> stop = {2};
  for (const std::string spec : kSpecs) {
    SCOPED_TRACE(spec);
    const std::string out = dir / ("q-" + spec.substr(0, 4));
    const Checkpoint source = open_model(llava);
    {
      LlamaModel src(source);
      write_quantized_llava_next(out, llava, src, quantize(source, spec, calib), json::object(), false);
    }
    auto disk = load_llava_next(out);
    auto mem = llava_next_with_language_model(
        llava, quantized_checkpoint_in_memory(source, quantize(source, spec, calib), {{"path", llava}}));
    EXPECT_EQ(disk->language_model().checkpoint().quantization["method"]["spec"], spec);
    const Tensor l_disk = disk->forward(ids, images), l_mem = mem->forward(ids, images);
    ASSERT_EQ(l_disk.shape(), base.shape());
    EXPECT_EQ(bytes_of(l_disk), bytes_of(l_mem));
    // The quantization is in effect: the logits moved from the 16-bit model's.
    float moved = 0;
    for (int64_t i = 0; i < base.numel(); ++i)
      moved = std::max(moved, std::abs(l_disk.data_as<float>()[i] - base.data_as<float>()[i]));
    EXPECT_GT(moved, 1e-3f);
    const auto g_disk = disk->generate(ids, images, 12, stop), g_mem = mem->generate(ids, images, 12, stop);
    EXPECT_EQ(g_disk, g_mem);
    EXPECT_EQ(g_disk.size(), 12u);
  }
}

TEST(QuantizedLlava, BadInputIsRefusedBeforeAnyWork) {
  test::TempDir dir;
  const std::string llava = dir / "llava";
  write_llava(llava);
  const Checkpoint source = open_model(llava);
  const QuantizedModel qm = quantize(source, "rtn:w=4,g=32", {});
  LlamaModel src(source);
  // A vision tensor missing.
  const std::string broken = dir / "broken";
  fs::create_directories(broken);
  for (const char* f : {"config.json", "preprocessor_config.json", "tokenizer.json"})
    fs::copy_file(llava + "/" + f, broken + "/" + f);
  {
    auto file = SafetensorsFile::open(llava + "/model.safetensors");
    SafetensorsWriter w;
    for (const auto& e : file->entries())
      if (e.name != "vision_tower.encoder.layers.1.mlp.fc1.weight") w.add(e.name, file->tensor(e.name));
    w.write(broken + "/model.safetensors");
  }
  EXPECT_HAS(error_of([&] { check_llava_next_source(broken); }), "vision_tower.encoder.layers.1.mlp.fc1.weight");
  LlamaModel broken_src(open_model(broken));  // its language model alone is whole
  EXPECT_HAS(error_of([&] { write_quantized_llava_next(dir / "out", broken, broken_src, qm, json::object(), false); }),
             "vision_tower.encoder.layers.1.mlp.fc1.weight");
  EXPECT_FALSE(fs::exists(dir / "out"));
  // Not a LLaVA-Next directory.
  extract_language_model(llava, dir / "plain");
  EXPECT_HAS(error_of([&] { check_llava_next_source(dir / "plain"); }), "is not a LLaVA-Next model directory");
  EXPECT_HAS(error_of([&] { load_llava_next(dir / "plain"); }), "is not a LLaVA-Next model directory");
  // A study whose vision-language task would run a model that is not LLaVA-Next.
  fs::create_directories(dir.path / "vlm");
  test::spit(dir / "vlm/ai2d.jsonl", "");
  test::spit(dir / "s.toml", "[study]\nname = \"s\"\n\n[[model]]\npath = \"plain\"\n\n[eval]\nvlm_tasks = "
                             "[\"ai2d\"]\nvlm_data = \"vlm\"\n\n[[method]]\nname = \"rtn\"\nw = 4\ng = 32\n");
  EXPECT_HAS(error_of([&] { study::load_study_spec(dir / "s.toml"); }),
             dir / "s.toml" + ":5:8: model 'plain' is not a LLaVA-Next model");
  // Its items are read with the spec: an empty file is refused by name.
  test::spit(dir / "s.toml", "[study]\nname = \"s\"\n\n[[model]]\npath = \"llava\"\n\n[eval]\nvlm_tasks = "
                             "[\"ai2d\"]\nvlm_data = \"vlm\"\n\n[[method]]\nname = \"rtn\"\nw = 4\ng = 32\n");
  EXPECT_HAS(error_of([&] { study::load_study_spec(dir / "s.toml"); }),
             dir / "s.toml" + ":8:14: " + dir / "vlm/ai2d.jsonl" + ": no items");
  // An output that exists.
  fs::create_directories(dir / "taken");
  EXPECT_HAS(error_of([&] { write_quantized_llava_next(dir / "taken", llava, src, qm, json::object(), false); }),
             "output '" + (dir / "taken") + "' exists");
  // A language model of other dimensions under the vision tower.
  EXPECT_HAS(error_of([&] {
               Checkpoint ck = source;
               ck.config.intermediate_size = 96;
               LlavaNextModel::open(llava, ck);
             }),
             "has intermediate_size 96, the config's text_config 128");
  // A quantized LLaVA-Next checkpoint is not quantized again, and nothing partial is left.
  write_quantized_llava_next(dir / "q", llava, src, qm, json::object(), false);
  for (const auto& e : fs::directory_iterator(dir.path))
    EXPECT_EQ(e.path().filename().string().find(".partial"), std::string::npos) << e.path();
}

// The study: one vision-language task (ChartQA), the 16-bit model and two methods. Its answers
// are the models' own: item i's gold answer is what the i-th model (16-bit, RTN, GPTQ) answers
// when read from the checkpoint `lowbit quantize` writes, so that each cell's relaxed accuracy
// says which of the other models' answers it reproduces.
TEST(QuantizedLlava, StudyStoresVlmEvalOfEachCellAndReportsTable8) {
  test::TempDir dir;
  const std::string llava = dir / "llava";
  write_llava(llava);
  fs::create_directories(dir.path / "vlm");
  const char* images[] = {"la_24x20.png", "gray_20x13.jpg", "rgba_64x48.png"};
  for (const char* im : images) fs::copy_file(fixtures_dir() + "/vision/" + im, dir.path / "vlm" / im);
  auto write_items = [&](const std::vector<std::string>& answers) {
    std::string text;
    for (size_t i = 0; i < 3; ++i)
      text += vlm::Json{{"question", "What is the value of bar " + std::to_string(i) + "?"}, {"answer", answers[i]},
                        {"type", i == 1 ? "augmented_test" : "human_test"}, {"image", images[i]}}
                  .dump() +
              "\n";
    test::spit(dir / "vlm/chartqa.jsonl", text);
  };
  std::string text;
  for (int i = 0; i < 40; ++i) text += "The quick brown fox jumps over the lazy dog, number " + std::to_string(i) + ".\n";
  test::spit(dir / "calib.txt", text);

  // vlm-eval on the checkpoints `lowbit quantize` writes (the CLI's path: the source's language
  // model quantized with the study's calibration windows, written whole, read back).
  auto tok = load_tokenizer(llava + "/tokenizer.json");
  const Calibration calib = make_calibration(resolve_calibration_set(dir / "calib.txt", ""), *tok, 2, 32, 0,
                                             BosMode::Default);
  const std::vector<std::string> methods = {"fp16", "rtn:w=4,g=32", "gptq:w=4,g=32"};
  std::vector<std::unique_ptr<LlavaNextModel>> models;
  for (const std::string& m : methods) {
    std::string path = llava;
    if (m != "fp16") {
      path = dir / ("q-" + m.substr(0, 4));
      const Checkpoint source = open_model(llava);
      LlamaModel src(source);
      write_quantized_llava_next(path, llava, src, quantize(source, m, calib), json::object(), false);
    }
    models.push_back(load_llava_next(path));
    models.back()->language_model().set_keep_16bit_weights(true);
  }
  vlm::VlmEvalOptions opt;
  opt.max_new_tokens = 4;
  const vlm::VlmTask& task = vlm::vlm_task("chartqa");
  write_items({"x", "x", "x"});
  std::vector<std::string> answers;
  for (size_t i = 0; i < 3; ++i)
    answers.push_back(
        vlm::evaluate_vlm(*models[i], *tok, task, vlm::load_vlm_items(task, dir / "vlm"), opt).items[i].prediction);
  write_items(answers);
  const auto items = vlm::load_vlm_items(task, dir / "vlm");
  std::map<std::string, double> expected;
  for (size_t i = 0; i < 3; ++i)
    expected[methods[i]] = vlm::evaluate_vlm(*models[i], *tok, task, items, opt).metrics["relaxed_overall"].get<double>();
  EXPECT_GE(expected["fp16"], 1.0 / 3);  // its own answer at least

  const std::string spec_path = dir / "vlm.toml";
  test::spit(spec_path, "[study]\nname = \"vlm\"\nthreads = 1\n\n[[model]]\nname = \"llava\"\npath = \"llava\"\n\n"
                        "[calibration]\nset = \"calib.txt\"\nnsamples = 2\nseqlen = 32\n\n"
                        "[eval]\nvlm_tasks = [\"chartqa\"]\nvlm_data = \"vlm\"\nvlm_max_new_tokens = 4\n\n"
                        "[[method]]\nname = \"fp16\"\n\n[[method]]\nname = \"rtn\"\nw = 4\ng = 32\n\n"
                        "[[method]]\nname = \"gptq\"\nw = 4\ng = 32\n");
  const study::StudySpec spec = study::load_study_spec(spec_path);
  const study::StudySummary s = study::run_study(spec, {}, {});
  EXPECT_EQ(s.evaluations_run, 3);
  study::Store store(spec.db, study::Store::Mode::ReadOnly);
  std::map<std::string, double> stored;
  for (const study::ResultRecord& r : store.results()) {
    EXPECT_EQ(r.eval_key, "chartqa:conversation=llava,max_new_tokens=4,limit=0");
    EXPECT_EQ(r.kind, "vision_language");
    EXPECT_EQ(r.n, 3);
    EXPECT_EQ(r.device, "cpu");
    if (r.metric == "relaxed_overall") stored[r.cell_key.substr(6, r.cell_key.find('|', 6) - 6)] = r.value;
  }
  EXPECT_EQ(stored, expected);
  // The cells' keys name the calibration where the method calibrates.
  std::set<std::string> cells;
  for (const study::CellRecord& c : store.cells()) cells.insert(c.key);
  EXPECT_EQ(cells, (std::set<std::string>{"llava|fp16|none", "llava|rtn:w=4,g=32|none",
                                          "llava|gptq:w=4,g=32|" + dir / "calib.txt" + ":n=2,seqlen=32,seed=0,bos=auto"}));

  // Table 8 with its three rows.
  const std::string md = study::render_markdown(study::load_report(spec.db));
  EXPECT_HAS(md, "ChartQA");
  auto row_of = [&](const std::string& label) {
    std::istringstream lines(md);
    std::string line;
    while (std::getline(lines, line))
      if (line.rfind("| " + label + " ", 0) == 0) return line;
    return std::string("(no row " + label + ")");
  };
  EXPECT_HAS(row_of("RTN"), fmt::format(" {:.1f} |", expected["rtn:w=4,g=32"] * 100));
  EXPECT_HAS(row_of("GPTQ"), fmt::format(" {:.1f} |", expected["gptq:w=4,g=32"] * 100));

  // Resumed: nothing to do.
  study::RunOptions resume;
  resume.resume = true;
  EXPECT_EQ(study::run_study(spec, resume, {}).evaluations_run, 0);
}

}  // namespace
}  // namespace lowbit
