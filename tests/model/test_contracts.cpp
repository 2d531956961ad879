// Contracts every registered method and every quantized-linear format must keep (ggml's
// test-backend-ops habit: one loop over the registries, so a new method or format is covered
// without anyone remembering to add it):
//   - the method's example spec resolves, and its resolved spec re-parses to itself;
//   - it quantizes a mini model: every linear present, valid, one progress report each;
//   - written to disk and opened again, and held in memory, every linear dequantizes to the same
//     bits, and the stored QuantizedLinear reads back field for field;
//   - a shape it cannot handle is refused by check_shapes before any work, or it quantizes;
//   - the format's fast dequantization equals its scalar reference bit for bit;
//   - every format of the table is produced by some registered method;
//   - every grid axis a method declares is an option of its spec, and a spec that sets it alone
//     parses and keeps its value;
//   - every format row brings an example linear (QuantFormat::example) that validates, is written
//     and opened again byte for byte, dequantizes the same on its fast path and after the round
//     trip, counts bits_per_weight within the documented bounds of what it stores, and, corrupted
//     (one owned tensor of the wrong size, a code out of range), is refused naming the tensor.
#include "calib/calib_data.h"
#include "core/error.h"
#include "formats/safetensors.h"
#include "quant/formats/bit_plane.h"
#include "quant/formats/slim_format.h"
#include "quant/quant_format.h"
#include "quant/quantize.h"
#include "quant/quantized_in_memory.h"
#include "random_calibration.h"
#include "test_util.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <tuple>
#include <set>

