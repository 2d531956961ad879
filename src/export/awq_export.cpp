// Export row "awq": AutoAWQ's GEMM checkpoint layout (version "gemm"), which transformers and
// vLLM load. For every quantized linear "<base>" with weight W [out = rows, in = cols], G =
// cols / group_size groups, 4 bits:
//
//   <base>.qweight  I32 [in, out / 8]  W^T's codes, each row packed along the output dimension in
//                                      AWQ's interleaved order {0, 2, 4, 6, 1, 3, 5, 7}
//                                      (int32_packing.h)
//   <base>.qzeros   I32 [G, out / 8]   zero-points [G, out], packed the same way (no offset)
//   <base>.scales   F16 [G, out]
//
// A consumer computes w[j, c] = scales[c / group_size, j] * (code - zero[c / group_size, j]):
// lowbit's int format with the scale rounded to fp16. AWQ has no act-order map, so linears with
// a g_idx are refused (gptq and compressed-tensors hold them). config.json's quantization_config:
// quant_method awq, bits 4, group_size (-1 for one group per row), zero_point true, version gemm.
#include "core/error.h"
#include "export/export_util.h"
#include "export/int32_packing.h"
#include "formats/safetensors.h"

namespace lowbit {

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

std::string cannot_hold(const QuantizedLinear& q, const ExportOptions&) {
  if (std::string why = int_grid_problem(q); !why.empty()) return why;
  if (q.bits != 4) return fmt::format("AWQ's GEMM layout packs 4 bits, not {}", q.bits);
  if (!q.g_idx.empty()) return "it has an act-order group map (g_idx), which AWQ's layout lacks";
  if (q.rows % 8 != 0) return fmt::format("{} output rows are not a multiple of 8", q.rows);
  return "";
}

void write(const ExportSource& src, const ExportOptions& o, const fs::path& tmp, ExportSummary& summary) {
  const IntScheme scheme = common_int_scheme(src, "awq");
  const DType dtype = dense_dtype(src, o, "f16");
  SafetensorsWriter w;
  for (const std::string& name : src.linear_names) {
    const QuantizedLinear q = src.weights->quantized(name);
    const std::string base = name.substr(0, name.size() - std::string(".weight").size());
    const int64_t groups = q.groups_per_row();
    const std::vector<uint8_t> codes_t = transpose(q.codes, q.rows, q.cols);  // [in, out]
    w.add(base + ".qweight", i32_tensor(pack_awq_rows(std::vector<uint32_t>(codes_t.begin(), codes_t.end()), q.cols,
                                                      q.rows),
                                        {q.cols, q.rows / 8}));
    std::vector<uint32_t> zeros(size_t(groups * q.rows));
    std::vector<float> scales(size_t(groups * q.rows));
    for (int64_t r = 0; r < q.rows; ++r)
      for (int64_t g = 0; g < groups; ++g) {
        const int64_t s = r * groups + g;
        zeros[size_t(g * q.rows + r)] = uint32_t(zero_code(q, s));
        scales[size_t(g * q.rows + r)] = q.scales[size_t(s)];
      }
    w.add(base + ".qzeros", i32_tensor(pack_awq_rows(zeros, groups, q.rows), {groups, q.rows / 8}));
    w.add(base + ".scales", f16_tensor(scales, {groups, q.rows}));
    record_difference(q, with_scales_in(q, DType::F16), name, summary);
  }
  for (const std::string& name : dense_tensor_names(src)) w.add(name, convert_tensor(src.ck.weights->get(name), dtype));
  w.set_metadata("format", "pt");
  w.write((tmp / "model.safetensors").string());
  const json qc = {{"quant_method", "awq"},
                   {"bits", 4},
                   {"group_size", scheme.per_row ? -1 : scheme.group_size},
                   {"zero_point", true},
                   {"version", "gemm"},
                   {"modules_to_not_convert", nullptr}};
  write_hf_side_files(src, tmp, dtype, qc);
  summary.notes.push_back(fmt::format("4-bit, group size {}, {}; scales in fp16; dense tensors {}",
                                      scheme.per_row ? -1 : scheme.group_size,
                                      scheme.sym ? "symmetric grid stored with zero-points 8" : "asymmetric",
                                      dtype_name(dtype)));
}

}  // namespace

const ExportFormat kAwqExport = {"awq", "AutoAWQ GEMM: int32 qweight/qzeros in AWQ's interleaved order, fp16 scales (4 bits)",
                                 false, false, cannot_hold, write};

}  // namespace lowbit
