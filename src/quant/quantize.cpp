#include "quant/quantize.h"

#include "core/error.h"
#include "core/hash.h"
#include "core/mapped_file.h"
#include "formats/random_weights.h"
#include "formats/safetensors.h"
#include "formats/tokenizer.h"
#include "lowbit/version.h"
#include "quant/activation_quant.h"

#include <fmt/format.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

namespace lowbit {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

constexpr const char* kMetadataKey = "lowbit.quantization";

std::string linear_base(int64_t layer, LinearKind k) {
  std::string name = linear_weight_name(layer, k);
  return name.substr(0, name.size() - std::string(".weight").size());
}

DType parse_dtype_name(const std::string& s, const std::string& what) {
  auto d = dtype_from_name(s);
  LB_CHECK(d.has_value(), "{}: unknown dtype '{}'", what, s);
  return *d;
}

template <typename T>
Tensor tensor_from(const std::vector<T>& v, DType dtype, std::vector<int64_t> shape) {
  Tensor t = Tensor::empty(dtype, std::move(shape));
  LB_ASSERT(size_t(t.nbytes()) == v.size() * sizeof(T));
  if (!v.empty()) std::memcpy(t.mutable_data(), v.data(), size_t(t.nbytes()));
  return t;
}

template <typename T>
std::vector<T> vector_from(const Tensor& t, DType dtype, int64_t n, const std::string& what) {
  LB_CHECK(t.dtype() == dtype && t.numel() == n, "{}: expected {} {} values, found {} {}", what, n, dtype_name(dtype),
           t.numel(), dtype_name(t.dtype()));
  std::vector<T> v(static_cast<size_t>(n));
  std::memcpy(v.data(), t.data(), size_t(n) * sizeof(T));
  return v;
}

// The layout of one quantized linear, as recorded in the metadata.
json linear_layout(const QuantizedLinear& q) {
  json extras = json::array();
  for (const auto& [name, t] : q.extras) extras.push_back(name);
  return {{"format", quant_format_name(q.format)}, {"bits", q.bits}, {"group_size", q.group_size},
          {"flat_groups", q.flat_groups}, {"rows", q.rows}, {"cols", q.cols},
          {"dequant_dtype", std::string(dtype_name(q.dequant_dtype))}, {"g_idx", !q.g_idx.empty()},
          {"scale_storage_bits", q.scale_storage_bits}, {"zero_storage_bits", q.zero_storage_bits},
          {"bits_per_weight", q.bits_per_weight()}, {"extras", extras}};
}

void add_linear_tensors(SafetensorsWriter& w, const std::string& base, const QuantizedLinear& q) {
  const std::vector<uint8_t> packed = pack_codes(q.codes, q.rows, q.cols, q.bits);
  w.add(base + ".qcodes", tensor_from(packed, DType::U8, {q.rows, packed_row_bytes(q.cols, q.bits)}));
  const bool grouped = q.format == QuantFormat::Int || q.format == QuantFormat::Codebook;
  const std::vector<int64_t> sshape = !grouped      ? std::vector<int64_t>{int64_t(q.scales.size())}
                                      : q.flat_groups ? std::vector<int64_t>{q.num_scale_groups()}
                                                      : std::vector<int64_t>{q.rows, q.groups_per_row()};
  if (grouped || !q.scales.empty()) w.add(base + ".scales", tensor_from(q.scales, DType::F32, sshape));
  if (q.format == QuantFormat::Int || (q.format == QuantFormat::Pbllm))
    w.add(base + ".zeros", tensor_from(q.zeros, DType::F32, sshape));
  if (q.format == QuantFormat::Codebook)
    w.add(base + ".codebook", tensor_from(q.codebook, DType::F32, {int64_t(q.codebook.size())}));
  if (!q.g_idx.empty()) w.add(base + ".g_idx", tensor_from(q.g_idx, DType::I32, {q.cols}));
  for (const auto& [name, t] : q.extras) w.add(base + ".extra." + name, t);
}

QuantizedLinear read_linear(const SafetensorsFile& f, const std::string& base, const json& layout) {
  const std::string what = f.path() + ": " + base;
  auto field = [&](const char* key) -> const json& {
    LB_CHECK(layout.contains(key), "{}: layout lacks '{}'", what, key);
    return layout[key];
  };
  QuantizedLinear q;
  const std::string fmt_name = field("format").get<std::string>();
  bool known = false;
  for (QuantFormat f : {QuantFormat::Int, QuantFormat::Codebook, QuantFormat::Pbllm, QuantFormat::Billm})
    if (fmt_name == quant_format_name(f)) {
      q.format = f;
      known = true;
    }
  LB_CHECK(known, "{}: unknown format '{}'", what, fmt_name);
  q.bits = field("bits").get<int>();
  q.group_size = field("group_size").get<int64_t>();
  q.flat_groups = field("flat_groups").get<bool>();
  q.rows = field("rows").get<int64_t>();
  q.cols = field("cols").get<int64_t>();
  q.dequant_dtype = parse_dtype_name(field("dequant_dtype").get<std::string>(), what);
  q.scale_storage_bits = field("scale_storage_bits").get<double>();
  q.zero_storage_bits = field("zero_storage_bits").get<double>();
  LB_CHECK(q.bits >= 1 && q.bits <= 8 && q.rows > 0 && q.cols > 0 && q.group_size > 0,
           "{}: implausible layout {}", what, layout.dump());
  const Tensor codes = f.tensor(base + ".qcodes");
  const int64_t rb = packed_row_bytes(q.cols, q.bits);
  LB_CHECK(codes.dtype() == DType::U8 && codes.numel() == q.rows * rb, "{}.qcodes: expected U8 [{}, {}], found {} {}",
           base, q.rows, rb, dtype_name(codes.dtype()), codes.shape_str());
  q.codes = unpack_codes(codes.data_as<uint8_t>(), q.rows, q.cols, q.bits);
  // pbllm: one scale and zero-point per row; billm: none.
  const int64_t nscales = q.format == QuantFormat::Pbllm ? q.rows : q.num_scale_groups();
  if (q.format != QuantFormat::Billm)
    q.scales = vector_from<float>(f.tensor(base + ".scales"), DType::F32, nscales, base + ".scales");
  if (q.format == QuantFormat::Int || q.format == QuantFormat::Pbllm)
    q.zeros = vector_from<float>(f.tensor(base + ".zeros"), DType::F32, nscales, base + ".zeros");
  else if (q.format == QuantFormat::Codebook)
    q.codebook = vector_from<float>(f.tensor(base + ".codebook"), DType::F32, int64_t(1) << q.bits, base + ".codebook");
  if (field("g_idx").get<bool>())
    q.g_idx = vector_from<int32_t>(f.tensor(base + ".g_idx"), DType::I32, q.cols, base + ".g_idx");
  for (const auto& name : field("extras")) q.extras[name.get<std::string>()] = f.tensor(base + ".extra." + name.get<std::string>());
  q.validate(what);
  return q;
}

// A quantized checkpoint seen as a 16-bit one: linear weights are dequantized on request.
class DequantizedWeights final : public TableWeightSource {
 public:
  DequantizedWeights(std::shared_ptr<const SafetensorsFile> file, const json& meta) : file_(std::move(file)) {
    const json& linears = meta.at("linears");
    for (auto it = linears.begin(); it != linears.end(); ++it) {
      const std::string base = it.key();
      const json& l = it.value();
      const DType dt = parse_dtype_name(l.at("dequant_dtype").get<std::string>(), file_->path());
      const int64_t rows = l.at("rows").get<int64_t>(), cols = l.at("cols").get<int64_t>();
      layouts_[base + ".weight"] = {base, l};
      infos_[base + ".weight"] = WeightInfo{dt, {rows, cols}, rows * cols * dtype_size(dt)};
    }
    // The tensors that make up the quantized linears; every other tensor passes through.
    std::set<std::string> owned;
    for (const auto& [name, bl] : layouts_) {
      const std::string& base = bl.first;
      for (const char* suffix : {".qcodes", ".scales", ".zeros", ".codebook", ".g_idx"}) owned.insert(base + suffix);
      for (const auto& x : bl.second.at("extras")) owned.insert(base + ".extra." + x.get<std::string>());
    }
    for (const auto& e : file_->entries())
      if (!owned.count(e.name)) infos_[e.name] = WeightInfo{e.dtype, e.shape, int64_t(e.end - e.begin)};
  }
  Tensor get(const std::string& name) const override {
    auto it = layouts_.find(name);
    if (it != layouts_.end()) return read_linear(*file_, it->second.first, it->second.second).dequantize_as_stored();
    LB_CHECK(infos_.count(name), "quantized checkpoint '{}' has no tensor named '{}'", file_->path(), name);
    return file_->tensor(name);
  }
  std::vector<std::string> files() const override { return {file_->path()}; }
  // The QuantizedLinear behind a linear weight name (for packing and inspection).
  QuantizedLinear quantized(const std::string& name) const {
    auto it = layouts_.find(name);
    LB_CHECK(it != layouts_.end(), "'{}' is not a quantized linear", name);
    return read_linear(*file_, it->second.first, it->second.second);
  }

