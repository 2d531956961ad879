// Export row "compressed-tensors": the "pack-quantized" format of neuralmagic's compressed-tensors
// (what llm-compressor writes, vLLM serves and transformers loads). For every quantized linear
// "<base>" with weight W [out = rows, in = cols], G groups per row, b bits (1..8):
//
//   <base>.weight_packed      I32 [out, ceil(in * b / 32)]  codes, each row packed densely
//                                                           (int32_packing.h); the stored value
//                                                           is the signed code + 2^(b-1), which
//                                                           is lowbit's unsigned code
//   <base>.weight_scale       F32 (or F16/BF16) [out, G]
//   <base>.weight_zero_point  I32 [ceil(out * b / 32), G]   asymmetric only: zero-points, each
//                                                           column packed densely along the
//                                                           output dimension (value = zero)
//   <base>.weight_shape       I64 [2] = {out, in}
//   <base>.weight_g_idx       I32 [in]                      act-order only (actorder "group")
//
// compressed-tensors computes w = (q_signed - zp_signed) * scale = (code - zero) * scale in the
// scale's type: with fp32 scales (the default) that is lowbit's int format exactly. Linears are
// gathered into config groups by scheme (bits, strategy group/channel, symmetric, actorder);
// linears written dense (--dequantize) and lm_head are in `ignore`.
#include "core/error.h"
#include "export/export_util.h"
#include "export/int32_packing.h"
#include "formats/safetensors.h"

#include <map>
#include <tuple>

namespace lowbit {

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

// The layout the packing follows (dense cross-word packing for every bit width).
constexpr const char* kCompressedTensorsVersion = "0.20.1";

std::string cannot_hold(const QuantizedLinear& q, const ExportOptions&) { return int_grid_problem(q); }

std::string module_name(const std::string& weight_name) {
  return weight_name.substr(0, weight_name.size() - std::string(".weight").size());
}

json scheme_weights(const IntScheme& s) {
  return {{"num_bits", s.bits},
          {"type", "int"},
          {"symmetric", s.sym},
          {"strategy", s.per_row ? "channel" : "group"},
          {"group_size", s.per_row ? json(nullptr) : json(s.group_size)},
          {"dynamic", false},
          {"actorder", s.act_order ? json("group") : json(nullptr)},
          {"block_structure", nullptr},
          {"observer", "minmax"},
          {"observer_kwargs", json::object()}};
}

void write(const ExportSource& src, const ExportOptions& o, const fs::path& tmp, ExportSummary& summary) {
  const DType dtype = dense_dtype(src, o, "");
  const DType scale_dtype = o.scale_dtype.empty() ? DType::F32 : parse_export_dtype(o.scale_dtype, "--scale-dtype");
  SafetensorsWriter w;
  // Scheme -> module names; the key orders groups deterministically.
  std::map<std::tuple<int, int64_t, bool, bool, bool>, std::pair<IntScheme, std::vector<std::string>>> groups;
  json ignore = json::array();
  for (const std::string& name : src.linear_names) {
    const QuantizedLinear q = src.weights->quantized(name);
    const std::string base = module_name(name);
    if (std::find(src.dense_linears.begin(), src.dense_linears.end(), name) != src.dense_linears.end()) {
      w.add(name, convert_tensor(q.dequantize_f32(), dtype));
      ignore.push_back(base);
      continue;
    }
    const IntScheme s = int_scheme(q);
    auto& entry = groups[{s.bits, s.per_row ? 0 : s.group_size, s.per_row, s.sym, s.act_order}];
    entry.first = s;
    entry.second.push_back(base);

    const int64_t ngroups = q.groups_per_row();
    std::vector<uint32_t> codes(q.codes.begin(), q.codes.end());
    const int64_t words = (q.cols * q.bits + 31) / 32;
    w.add(base + ".weight_packed", i32_tensor(pack_dense_rows(codes, q.rows, q.cols, q.bits), {q.rows, words}));
    Tensor scale = Tensor::empty(DType::F32, {q.rows, ngroups});
    std::copy(q.scales.begin(), q.scales.end(), scale.mutable_data_as<float>());
    w.add(base + ".weight_scale", convert_tensor(scale, scale_dtype));
    if (!s.sym) {
      // [out, G] packed along out: pack the transpose's rows, then transpose back.
      std::vector<uint32_t> zt(size_t(ngroups * q.rows));
      for (int64_t r = 0; r < q.rows; ++r)
        for (int64_t g = 0; g < ngroups; ++g) zt[size_t(g * q.rows + r)] = uint32_t(zero_code(q, r * ngroups + g));
      const int64_t zwords = (q.rows * q.bits + 31) / 32;
      w.add(base + ".weight_zero_point",
            i32_tensor(transpose(pack_dense_rows(zt, ngroups, q.rows, q.bits), ngroups, zwords), {zwords, ngroups}));
    }
    Tensor shape = Tensor::empty(DType::I64, {2});
    shape.mutable_data_as<int64_t>()[0] = q.rows;
    shape.mutable_data_as<int64_t>()[1] = q.cols;
    w.add(base + ".weight_shape", shape);
    if (s.act_order) w.add(base + ".weight_g_idx", i32_tensor(q.g_idx, {q.cols}));
    record_difference(q, with_scales_in(q, scale_dtype), name, summary);
  }
  for (const std::string& name : dense_tensor_names(src)) w.add(name, convert_tensor(src.ck.weights->get(name), dtype));
  w.set_metadata("format", "pt");
  w.write((tmp / "model.safetensors").string());

  LB_CHECK(!groups.empty() || !ignore.empty(), "compressed-tensors: the model has no quantized linear to export");
  json config_groups = json::object();
  int index = 0;
  for (const auto& [key, entry] : groups) {
    json targets = groups.size() == 1 ? json::array({"Linear"}) : json(entry.second);
    config_groups[fmt::format("group_{}", index++)] = {{"targets", targets},
                                                       {"weights", scheme_weights(entry.first)},
                                                       {"input_activations", nullptr},
                                                       {"output_activations", nullptr},
                                                       {"format", "pack-quantized"}};
    summary.notes.push_back(fmt::format("group_{}: {} linears, {}-bit, {}, {}{}", index - 1, entry.second.size(),
                                        entry.first.bits,
                                        entry.first.per_row ? std::string("per channel")
                                                            : fmt::format("group size {}", entry.first.group_size),
                                        entry.first.sym ? "symmetric" : "asymmetric",
                                        entry.first.act_order ? ", actorder group" : ""));
  }
  ignore.push_back("lm_head");
  const json qc = {{"quant_method", "compressed-tensors"},
                   {"format", "pack-quantized"},
                   {"quantization_status", "compressed"},
                   {"config_groups", config_groups},
                   {"ignore", ignore},
                   {"kv_cache_scheme", nullptr},
                   {"global_compression_ratio", nullptr},
                   {"version", kCompressedTensorsVersion}};
  write_hf_side_files(src, tmp, dtype, qc);
  summary.notes.push_back(fmt::format("scales in {}, dense tensors {}", dtype_name(scale_dtype), dtype_name(dtype)));
}

}  // namespace

const ExportFormat kCompressedTensorsExport = {
    "compressed-tensors", "compressed-tensors pack-quantized: dense int32 packing, 1-8 bits, groups/channel, actorder",
    false, true, cannot_hold, write};

}  // namespace lowbit