namespace lowbit {
namespace {

std::string mini() { return test::fixtures_dir() + "/models/llama3-mini-bf16"; }

using test::random_calibration;

bool same_bits(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.shape() == b.shape() &&
         std::memcmp(a.data(), b.data(), size_t(a.nbytes())) == 0;
}

void expect_same_linear(const QuantizedLinear& a, const QuantizedLinear& b, const std::string& what) {
  EXPECT_EQ(a.format, b.format) << what;
  EXPECT_EQ(a.rows, b.rows) << what;
  EXPECT_EQ(a.cols, b.cols) << what;
  EXPECT_EQ(a.bits, b.bits) << what;
  EXPECT_EQ(a.group_size, b.group_size) << what;
  EXPECT_EQ(a.flat_groups, b.flat_groups) << what;
  EXPECT_EQ(a.codes, b.codes) << what;
  EXPECT_EQ(a.scales, b.scales) << what;
  EXPECT_EQ(a.zeros, b.zeros) << what;
  EXPECT_EQ(a.g_idx, b.g_idx) << what;
  EXPECT_EQ(a.codebook, b.codebook) << what;
  EXPECT_EQ(a.params, b.params) << what;
  EXPECT_EQ(a.dequant_dtype, b.dequant_dtype) << what;
  ASSERT_EQ(a.extras.size(), b.extras.size()) << what;
  for (const auto& [name, t] : a.extras) {
    ASSERT_TRUE(b.extras.count(name)) << what << " extra " << name;
    EXPECT_TRUE(same_bits(t, b.extras.at(name))) << what << " extra " << name;
  }
}

TEST(MethodContract, EveryMethodQuantizesWritesAndReadsBack) {
  LOWBIT_REQUIRE_PATH(mini());
  test::TempDir dir;
  std::set<std::string> formats_seen;
  for (const MethodInfo& info : method_registry()) {
    if (info.baseline) continue;
    SCOPED_TRACE(info.example);
    auto method = make_method(info.example);
    ASSERT_EQ(method->spec().method(), info.name);
    const std::string resolved = method->spec().resolved();
    EXPECT_EQ(make_method(resolved)->spec().resolved(), resolved);
    EXPECT_TRUE(method->runs_on(Device::Kind::Cpu)) << "every method runs on the CPU";

    LlamaModel model(open_checkpoint(mini()));
    const LlamaConfig& c = model.config();
    ASSERT_NO_THROW(method->check_shapes(c));
    const Calibration calib = random_calibration(c.vocab_size, 4, 32);
    int64_t reports = 0;
    DriverCallbacks cb;
    cb.on_linear = [&](int64_t, const LinearReport& r) {
      ++reports;
      EXPECT_GE(r.weight_rel_err, 0.0);
    };
    QuantizedModel qm = quantize_model(model, *method, method->needs_calibration() ? &calib : nullptr, cb);
    EXPECT_EQ(reports, 7 * c.num_hidden_layers);
    ASSERT_EQ(qm.blocks.size(), size_t(c.num_hidden_layers));
    for (int64_t i = 0; i < c.num_hidden_layers; ++i)
      for (LinearKind k : kAllLinears) {
        const auto& q = qm.blocks[size_t(i)].linear[size_t(k)];
        ASSERT_TRUE(q.has_value()) << "layer " << i << " " << linear_name(k);
        EXPECT_NO_THROW(q->validate("contract"));
        EXPECT_EQ(q->rows, linear_out_features(c, k));
        EXPECT_EQ(q->cols, linear_in_features(c, k));
        formats_seen.insert(q->format_name());
        // The fast path, where the format has one, equals the scalar reference.
        if (q->format->dequantize_fast != nullptr) {
          std::vector<float> ref(size_t(q->rows * q->cols)), fast(ref.size());
          q->format->dequantize(*q, ref.data());
          q->format->dequantize_fast(*q, fast.data());
          EXPECT_EQ(std::memcmp(ref.data(), fast.data(), ref.size() * sizeof(float)), 0) << q->format_name();
        }
        EXPECT_GT(q->bits_per_weight(), 0.0);
      }

    const std::string out = dir / info.name;
    write_quantized_checkpoint(out, model, qm, nlohmann::json::object(), false);
    const Checkpoint disk = open_model(out);
    ASSERT_FALSE(disk.quantization.is_null());
    EXPECT_EQ(disk.quantization["method"]["spec"], info.example);
    const Checkpoint source = open_checkpoint(mini());
    const Checkpoint mem = quantized_checkpoint_in_memory(source, qm, source_identity(source));
    for (int64_t i = 0; i < c.num_hidden_layers; ++i)
      for (LinearKind k : kAllLinears) {
        const std::string name = linear_weight_name(i, k);
        const QuantizedLinear& q = *qm.blocks[size_t(i)].linear[size_t(k)];
        const Tensor want = q.dequantize_as_stored();
        EXPECT_TRUE(same_bits(disk.weights->get(name), want)) << name;
        EXPECT_TRUE(same_bits(mem.weights->get(name), want)) << name;
        expect_same_linear(quantized_linear_of(disk, name), q, name);
        expect_same_linear(quantized_linear_of(mem, name), q, name);
      }
    // Every other tensor: the method's rewrite where it made one, else the source's.
    for (const auto& [name, shape] : expected_llama_tensors(c)) {
      const auto parsed = parse_hf_tensor_name(name);
      ASSERT_TRUE(parsed.has_value()) << name;
      if (tensor_spec(parsed->first).linear) continue;
      EXPECT_TRUE(same_bits(disk.weights->get(name).to_f32(), mem.weights->get(name).to_f32())) << name;
    }
  }
  // Every format of the table is exercised by some method.
  for (const QuantFormat* f : quant_formats()) EXPECT_TRUE(formats_seen.count(f->name)) << f->name;
}

TEST(MethodContract, ShapesAreRefusedBeforeAnyWorkOrQuantized) {
  LOWBIT_REQUIRE_PATH(mini());
  // A model (random weights) whose input widths 72 and 200 no group of 64 divides: a method
  // either refuses it in check_shapes, naming the group size, or quantizes it.
  test::TempDir dir;
  nlohmann::json cfg = nlohmann::json::parse(test::slurp(mini() + "/config.json"));
  cfg["hidden_size"] = 72;
  cfg["intermediate_size"] = 200;
  cfg["head_dim"] = 36;
  cfg["num_hidden_layers"] = 1;
  test::spit(dir / "config.json", cfg.dump());
  const std::string path = "random:" + dir.path.string();
  for (const MethodInfo& info : method_registry()) {
    if (info.baseline) continue;
    SCOPED_TRACE(info.example);
    auto method = make_method(info.example);
    LlamaModel model(open_checkpoint(path));
    try {
      method->check_shapes(model.config());
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("64"), std::string::npos) << "the error names the group size: " << e.what();
      continue;
    }
    const Calibration calib = random_calibration(model.config().vocab_size, 2, 16);
    QuantizedModel qm;
    EXPECT_NO_THROW(qm = quantize_model(model, *method, method->needs_calibration() ? &calib : nullptr, {}));
    for (const auto& q : qm.blocks.at(0).linear) EXPECT_TRUE(q.has_value());
  }
}

TEST(MethodContract, DevicesAreDeclaredAndRefusedBeforeWork) {
  for (const MethodInfo& info : method_registry()) {
    auto method = make_method(info.example);
    const Device cuda = parse_device("cuda:0");
    if (method->runs_on(Device::Kind::Cuda)) {
      if (info.name != std::string("gptq")) {
        EXPECT_NO_THROW(method->check_device(cuda)) << info.name;
      }
    } else {
      try {
        method->check_device(cuda);
        ADD_FAILURE() << info.name << " does not run on cuda but check_device accepted it";
      } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find(info.name), std::string::npos) << e.what();
        EXPECT_NE(std::string(e.what()).find("cuda:0"), std::string::npos) << e.what();
      }
    }
  }
  // GPTQ's and PB-LLM's GPU paths take lazy batches of at most 128 columns: a larger block is
  // refused there.
  for (const char* m : {"gptq:block=256", "pbllm:g=256,block=256"}) {
    EXPECT_NO_THROW(make_method(m)->check_device(parse_device("cpu"))) << m;
    EXPECT_THROW(make_method(m)->check_device(parse_device("cuda")), Error) << m;
  }
  EXPECT_NO_THROW(make_method("gptq:block=128")->check_device(parse_device("cuda")));
  EXPECT_NO_THROW(make_method("pbllm:g=256,block=128")->check_device(parse_device("cuda")));
}

