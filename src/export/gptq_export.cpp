// Export row "gptq": the checkpoint layout of AutoGPTQ and GPTQModel, which transformers loads
// (through GPTQModel) and vLLM serves. For every quantized linear "<base>" with weight
// W [out = rows, in = cols], G = cols / group_size groups (1 for one group per row), b bits:
//
//   <base>.qweight  I32 [in * b / 32, out]  column j of W^T's codes, packed densely along the
//                                           input dimension (int32_packing.h): word (i, j) holds
//                                           codes W[j, 32i/b ...]; 3-bit values straddle words
//   <base>.qzeros   I32 [G, out * b / 32]   zero-points, packed densely along the output
//                                           dimension; v1 ("gptq") stores zero - 1, v2
//                                           ("gptq_v2") the zero-point itself
//   <base>.scales   F16 [G, out]
//   <base>.g_idx    I32 [in]                group of each input column (act-order permutation,
//                                           or c / group_size)
//
// A consumer computes w[j, c] = scales[g_idx[c], j] * (code - zero[g_idx[c], j]), the formula of
// lowbit's int format, with the scale rounded to fp16. quantize_config.json and config.json's
// quantization_config carry bits, group_size (-1 for one group per row), desc_act, sym and the
// checkpoint_format.
#include "core/error.h"
#include "export/export_util.h"
#include "export/int32_packing.h"
#include "formats/safetensors.h"
#include "core/version.h"

#include <fstream>

namespace lowbit {

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

std::string cannot_hold(const QuantizedLinear& q, const ExportOptions& o) {
  if (std::string why = int_grid_problem(q); !why.empty()) return why;
  if (q.bits != 2 && q.bits != 3 && q.bits != 4 && q.bits != 8)
    return fmt::format("GPTQ packs 2, 3, 4 or 8 bits, not {}", q.bits);
  if ((q.cols * q.bits) % 32 != 0 || (q.rows * q.bits) % 32 != 0)
    return fmt::format("[{}, {}] codes of {} bits do not fill whole int32 words along both dimensions", q.rows,
                       q.cols, q.bits);
  if (o.gptq_format == "v1")
    for (float z : q.zeros)
      if (z == 0.0f) return "a zero-point is 0, which the v1 layout (zero - 1) cannot store; --gptq-format v2 can";
  return "";
}

void write(const ExportSource& src, const ExportOptions& o, const fs::path& tmp, ExportSummary& summary) {
  LB_CHECK(o.gptq_format == "v1" || o.gptq_format == "v2", "--gptq-format: '{}' is neither v1 nor v2", o.gptq_format);
  const IntScheme scheme = common_int_scheme(src, "gptq");
  const DType dtype = dense_dtype(src, o, "f16");
  const int32_t zero_offset = o.gptq_format == "v1" ? 1 : 0;
  SafetensorsWriter w;
  for (const std::string& name : src.linear_names) {
    const QuantizedLinear q = src.weights->quantized(name);
    const std::string base = name.substr(0, name.size() - std::string(".weight").size());
    const int64_t groups = q.groups_per_row();
    std::vector<uint32_t> codes(q.codes.begin(), q.codes.end());
    const std::vector<int32_t> packed = pack_dense_rows(codes, q.rows, q.cols, q.bits);
    const int64_t in_words = q.cols * q.bits / 32;
    w.add(base + ".qweight", i32_tensor(transpose(packed, q.rows, in_words), {in_words, q.rows}));
    // Zero-points and scales transposed to [G, out].
    std::vector<uint32_t> zeros(size_t(groups * q.rows));
    std::vector<float> scales(size_t(groups * q.rows));
    for (int64_t r = 0; r < q.rows; ++r)
      for (int64_t g = 0; g < groups; ++g) {
        const int64_t s = r * groups + g;
        zeros[size_t(g * q.rows + r)] = uint32_t(zero_code(q, s) - zero_offset);
        scales[size_t(g * q.rows + r)] = q.scales[size_t(s)];
      }
    w.add(base + ".qzeros", i32_tensor(pack_dense_rows(zeros, groups, q.rows, q.bits), {groups, q.rows * q.bits / 32}));
    w.add(base + ".scales", f16_tensor(scales, {groups, q.rows}));
    std::vector<int32_t> g_idx = q.g_idx;
    if (g_idx.empty())
      for (int64_t c = 0; c < q.cols; ++c) g_idx.push_back(int32_t(c / q.group_size));
    w.add(base + ".g_idx", i32_tensor(g_idx, {q.cols}));
    record_difference(q, with_scales_in(q, DType::F16), name, summary);
  }
  for (const std::string& name : dense_tensor_names(src)) w.add(name, convert_tensor(src.ck.weights->get(name), dtype));
  w.set_metadata("format", "pt");
  w.write((tmp / "model.safetensors").string());

  const json method = src.ck.quantization.value("method", json::object());
  json qc = {{"quant_method", "gptq"},
             {"bits", scheme.bits},
             {"group_size", scheme.per_row ? -1 : scheme.group_size},
             {"desc_act", scheme.act_order},
             {"sym", scheme.sym},
             {"static_groups", false},
             {"true_sequential", true},
             {"lm_head", false},
             {"checkpoint_format", o.gptq_format == "v1" ? "gptq" : "gptq_v2"},
             {"meta", {{"quantizer", json::array({fmt::format("lowbit:{}", kVersion)})},
                       {"lowbit_method", method}}}};
  std::ofstream(tmp / "quantize_config.json") << qc.dump(2) << "\n";
  write_hf_side_files(src, tmp, dtype, qc);
  summary.notes.push_back(fmt::format("{}-bit, group size {}, {}{}; scales in fp16; qzeros as {}; dense tensors {}",
                                      scheme.bits, scheme.per_row ? -1 : scheme.group_size,
                                      scheme.sym ? "symmetric" : "asymmetric", scheme.act_order ? ", act-order" : "",
                                      o.gptq_format == "v1" ? "zero - 1 (v1)" : "zero (v2)", dtype_name(dtype)));
}

}  // namespace

const ExportFormat kGptqExport = {"gptq", "AutoGPTQ/GPTQModel: int32 qweight, qzeros, fp16 scales, g_idx (2/3/4/8 bits)",
                                  false, false, cannot_hold, write};

}  // namespace lowbit