 private:
  std::shared_ptr<const SafetensorsFile> file_;
  std::map<std::string, std::pair<std::string, json>> layouts_;  // weight name -> (base, layout)
};

std::string now_iso8601() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

}  // namespace

std::string weights_sha256(const Checkpoint& ck) {
  Sha256 h;
  for (const auto& f : ck.weights->files()) {
    auto m = MappedFile::open(f);
    h.update(m->data(), m->size());
  }
  return h.hex_digest();
}

QuantizedModel quantize_model(LlamaModel& model, QuantMethod& method, const Calibration* calib,
                              const DriverCallbacks& cb) {
  LB_CHECK(!method.needs_calibration() || calib != nullptr, "method '{}' needs calibration data",
           method.spec().text());
  const auto t0 = std::chrono::steady_clock::now();
  QuantizedModel qm;
  qm.method = {{"spec", method.spec().text()}, {"resolved", method.spec().resolved()},
               {"name", method.spec().method()}, {"weight_bits", method.weight_bits()},
               {"activation_bits", method.activation_bits()}, {"group_size", method.group_size()}};
  qm.calibration = method.needs_calibration() ? calib->identity() : json(nullptr);
  qm.blocks.resize(size_t(model.config().num_hidden_layers));
  DriverPlan plan;
  plan.windows = method.needs_calibration() ? &calib->windows : nullptr;
  plan.propagate_quantized = method.propagates_quantized();
  plan.quantize_block = [&](BlockContext& ctx) {
    QuantizedBlock& out = qm.blocks[size_t(ctx.layer())];
    auto copy = [](const Tensor& t) {
      Tensor c = Tensor::empty(t.dtype(), t.shape());
      std::memcpy(c.mutable_data(), t.data(), size_t(t.nbytes()));
      return c;
    };
    const Tensor in_norm = copy(ctx.weights().input_norm), post_norm = copy(ctx.weights().post_norm);
    method.quantize_block(ctx, out);
    for (LinearKind k : kAllLinears)
      LB_CHECK(out.linear[size_t(k)].has_value(), "method '{}' left layer {} {} unquantized", method.spec().text(),
               ctx.layer(), linear_name(k));
    // Record the norms the method rewrote.
    auto changed = [](const Tensor& a, const Tensor& b) { return std::memcmp(a.data(), b.data(), size_t(a.nbytes())) != 0; };
    if (changed(in_norm, ctx.weights().input_norm)) out.input_norm = copy(ctx.weights().input_norm);
    if (changed(post_norm, ctx.weights().post_norm)) out.post_norm = copy(ctx.weights().post_norm);
  };
  run_block_by_block(model, plan, cb);
  qm.activation = method.activation_config();
  qm.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return qm;
}