TEST(MethodContract, GridAxesParseInTheSpec) {
  for (const std::string& name : method_names()) {
    const MethodInfo& info = method_info(name);
    SCOPED_TRACE(name);
    if (info.baseline) {
      EXPECT_TRUE(info.grid_axes.empty()) << "the baseline takes no options";
      continue;
    }
    // Every axis at the example's value (every option is taken, defaults included), all in one
    // spec, as a grid point sets them (an axis may be valid only beside another: pbllm's g and
    // block).
    std::set<std::string> seen;
    std::vector<std::pair<std::string, std::string>> point;
    const auto example = make_method(info.example);
    const auto& taken = example->spec().taken();
    for (const std::string& axis : info.grid_axes) {
      EXPECT_TRUE(seen.insert(axis).second) << axis << " declared twice";
      auto it = std::find_if(taken.begin(), taken.end(), [&](const auto& kv) { return kv.first == axis; });
      ASSERT_NE(it, taken.end()) << "grid axis '" << axis << "' is not an option of " << name;
      point.push_back(*it);
    }
    std::string spec = name;
    for (const auto& [k, v] : point) spec += (spec == name ? ":" : ",") + k + "=" + v;
    std::unique_ptr<QuantMethod> m;
    ASSERT_NO_THROW(m = make_method(spec)) << spec;
    for (const auto& kv : point) {
      const auto& t = m->spec().taken();
      EXPECT_NE(std::find(t.begin(), t.end(), kv), t.end()) << spec << " -> " << m->spec().resolved();
    }
  }
}

