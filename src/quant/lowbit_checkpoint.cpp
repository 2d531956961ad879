#include "quant/lowbit_checkpoint.h"

#include "core/error.h"
#include "core/hash.h"
#include "core/mapped_file.h"
#include "core/process.h"
#include "formats/gguf.h"
#include "formats/llava_next_checkpoint.h"
#include "formats/random_weights.h"
#include "formats/safetensors.h"
#include "formats/tokenizer.h"
#include "formats/tokenizer_gguf.h"
#include "core/version.h"
#include "model/llama_model.h"
#include "quant/activation_quant.h"
#include "quant/quantize.h"
#include "quant/quantized_in_memory.h"

#include <fmt/format.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

namespace lowbit {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

std::string slurp_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  LB_CHECK(in.good(), "cannot open '{}'", path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
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
std::vector<T> vector_from(const Tensor& t, DType dtype, const std::string& what) {
  LB_CHECK(t.dtype() == dtype, "{}: expected {} values, found {}", what, dtype_name(dtype), dtype_name(t.dtype()));
  std::vector<T> v(static_cast<size_t>(t.numel()));
  if (!v.empty()) std::memcpy(v.data(), t.data(), v.size() * sizeof(T));
  return v;
}

// The rewritten tensors of a quantized model by name: per block and model-level.
std::map<std::string, const Tensor*> rewritten_tensors(const QuantizedModel& qm) {
  std::map<std::string, const Tensor*> out;
  for (size_t i = 0; i < qm.blocks.size(); ++i)
    for (const auto& [kind, t] : qm.blocks[i].rewritten) out[hf_tensor_name(kind, int64_t(i))] = &t;
  for (const auto& [kind, t] : qm.rewritten) out[hf_tensor_name(kind)] = &t;
  return out;
}

// A quantized checkpoint on disk seen as a 16-bit one: linear weights are dequantized on request.
class DequantizedWeights final : public QuantizedWeightSource {
 public:
  DequantizedWeights(std::shared_ptr<const SafetensorsFile> file, const json& meta) : file_(std::move(file)) {
    const json& linears = meta.at("linears");
    std::set<std::string> owned;
    for (auto it = linears.begin(); it != linears.end(); ++it) {
      const std::string base = it.key();
      const json& l = it.value();
      LB_CHECK(l.is_object() && l.contains("dequant_dtype") && l.contains("rows") && l.contains("cols"),
               "'{}': layout of '{}' is incomplete: {}", file_->path(), base, l.dump());
      const DType dt = parse_dtype_name(l.at("dequant_dtype").get<std::string>(), file_->path());
      const int64_t rows = l.at("rows").get<int64_t>(), cols = l.at("cols").get<int64_t>();
      layouts_[base + ".weight"] = {base, l};
      infos_[base + ".weight"] = WeightInfo{dt, {rows, cols}, rows * cols * dtype_size(dt)};
      for (const auto& suffix : layout_tensor_suffixes(l)) owned.insert(base + "." + suffix);
    }
    // The tensors that make up the quantized linears; every other tensor passes through.
    for (const auto& e : file_->entries())
      if (!owned.count(e.name)) infos_[e.name] = WeightInfo{e.dtype, e.shape, int64_t(e.end - e.begin)};
  }
  Tensor get(const std::string& name) const override {
    if (layouts_.count(name)) return quantized(name).dequantize_as_stored();
    LB_CHECK(infos_.count(name), "quantized checkpoint '{}' has no tensor named '{}'", file_->path(), name);
    return file_->tensor(name);
  }
  std::vector<std::string> files() const override { return {file_->path()}; }
  bool is_quantized(const std::string& name) const override { return layouts_.count(name) > 0; }
  QuantizedLinear quantized(const std::string& name) const override {
    auto it = layouts_.find(name);
    LB_CHECK(it != layouts_.end(), "'{}' is not a quantized linear of '{}'", name, file_->path());
    const std::string& base = it->second.first;
    return read_linear([&](const std::string& suffix) { return file_->tensor(base + "." + suffix); },
                       it->second.second, file_->path() + ": " + base);
  }

 private:
  std::shared_ptr<const SafetensorsFile> file_;
  std::map<std::string, std::pair<std::string, json>> layouts_;  // weight name -> (base, layout)
};

}  // namespace

json linear_layout(const QuantizedLinear& q) {
  json tensors = json::array();
  for (const auto& [suffix, t] : linear_tensors(q)) tensors.push_back(suffix);
  return {{"format", q.format_name()}, {"format_version", q.format->version}, {"bits", q.bits},
          {"group_size", q.group_size}, {"flat_groups", q.flat_groups}, {"rows", q.rows}, {"cols", q.cols},
          {"dequant_dtype", std::string(dtype_name(q.dequant_dtype))},
          {"scale_storage_bits", q.scale_storage_bits}, {"zero_storage_bits", q.zero_storage_bits},
          {"bits_per_weight", q.bits_per_weight()}, {"params", q.params}, {"tensors", tensors}};
}

std::vector<std::pair<std::string, Tensor>> linear_tensors(const QuantizedLinear& q) {
  std::vector<std::pair<std::string, Tensor>> out;
  if (!q.codes.empty()) {
    const std::vector<uint8_t> packed = pack_codes(q.codes, q.rows, q.cols, q.bits);
    out.emplace_back("qcodes", tensor_from(packed, DType::U8, {q.rows, packed_row_bytes(q.cols, q.bits)}));
  }
  auto scale_shape = [&](size_t n) {
    const bool per_row = !q.flat_groups && q.group_size > 0 && int64_t(n) == q.rows * q.groups_per_row();
    return per_row ? std::vector<int64_t>{q.rows, q.groups_per_row()} : std::vector<int64_t>{int64_t(n)};
  };
  if (!q.scales.empty()) out.emplace_back("scales", tensor_from(q.scales, DType::F32, scale_shape(q.scales.size())));
  if (!q.zeros.empty()) out.emplace_back("zeros", tensor_from(q.zeros, DType::F32, scale_shape(q.zeros.size())));
  if (!q.g_idx.empty()) out.emplace_back("g_idx", tensor_from(q.g_idx, DType::I32, {q.cols}));
  if (!q.codebook.empty())
    out.emplace_back("codebook", tensor_from(q.codebook, DType::F32, {int64_t(q.codebook.size())}));
  for (const auto& [name, t] : q.extras) out.emplace_back("extra." + name, t);
  return out;
}

std::vector<std::string> layout_tensor_suffixes(const json& layout) {
  std::vector<std::string> out;
  if (layout.contains("tensors")) {
    LB_CHECK(layout["tensors"].is_array(), "layout 'tensors' is not a list: {}", layout.dump());
    for (const auto& s : layout["tensors"]) out.push_back(s.get<std::string>());
    return out;
  }
  // Version 1: fixed fields by format, g_idx flag, extras list.
  out = {"qcodes", "scales"};
  out.push_back(layout.value("format", std::string("int")) == "int" ? "zeros" : "codebook");
  if (layout.value("g_idx", false)) out.push_back("g_idx");
  for (const auto& x : layout.value("extras", json::array())) out.push_back("extra." + x.get<std::string>());
  return out;
}

QuantizedLinear read_linear(const std::function<Tensor(const std::string&)>& get, const json& layout,
                            const std::string& what) {
  auto field = [&](const char* key) -> const json& {
    LB_CHECK(layout.contains(key), "{}: layout lacks '{}'", what, key);
    return layout[key];
  };
  QuantizedLinear q;
  const QuantFormat& format = find_quant_format(field("format").get<std::string>());
  const int version = layout.value("format_version", 1);
  LB_CHECK(version >= 1 && version <= format.version, "{}: format '{}' version {} is newer than this lowbit reads ({})",
           what, format.name, version, format.version);
  q.format = &format;
  q.bits = field("bits").get<int>();
  q.group_size = field("group_size").get<int64_t>();
  q.flat_groups = field("flat_groups").get<bool>();
  q.rows = field("rows").get<int64_t>();
  q.cols = field("cols").get<int64_t>();
  q.dequant_dtype = parse_dtype_name(field("dequant_dtype").get<std::string>(), what);
  q.scale_storage_bits = field("scale_storage_bits").get<double>();
  q.zero_storage_bits = field("zero_storage_bits").get<double>();
  q.params = layout.value("params", json::object());
  LB_CHECK(q.bits >= 1 && q.bits <= 8 && q.rows > 0 && q.cols > 0, "{}: implausible layout {}", what, layout.dump());
  for (const std::string& suffix : layout_tensor_suffixes(layout)) {
    const Tensor t = get(suffix);
    const std::string tw = what + "." + suffix;
    if (suffix == "qcodes") {
      const int64_t rb = packed_row_bytes(q.cols, q.bits);
      LB_CHECK(t.dtype() == DType::U8 && t.numel() == q.rows * rb, "{}: expected U8 [{}, {}], found {} {}", tw, q.rows,
               rb, dtype_name(t.dtype()), t.shape_str());
      q.codes = unpack_codes(t.data_as<uint8_t>(), q.rows, q.cols, q.bits);
    } else if (suffix == "scales") {
      q.scales = vector_from<float>(t, DType::F32, tw);
    } else if (suffix == "zeros") {
      q.zeros = vector_from<float>(t, DType::F32, tw);
    } else if (suffix == "g_idx") {
      q.g_idx = vector_from<int32_t>(t, DType::I32, tw);
    } else if (suffix == "codebook") {
      q.codebook = vector_from<float>(t, DType::F32, tw);
    } else if (suffix.rfind("extra.", 0) == 0) {
      q.extras[suffix.substr(6)] = t;
    } else {
      fail("{}: unknown tensor '{}' in the layout", what, suffix);
    }
  }
  q.validate(what);
  return q;
}

json source_identity(const Checkpoint& ck) {
  return {{"path", ck.path}, {"format", ck.format}, {"sha256", weights_sha256(ck)},
          {"dtype", ck.config.torch_dtype}, {"parameters", ck.config.parameter_count()}};
}

json quantization_metadata(const QuantizedModel& qm, const json& source) {
  json linears = json::object(), rewritten = json::array();
  for (size_t i = 0; i < qm.blocks.size(); ++i)
    for (LinearKind k : kAllLinears)
      if (const auto& q = qm.blocks[i].linear[size_t(k)]) linears[linear_base_name(int64_t(i), k)] = linear_layout(*q);
  for (const auto& [name, t] : rewritten_tensors(qm)) rewritten.push_back(name);
  return {{"format_version", kQuantizedCheckpointVersion},
          {"method", qm.method},
          {"calibration", qm.calibration},
          {"activation", qm.activation},
          {"source", source},
          {"lowbit", {{"version", kVersion}, {"commit", kGitCommit}}},
          {"created", utc_now()},
          {"quantize_seconds", qm.seconds},
          {"linears", linears},
          {"modified", rewritten}};
}

std::string weights_sha256(const Checkpoint& ck) {
  Sha256 h;
  for (const auto& f : ck.weights->files()) {
    auto m = MappedFile::open(f);
    h.update(m->data(), m->size());
  }
  return h.hex_digest();
}

void write_source_side_files(const Checkpoint& ck, const fs::path& dir) {
  // config.json: the source's own when it has one, else one written from its hyper-parameters.
  const fs::path src_dir = fs::is_directory(ck.path) ? fs::path(ck.path) : fs::path(ck.path).parent_path();
  // A quantized LLaVA-Next checkpoint's config.json is the LLaVA model's; what is written here is
  // its language model alone, so its config is the text_config's.
  const bool multimodal = ck.quantization.is_object() && ck.quantization.contains("multimodal");
  if ((ck.format == "hf-safetensors" || ck.format == "lowbit-quantized") && !multimodal &&
      fs::exists(src_dir / "config.json"))
    fs::copy_file(src_dir / "config.json", dir / "config.json");
  else
    std::ofstream(dir / "config.json") << llama_config_to_json(ck.config);
  if (ck.format == "gguf") {
    // The GGUF's tokenizer as the tokenizer.json transformers builds from it (not the whole
    // .gguf again).
    const GgufTokenizerJson t = gguf_tokenizer_json(read_gguf_tokenizer_data(*GgufFile::open(ck.path)), ck.path);
    std::ofstream(dir / "tokenizer.json") << t.tokenizer_json;
    std::ofstream(dir / "tokenizer_config.json") << t.tokenizer_config_json;
  } else {
    for (const char* name : {"tokenizer.json", "tokenizer.model", "tokenizer_config.json",
                             "special_tokens_map.json", "generation_config.json"})
      if (fs::exists(src_dir / name)) fs::copy_file(src_dir / name, dir / name);
    if (!ck.tokenizer_path.empty() && !fs::exists(dir / fs::path(ck.tokenizer_path).filename()))
      fs::copy_file(ck.tokenizer_path, dir / fs::path(ck.tokenizer_path).filename());
  }
}

void write_quantized_checkpoint(const std::string& out_dir, const LlamaModel& source, const QuantizedModel& qm,
                                const json& extra, bool overwrite, const CheckpointAdditions* additions) {
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
    if (additions != nullptr && additions->side_files) additions->side_files(tmp);
    else write_source_side_files(ck, tmp);

    SafetensorsWriter w;
    for (int64_t i = 0; i < c.num_hidden_layers; ++i)
      for (LinearKind k : kAllLinears) {
        const auto& q = qm.blocks[size_t(i)].linear[size_t(k)];
        LB_CHECK(q.has_value(), "quantized model leaves layer {} {} unquantized", i, linear_name(k));
        const std::string base = linear_base_name(i, k);
        for (auto& [suffix, t] : linear_tensors(*q)) w.add(base + "." + suffix, t);
      }
    // Every other tensor: the method's rewrite or the source's.
    const auto rewritten = rewritten_tensors(qm);
    for (const auto& [name, shape] : expected_llama_tensors(c)) {
      const auto parsed = parse_hf_tensor_name(name);
      if (parsed && tensor_spec(parsed->first).linear) continue;
      auto it = rewritten.find(name);
      w.add(name, it != rewritten.end() ? *it->second : ck.weights->get(name));
    }
    if (additions != nullptr)
      for (const auto& [name, t] : additions->tensors) {
        const auto parsed = parse_hf_tensor_name(name);
        LB_CHECK(!parsed.has_value() && name.rfind("model.layers.", 0) != 0, "cannot write '{}': tensor '{}' beside the language model has one of its "
                 "names", out_dir, name);
        w.add(name, t);
      }
    json meta = quantization_metadata(qm, source_identity(ck));
    for (auto it = extra.begin(); it != extra.end(); ++it) meta[it.key()] = it.value();
    w.set_metadata("format", "pt");
    w.set_metadata(kQuantizationMetadataKey, meta.dump());
    w.write((tmp / "model.safetensors").string());
    if (fs::exists(out)) fs::remove_all(out);
    fs::rename(tmp, out);
  } catch (...) {
    std::error_code ec;
    fs::remove_all(tmp, ec);
    throw;
  }
}