void write_quantized_checkpoint(const std::string& out_dir, const LlamaModel& source, const QuantizedModel& qm,
                                const json& extra, bool overwrite) {
  const fs::path out(out_dir);
  LB_CHECK(!fs::exists(out) || overwrite, "output '{}' exists; remove it or pass --force", out_dir);
  const Checkpoint& ck = source.checkpoint();
  const LlamaConfig& c = source.config();
  LB_CHECK(qm.blocks.size() == size_t(c.num_hidden_layers), "quantized model has {} blocks, the source {}",
           qm.blocks.size(), c.num_hidden_layers);
  const fs::path parent = out.has_parent_path() ? out.parent_path() : fs::path(".");
  LB_CHECK(fs::is_directory(parent), "cannot write '{}': directory '{}' does not exist", out_dir, parent.string());
  const fs::path tmp = parent / fmt::format(".{}.partial-{}", out.filename().string(), ::getpid());
  fs::remove_all(tmp);
  fs::create_directories(tmp);
  try {
    // config.json: the source's own when it has one, else one written from its hyper-parameters.
    const fs::path src_dir = fs::is_directory(ck.path) ? fs::path(ck.path) : fs::path(ck.path).parent_path();
    if (ck.format == "hf-safetensors" || ck.format == "lowbit-quantized")
      fs::copy_file(src_dir / "config.json", tmp / "config.json");
    else
      std::ofstream(tmp / "config.json") << llama_config_to_json(c);
    for (const char* name : {"tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                             "generation_config.json"})
      if (fs::exists(src_dir / name)) fs::copy_file(src_dir / name, tmp / name);
    if (!ck.tokenizer_path.empty() && !fs::exists(tmp / fs::path(ck.tokenizer_path).filename()))
      fs::copy_file(ck.tokenizer_path, tmp / fs::path(ck.tokenizer_path).filename());

    SafetensorsWriter w;
    json linears = json::object(), modified = json::array();
    for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
      const QuantizedBlock& b = qm.blocks[size_t(i)];
      for (LinearKind k : kAllLinears) {
        const std::string base = linear_base(i, k);
        const QuantizedLinear& q = *b.linear[size_t(k)];
        add_linear_tensors(w, base, q);
        linears[base] = linear_layout(q);
      }
      const std::string p = "model.layers." + std::to_string(i) + ".";
      for (auto [name, t] : {std::pair{p + "input_layernorm.weight", &b.input_norm},
                             std::pair{p + "post_attention_layernorm.weight", &b.post_norm}}) {
        if (t->defined() && t->numel() > 0) {
          w.add(name, *t);
          modified.push_back(name);
        } else {
          w.add(name, ck.weights->get(name));
        }
      }
    }
    w.add("model.embed_tokens.weight", ck.weights->get("model.embed_tokens.weight"));
    w.add("model.norm.weight", ck.weights->get("model.norm.weight"));
    if (!c.tie_word_embeddings) w.add("lm_head.weight", ck.weights->get("lm_head.weight"));
    json meta = {{"format_version", 1},
                 {"method", qm.method},
                 {"calibration", qm.calibration},
                 {"activation", qm.activation},
                 {"source", {{"path", ck.path}, {"format", ck.format}, {"sha256", weights_sha256(ck)},
                             {"dtype", c.torch_dtype}, {"parameters", c.parameter_count()}}},
                 {"lowbit", {{"version", kVersion}, {"commit", kGitCommit}}},
                 {"created", now_iso8601()},
                 {"quantize_seconds", qm.seconds},
                 {"linears", linears},
                 {"modified", modified}};
    for (auto it = extra.begin(); it != extra.end(); ++it) meta[it.key()] = it.value();
    w.set_metadata("format", "pt");
    w.set_metadata(kMetadataKey, meta.dump());
    w.write((tmp / "model.safetensors").string());
    if (fs::exists(out)) fs::remove_all(out);
    fs::rename(tmp, out);
  } catch (...) {
    std::error_code ec;
    fs::remove_all(tmp, ec);
    throw;
  }
}

void install_quantized_forward(LlamaModel& model) {
  const json& q = model.checkpoint().quantization;
  model.set_forward_hooks(activation_quant_hooks(q.is_null() ? json(nullptr) : q.value("activation", json(nullptr))));
}

std::unique_ptr<LlamaModel> load_model(const std::string& path) {
  auto model = std::make_unique<LlamaModel>(open_model(path));
  install_quantized_forward(*model);
  return model;
}

Checkpoint open_model(const std::string& path) {
  if (is_random_checkpoint(path)) return open_checkpoint(path);
  const fs::path p(path);
  const fs::path st = fs::is_directory(p) ? p / "model.safetensors" : p;
  if (fs::exists(st) && st.extension() == ".safetensors" && fs::exists(st.parent_path() / "config.json")) {
    auto file = SafetensorsFile::open(st.string());
    auto it = file->metadata().find(kMetadataKey);
    if (it != file->metadata().end()) {
      json meta = json::parse(it->second, nullptr, false);
      LB_CHECK(!meta.is_discarded() && meta.is_object() && meta.contains("linears") && meta["linears"].is_object(),
               "'{}': metadata '{}' is not a valid quantization header", st.string(), kMetadataKey);
      LB_CHECK(meta.value("format_version", 0) == 1, "'{}': quantized checkpoint format version {} is not supported",
               st.string(), meta.value("format_version", 0));
      Checkpoint ck;
      ck.path = path;
      ck.format = "lowbit-quantized";
      ck.config = load_llama_config((st.parent_path() / "config.json").string());
      ck.weights = std::make_shared<DequantizedWeights>(file, meta);
      validate_llama_weights(ck.config, *ck.weights, path);
      ck.tokenizer_path = find_tokenizer_file(st.parent_path().string());
      ck.quantization = std::move(meta);
      return ck;
    }
  }
  return open_checkpoint(path);
}

}  // namespace lowbit