TEST(FormatTable, NamesAreUniqueAndFound) {
  std::set<std::string> names;
  for (const QuantFormat* f : quant_formats()) {
    EXPECT_TRUE(names.insert(f->name).second) << f->name;
    EXPECT_EQ(&find_quant_format(f->name), f);
    EXPECT_GE(f->version, 1);
    EXPECT_NE(f->dequantize, nullptr);
    EXPECT_NE(f->bits_per_weight, nullptr);
    EXPECT_NE(f->validate, nullptr);
  }
  EXPECT_THROW(find_quant_format("no-such-format"), Error);
}

// The word a validation error about the tensor of checkpoint suffix `suffix` must contain.
std::string tensor_word(const std::string& suffix) {
  if (suffix == "qcodes") return "code";
  if (suffix == "scales") return "scale";
  if (suffix == "zeros") return "zero";
  if (suffix.rfind("extra.", 0) == 0) return suffix.substr(6);
  return suffix;  // g_idx, codebook
}

// q with the tensor of `suffix` one element short (fields) or long (extras).
QuantizedLinear with_wrong_size(QuantizedLinear q, const std::string& suffix) {
  if (suffix == "qcodes") q.codes.pop_back();
  else if (suffix == "scales") q.scales.pop_back();
  else if (suffix == "zeros") q.zeros.pop_back();
  else if (suffix == "g_idx") q.g_idx.pop_back();
  else if (suffix == "codebook") q.codebook.pop_back();
  else {
    const Tensor& t = q.extras.at(suffix.substr(6));
    Tensor longer = Tensor::empty(t.dtype(), {t.numel() + 1});
    std::memcpy(longer.mutable_data(), t.data(), size_t(t.nbytes()));
    q.extras[suffix.substr(6)] = std::move(longer);
  }
  return q;
}

