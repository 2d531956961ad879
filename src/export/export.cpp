#include "export/export.h"

#include "core/error.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <unistd.h>

#include <algorithm>
#include <array>

namespace lowbit {

namespace fs = std::filesystem;

namespace {

// The rows. A new format defines its row in its own file and adds it here.
constexpr std::array<const ExportFormat*, 5> kExportFormats = {&kGptqExport, &kAwqExport, &kCompressedTensorsExport,
                                                               &kGgufExport, &kHfExport};

// The names of the formats that hold `q` as it is.
std::vector<std::string> formats_holding(const QuantizedLinear& q, const ExportOptions& o) {
  std::vector<std::string> out;
  for (const ExportFormat* f : kExportFormats)
    if (f != &kHfExport && f->cannot_hold(q, o).empty()) out.emplace_back(f->name);
  return out;
}

}  // namespace

std::span<const ExportFormat* const> export_formats() { return kExportFormats; }

const ExportFormat& find_export_format(std::string_view name) {
  for (const ExportFormat* f : kExportFormats)
    if (name == f->name) return *f;
  std::vector<std::string> known;
  for (const ExportFormat* f : kExportFormats) known.emplace_back(f->name);
  fail("--format: unknown export format '{}' (known: {})", name, fmt::join(known, ", "));
}

ExportSummary export_model(const std::string& quantized_dir, const ExportOptions& o) {
  const ExportFormat& format = find_export_format(o.format);
  LB_CHECK(!o.out.empty(), "export: no output path (-o)");
  LB_CHECK(fs::exists(quantized_dir), "export: '{}' does not exist", quantized_dir);
  const fs::path out(o.out);
  LB_CHECK(!fs::exists(out) && !fs::is_symlink(out), "export: output '{}' exists; remove it or choose another path",
           o.out);
  const fs::path parent = out.has_parent_path() ? out.parent_path() : fs::path(".");
  LB_CHECK(fs::is_directory(parent), "export: cannot write '{}': directory '{}' does not exist", o.out,
           parent.string());

  ExportSource src;
  src.ck = open_model(quantized_dir);
  // A model that is not quantized (a GGUF file, a llama2.c checkpoint, a safetensors directory)
  // has only the dense form: hf writes it as lowbit reads it, e.g. a GGUF's dequantized weights.
  LB_CHECK(src.ck.format == "lowbit-quantized" || &format == &kHfExport,
           "export: '{}' is not a lowbit quantized checkpoint (it reads as {}; `lowbit quantize` writes one); only "
           "--format hf writes a model that is not quantized",
           quantized_dir, src.ck.format);
  src.weights = dynamic_cast<const QuantizedWeightSource*>(src.ck.weights.get());
  LB_ASSERT(src.weights != nullptr || src.ck.format != "lowbit-quantized");
  src.dir = fs::is_directory(quantized_dir) ? fs::path(quantized_dir) : fs::path(quantized_dir).parent_path();
  const nlohmann::json activation = src.ck.quantization.is_object()
                                        ? src.ck.quantization.value("activation", nlohmann::json(nullptr))
                                        : nlohmann::json(nullptr);
  LB_CHECK(activation.is_null() || activation.empty() || activation.value("bits", 16) >= 16,
           "export: '{}' quantizes activations ({}); the export formats hold weight quantization only, and the "
           "model's accuracy depends on its activation quantization",
           quantized_dir, activation.dump());

  // Which linears the format holds; the others are refused, or written dense when asked.
  if (src.weights != nullptr)
    for (const std::string& name : src.weights->names())
      if (src.weights->is_quantized(name)) src.linear_names.push_back(name);
  for (const std::string& name : src.linear_names) {
    const QuantizedLinear q = src.weights->quantized(name);
    const std::string why = format.cannot_hold(q, o);
    if (why.empty()) continue;
    const std::vector<std::string> holders = formats_holding(q, o);
    const std::string others = holders.empty() ? std::string("none of the export formats holds it")
                                               : fmt::format("formats that hold it: {}", fmt::join(holders, ", "));
    LB_CHECK(o.dequantize,
             "export: format {} cannot hold '{}' ({} layout, {} bits, group size {}): {}; {}; or pass --dequantize to "
             "write such linears as dense weights{} (or --format hf for a dense model)",
             format.name, name, q.format_name(), q.bits, q.group_size, why, others,
             format.can_dequantize ? "" : " (in compressed-tensors or gguf)");
    LB_CHECK(format.can_dequantize,
             "export: format {} cannot hold '{}' ({}) and has no place for dense linears; export it as "
             "compressed-tensors or gguf with --dequantize",
             format.name, name, why);
    src.dense_linears.push_back(name);
  }

  ExportSummary summary;
  summary.format = format.name;
  summary.out = o.out;
  const fs::path tmp = parent / fmt::format(".{}.partial-{}", out.filename().string(), ::getpid());
  std::error_code ec;
  fs::remove_all(tmp, ec);
  if (!format.single_file) fs::create_directories(tmp);
  try {
    format.write(src, o, tmp, summary);
    LB_CHECK(!fs::exists(out), "export: output '{}' appeared while exporting", o.out);
    fs::rename(tmp, out);
  } catch (...) {
    fs::remove_all(tmp, ec);
    throw;
  }
  summary.linears_dense = int64_t(src.dense_linears.size());
  summary.linears_packed = int64_t(src.linear_names.size()) - summary.linears_dense;
  return summary;
}

}  // namespace lowbit
