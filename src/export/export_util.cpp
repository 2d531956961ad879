#include "export/export_util.h"

#include "core/error.h"
#include "formats/llama_tensors.h"
#include "formats/llava_next_checkpoint.h"

#include <cmath>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>

namespace lowbit {

namespace fs = std::filesystem;
using json = nlohmann::json;

std::string int_grid_problem(const QuantizedLinear& q) {
  if (std::string(q.format_name()) != "int") return fmt::format("format '{}' is not an affine int grid", q.format_name());
  if (q.flat_groups) return "its groups run across rows (flat groups)";
  if (q.group_size < q.cols && q.cols % q.group_size != 0)
    return fmt::format("group size {} does not divide {} columns", q.group_size, q.cols);
  const float maxq = float((1 << q.bits) - 1);
  for (float z : q.zeros)
    if (z != std::nearbyint(z) || z < 0.0f || z > maxq)
      return fmt::format("zero-point {} is not an integer in [0, {}]", z, maxq);
  return "";
}

bool is_symmetric(const QuantizedLinear& q) {
  const float mid = float(1 << (q.bits - 1));
  for (float z : q.zeros)
    if (z != mid) return false;
  return true;
}

IntScheme int_scheme(const QuantizedLinear& q) {
  IntScheme s;
  s.bits = q.bits;
  s.per_row = q.group_size >= q.cols;
  s.group_size = s.per_row ? q.cols : q.group_size;
  s.sym = is_symmetric(q);
  s.act_order = !q.g_idx.empty();
  return s;
}

IntScheme common_int_scheme(const ExportSource& src, const char* format) {
  IntScheme first;
  std::string first_name;
  for (const std::string& name : src.linear_names) {
    if (std::find(src.dense_linears.begin(), src.dense_linears.end(), name) != src.dense_linears.end()) continue;
    const IntScheme s = int_scheme(src.weights->quantized(name));
    if (first_name.empty()) {
      first = s;
      first_name = name;
      continue;
    }
    // Per-row groups of differently sized linears are one scheme (GPTQ's group_size -1).
    const bool same_groups = first.per_row ? s.per_row : (!s.per_row && s.group_size == first.group_size);
    LB_CHECK(s.bits == first.bits && same_groups && s.sym == first.sym && s.act_order == first.act_order,
             "{} holds one quantization scheme per model: '{}' has {} bits, groups of {}, {}{} but '{}' has {} bits, "
             "groups of {}, {}{} (compressed-tensors and gguf hold a scheme per linear)",
             format, first_name, first.bits, first.group_size, first.sym ? "symmetric" : "asymmetric",
             first.act_order ? ", act-order" : "", name, s.bits, s.group_size, s.sym ? "symmetric" : "asymmetric",
             s.act_order ? ", act-order" : "");
  }
  LB_CHECK(!first_name.empty(), "{}: the model has no quantized linear to export", format);
  return first;
}

QuantizedLinear with_scales_in(const QuantizedLinear& q, DType dtype) {
  QuantizedLinear h = q;
  for (float& s : h.scales) s = round_to_dtype(s, dtype);
  return h;
}

void record_difference(const QuantizedLinear& q, const float* held, const std::string& name, ExportSummary& s) {
  const Tensor a = q.dequantize_f32();
  const float* pa = a.data_as<float>();
  double worst = 0.0;
  for (int64_t i = 0; i < a.numel(); ++i)
    worst = std::max(worst, double(std::fabs(pa[i] - round_to_dtype(held[i], q.dequant_dtype))));
  if (worst > s.max_abs_diff || s.max_diff_tensor.empty()) {
    s.max_abs_diff = worst;
    s.max_diff_tensor = name;
  }
}

void record_difference(const QuantizedLinear& q, const QuantizedLinear& held, const std::string& name,
                       ExportSummary& s) {
  QuantizedLinear h = held;
  h.dequant_dtype = DType::F32;
  record_difference(q, h.dequantize_f32().data_as<float>(), name, s);
}

DType parse_export_dtype(const std::string& text, const std::string& option) {
  if (text == "f16" || text == "float16" || text == "F16") return DType::F16;
  if (text == "bf16" || text == "bfloat16" || text == "BF16") return DType::BF16;
  if (text == "f32" || text == "float32" || text == "F32") return DType::F32;
  fail("{}: unknown type '{}' (expected f16, bf16 or f32)", option, text);
}

DType dense_dtype(const ExportSource& src, const ExportOptions& o, const std::string& fallback) {
  if (!o.dtype.empty()) return parse_export_dtype(o.dtype, "--dtype");
  if (!fallback.empty()) return parse_export_dtype(fallback, "--dtype");
  const std::string& t = src.ck.config.torch_dtype;
  return t.empty() ? DType::F32 : parse_export_dtype(t, "config.json torch_dtype");
}

const char* torch_dtype_name(DType t) {
  switch (t) {
    case DType::F16: return "float16";
    case DType::BF16: return "bfloat16";
    default: return "float32";
  }
}

Tensor convert_tensor(const Tensor& t, DType dtype) {
  if (t.dtype() == dtype) return t;
  std::vector<float> f(size_t(t.numel()));
  convert_to_f32(t.dtype(), t.data(), f.data(), t.numel());
  Tensor out = Tensor::empty(dtype, t.shape());
  if (dtype == DType::F32) {
    std::memcpy(out.mutable_data(), f.data(), f.size() * 4);
  } else {
    LB_CHECK(dtype == DType::F16 || dtype == DType::BF16, "cannot convert a tensor to {}", dtype_name(dtype));
    uint16_t* d = out.mutable_data_as<uint16_t>();
    for (size_t i = 0; i < f.size(); ++i) d[i] = dtype == DType::F16 ? f32_to_f16(f[i]) : f32_to_bf16(f[i]);
  }
  return out;
}

Tensor f16_tensor(const std::vector<float>& v, std::vector<int64_t> shape) {
  Tensor t = Tensor::empty(DType::F16, std::move(shape));
  LB_ASSERT(t.numel() == int64_t(v.size()));
  uint16_t* d = t.mutable_data_as<uint16_t>();
  for (size_t i = 0; i < v.size(); ++i) d[i] = f32_to_f16(v[i]);
  return t;
}

Tensor i32_tensor(const std::vector<int32_t>& v, std::vector<int64_t> shape) {
  Tensor t = Tensor::empty(DType::I32, std::move(shape));
  LB_ASSERT(t.numel() == int64_t(v.size()));
  if (!v.empty()) std::memcpy(t.mutable_data(), v.data(), v.size() * 4);
  return t;
}

std::vector<std::string> dense_tensor_names(const ExportSource& src) {
  std::vector<std::string> out;
  for (const auto& [name, shape] : expected_llama_tensors(src.ck.config))
    if (src.weights == nullptr || !src.weights->is_quantized(name)) out.push_back(name);
  return out;
}

void write_hf_side_files(const ExportSource& src, const fs::path& tmp, DType dtype, const json& quantization_config) {
  const fs::path cfg_path = src.dir / "config.json";
  std::ifstream in(cfg_path);
  LB_CHECK(in.good(), "cannot read '{}'", cfg_path.string());
  std::stringstream ss;
  ss << in.rdbuf();
  json cfg = json::parse(ss.str(), nullptr, false);
  LB_CHECK(!cfg.is_discarded() && cfg.is_object(), "'{}' is not a JSON object", cfg_path.string());
  // A LLaVA-Next model (16-bit, or quantized by lowbit) is exported as its language model: the
  // written tensors are the LLM's, under LLaMA's names, so the config is the text_config's.
  if (is_llava_next_config(cfg)) cfg = json::parse(llama_config_to_json(src.ck.config));
  // transformers 5 writes "dtype", earlier versions "torch_dtype"; both must name the written type.
  cfg["torch_dtype"] = torch_dtype_name(dtype);
  if (cfg.contains("dtype")) cfg["dtype"] = torch_dtype_name(dtype);
  if (quantization_config.is_null())
    cfg.erase("quantization_config");
  else
    cfg["quantization_config"] = quantization_config;
  std::ofstream(tmp / "config.json") << cfg.dump(2) << "\n";
  for (const char* name : {"tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                           "generation_config.json"})
    if (fs::exists(src.dir / name)) fs::copy_file(src.dir / name, tmp / name);
}

}  // namespace lowbit