std::string validation_error(const QuantizedLinear& q) {
  try {
    q.validate("corrupt");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(FormatTable, EveryFormatsExampleRoundTripsAndIsChecked) {
  test::TempDir dir;
  for (const QuantFormat* f : quant_formats()) {
    SCOPED_TRACE(f->name);
    ASSERT_NE(f->example, nullptr) << "format " << f->name << " has no example linear";
    for (const auto& [rows, cols, seed] : {std::tuple{int64_t(64), int64_t(128), uint64_t(1)},
                                           std::tuple{int64_t(128), int64_t(64), uint64_t(2)}}) {
      const std::string what = fmt::format("{} [{}, {}] seed {}", f->name, rows, cols, seed);
      SCOPED_TRACE(what);
      const QuantizedLinear q = f->example(rows, cols, seed);
      ASSERT_EQ(q.format, f);
      ASSERT_EQ(q.rows, rows);
      ASSERT_EQ(q.cols, cols);
      ASSERT_NO_THROW(q.validate(what));
      // The same seed gives the same linear; another seed another weight.
      expect_same_linear(f->example(rows, cols, seed), q, what);
      EXPECT_FALSE(same_bits(f->example(rows, cols, seed + 100).dequantize_as_stored(), q.dequantize_as_stored()));

      // The scalar reference and the fast path agree bit for bit, and write every weight (the
      // buffers start as NaN: finish_linear dequantizes into a buffer that held another linear).
      std::vector<float> ref(size_t(rows * cols), std::nanf("")), fast(ref.size(), std::nanf(""));
      f->dequantize(q, ref.data());
      for (float v : ref) ASSERT_TRUE(std::isfinite(v));
      if (f->dequantize_fast != nullptr) {
        f->dequantize_fast(q, fast.data());
        EXPECT_EQ(std::memcmp(ref.data(), fast.data(), ref.size() * sizeof(float)), 0);
      }

      // Written as the quantized checkpoint writes a linear, opened again: the same tensors byte
      // for byte, the same fields, the same dequantized weight.
      const std::string base = "model.layers.0.mlp.down_proj";
      const auto tensors = linear_tensors(q);
      SafetensorsWriter w;
      for (const auto& [suffix, t] : tensors) w.add(base + "." + suffix, t);
      w.set_metadata(kQuantizationMetadataKey, nlohmann::json{{"linears", {{base, linear_layout(q)}}}}.dump());
      const std::string path = dir / (std::string(f->name) + std::to_string(seed) + ".safetensors");
      w.write(path);
      const auto file = SafetensorsFile::open(path);
      const auto layout = nlohmann::json::parse(file->metadata().at(kQuantizationMetadataKey))["linears"][base];
      const QuantizedLinear back =
          read_linear([&](const std::string& suffix) { return file->tensor(base + "." + suffix); }, layout, path);
      expect_same_linear(back, q, what);
      const auto back_tensors = linear_tensors(back);
      ASSERT_EQ(back_tensors.size(), tensors.size());
      for (size_t i = 0; i < tensors.size(); ++i) {
        EXPECT_EQ(back_tensors[i].first, tensors[i].first);
        EXPECT_TRUE(same_bits(back_tensors[i].second, tensors[i].second)) << tensors[i].first;
        EXPECT_TRUE(same_bits(file->tensor(base + "." + tensors[i].first), tensors[i].second)) << tensors[i].first;
      }
      EXPECT_TRUE(same_bits(back.dequantize_as_stored(), q.dequantize_as_stored()));
      std::vector<float> back_ref(ref.size());
      f->dequantize(back, back_ref.data());
      EXPECT_EQ(std::memcmp(ref.data(), back_ref.data(), ref.size() * sizeof(float)), 0);

      // bits_per_weight within the bounds quant_format.h documents.
      double stored = 0;
      for (const auto& [suffix, t] : tensors) stored += 8.0 * double(t.nbytes());
      stored /= double(rows * cols);
      const double params = 64.0 * double(q.params.size()) / double(rows * cols);
      EXPECT_GE(q.bits_per_weight(), stored / 4.0) << "stored " << stored;
      EXPECT_LE(q.bits_per_weight(), stored + params) << "stored " << stored;
      EXPECT_DOUBLE_EQ(layout["bits_per_weight"].get<double>(), q.bits_per_weight());

      // Every owned tensor of the wrong size is refused, the error naming it.
      for (const auto& [suffix, t] : tensors) {
        const std::string msg = validation_error(with_wrong_size(q, suffix));
        EXPECT_NE(msg.find(tensor_word(suffix)), std::string::npos) << suffix << ": '" << msg << "'";
      }
      // A code out of its range is refused.
      if (!q.codes.empty() && q.bits < 8) {
        QuantizedLinear bad = q;
        bad.codes[bad.codes.size() / 2] = uint8_t(1u << q.bits);
        EXPECT_NE(validation_error(bad).find("code"), std::string::npos) << validation_error(bad);
      }
    }
  }
}

// The group layouts the grids produce (groups that do not divide the columns, flat groups that
// cross rows, an act-order g_idx): every column's run carries its scale_index, and the int and
// codebook fast paths, which read scales by runs, equal their scalar references bit for bit.
TEST(FormatTable, ScaleRunsCarryScaleIndexAndFastPathsFollowThem) {
  struct Layout {
    int64_t rows, cols, group;
    bool flat, act_order;
  };
  for (const Layout& l : {Layout{5, 100, 32, false, false}, Layout{5, 100, 128, false, false},
                          Layout{3, 100, 64, true, false}, Layout{4, 96, 7, true, false},
                          Layout{6, 100, 32, false, true}}) {
    SCOPED_TRACE(fmt::format("[{}, {}] group {} flat {} act_order {}", l.rows, l.cols, l.group, l.flat, l.act_order));
    for (const char* name : {"int", "codebook"}) {
      SCOPED_TRACE(name);
      QuantizedLinear q;
      q.format = &find_quant_format(name);
      q.rows = l.rows;
      q.cols = l.cols;
      q.bits = 4;
      q.group_size = l.group;
      q.flat_groups = l.flat;
      std::mt19937 rng(uint32_t(l.rows * 1000 + l.cols + l.group));
      if (l.act_order)
        for (int64_t c = 0; c < l.cols; ++c) q.g_idx.push_back(int32_t(rng() % uint32_t(q.groups_per_row())));
      for (int64_t i = 0; i < l.rows * l.cols; ++i) q.codes.push_back(uint8_t(rng() % 16));
      std::uniform_real_distribution<float> u(0.001f, 0.1f);
      for (int64_t s = 0; s < q.num_scale_groups(); ++s) {
        q.scales.push_back(u(rng));
        if (std::string(name) == "int") q.zeros.push_back(float(rng() % 16));
      }
      if (std::string(name) == "codebook")
        for (int i = 0; i < 16; ++i) q.codebook.push_back(-1.0f + float(i) / 7.5f);
      ASSERT_NO_THROW(q.validate("runs"));

      for (int64_t r = 0; r < l.rows; ++r) {
        int64_t next = 0;
        q.for_each_scale_run(r, [&](int64_t c0, int64_t c1, int64_t s) {
          ASSERT_EQ(c0, next);
          ASSERT_LT(c0, c1);
          for (int64_t c = c0; c < c1; ++c) ASSERT_EQ(q.scale_index(r, c), s) << "row " << r << " column " << c;
          next = c1;
        });
        EXPECT_EQ(next, l.cols) << "row " << r;
      }
      std::vector<float> ref(size_t(l.rows * l.cols)), fast(ref.size(), -1.0f);
      q.format->dequantize(q, ref.data());
      q.format->dequantize_fast(q, fast.data());
      EXPECT_EQ(std::memcmp(ref.data(), fast.data(), ref.size() * sizeof(float)), 0);
    }
  }
}

// The formats' own code-range checks (run on all cores) name the first offending weight in row
// order, as a serial scan would: a 1-bit SliM-LLM group's code above 2, a PB-LLM salient weight
// with a sign code. Rows 400, 200 and 100 are spoiled; row 100 is named (600 rows: the search
// splits them among threads).
TEST(FormatTable, CodeRangeChecksNameTheFirstOffendingWeight) {
  {
    QuantizedLinear q = find_quant_format("slim").example(600, 128, 3);
    const std::vector<int> gb = slim_group_bits(q);
    const auto one_bit = std::find(gb.begin(), gb.end(), 1);
    ASSERT_NE(one_bit, gb.end());
    const int64_t c = int64_t(one_bit - gb.begin()) * q.group_size + 5;
    for (int64_t r : {400, 200, 100}) q.codes[size_t(r * q.cols + c)] = 3;
    EXPECT_NE(validation_error(q).find(fmt::format("code 3 at [100, {}]", c)), std::string::npos)
        << validation_error(q);
  }
  {
    QuantizedLinear q = find_quant_format("pbllm").example(600, 128, 3);
    const uint8_t* mask = q.extras.at("mask").data_as<uint8_t>();
    std::vector<int64_t> salient_cols;
    for (int64_t r : {400, 200, 100}) {
      int64_t c = 0;
      while (c < q.cols && plane_bit(mask, q.cols, r, c)) ++c;
      ASSERT_LT(c, q.cols) << "row " << r << " has no salient weight";
      q.codes[size_t(r * q.cols + c)] = 1;
      salient_cols.push_back(c);
    }
    EXPECT_NE(validation_error(q).find(fmt::format("sign code 1 at (100, {})", salient_cols[2])), std::string::npos)
        << validation_error(q);
  }
}

}  // namespace
}  // namespace lowbit