QuantizedLinear quantized_linear_of(const Checkpoint& ck, const std::string& name) {
  auto* q = dynamic_cast<const QuantizedWeightSource*>(ck.weights.get());
  LB_CHECK(q != nullptr && q->is_quantized(name), "'{}' of model '{}' is not a quantized linear", name, ck.path);
  return q->quantized(name);
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
    auto it = file->metadata().find(kQuantizationMetadataKey);
    if (it != file->metadata().end()) {
      json meta = json::parse(it->second, nullptr, false);
      LB_CHECK(!meta.is_discarded() && meta.is_object() && meta.contains("linears") && meta["linears"].is_object(),
               "'{}': metadata '{}' is not a valid quantization header", st.string(), kQuantizationMetadataKey);
      const int version = meta.value("format_version", 0);
      LB_CHECK(version >= 1 && version <= kQuantizedCheckpointVersion,
               "'{}': quantized checkpoint format version {} is not supported (1..{})", st.string(), version,
               kQuantizedCheckpointVersion);
      Checkpoint ck;
      ck.path = path;
      ck.format = "lowbit-quantized";
      const std::string cfg = (st.parent_path() / "config.json").string();
      const json cfg_json = json::parse(slurp_text(cfg), nullptr, false);
      if (is_llava_next_config(cfg_json)) {
        // The LLM part of a quantized LLaVA-Next checkpoint (quant/llava_next_quantized.h).
        LB_CHECK(meta.contains("multimodal"), "'{}': config.json describes a LLaVA-Next model, but the quantized "
                 "checkpoint's metadata has no 'multimodal' record (its vision tensors are not described)", path);
        ck.config = llava_next_text_config(cfg_json, cfg);
      } else {
        ck.config = load_llama_config(cfg);
      }
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
