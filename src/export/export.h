// Export of a lowbit quantized checkpoint (quant/lowbit_checkpoint.h) to the formats inference
// engines load: `lowbit export QUANTIZED_DIR --format F -o OUT`.
//
// Every format is one row of a table (one file per format under src/export/, in the manner of
// the quantized-linear formats of quant/quant_format.h): its name, whether it can hold a given
// quantized linear as it is (same codes, same zero-points, same groups), and a writer. Adding a
// format is adding its file and one line in kExportFormats (export.cpp).
//
// The driver (export_model) opens the checkpoint, asks the row about every quantized linear,
// refuses with a message naming the formats that can hold a linear the chosen one cannot (unless
// --dequantize, which writes such linears as dense 16-bit weights where the format allows it),
// and writes everything into a temporary path beside OUT that is renamed into place only when
// complete: an error leaves nothing behind, and OUT must not exist.
//
// What is exact: the codes, zero-points and group maps are written unchanged. The scales are
// stored in the type the format prescribes (fp16 for GPTQ, AWQ and ggml blocks; fp32 or the
// model's 16-bit type for compressed-tensors); where that rounds a scale the exported weights
// differ from lowbit's fake-quant weights by the rounding, and the export reports the largest
// difference (ExportSummary::max_abs_diff).
#pragma once

#include "formats/checkpoint.h"
#include "quant/lowbit_checkpoint.h"

#include <nlohmann/json.hpp>

#include <filesystem>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace lowbit {

struct ExportOptions {
  std::string format;       // a row name: gptq, awq, compressed-tensors, gguf, hf
  std::string out;          // output directory (a file for gguf)
  bool dequantize = false;  // linears the format cannot hold are written as dense weights
  // Type of the tensors written dense (embeddings, norms, dequantized linears): "f16", "bf16",
  // "f32", or "" for the format's default (the source model's dtype; f16 for gptq and awq,
  // whose kernels compute in fp16).
  std::string dtype;
  // compressed-tensors: type of weight_scale, "f32" (default, exact) or "f16"/"bf16".
  std::string scale_dtype;
  // gptq: "v1" (AutoGPTQ's checkpoint_format "gptq": qzeros store zero - 1) or "v2"
  // (GPTQModel's "gptq_v2": qzeros store the zero-point itself).
  std::string gptq_format = "v1";
};

// A quantized checkpoint as the writers read it.
struct ExportSource {
  Checkpoint ck;
  const QuantizedWeightSource* weights = nullptr;
  std::filesystem::path dir;               // the checkpoint's directory (config, tokenizer)
  std::vector<std::string> linear_names;   // weight names of the quantized linears, sorted
  std::vector<std::string> dense_linears;  // those written dense (--dequantize)
};

struct ExportSummary {
  std::string format, out;
  int64_t linears_packed = 0, linears_dense = 0;
  // Largest |exported - fake-quant| over the packed linears' weights, in the model's 16-bit
  // type (0 when every scale is representable in the stored type), and where it occurs.
  double max_abs_diff = 0.0;
  std::string max_diff_tensor;
  std::vector<std::string> notes;  // per-format remarks (types chosen, conventions)
};

struct ExportFormat {
  const char* name;
  const char* summary;  // one line for --help
  bool single_file;     // OUT is a file (gguf) instead of a directory
  bool can_dequantize;  // whether --dequantize can write a linear dense in this format
  // Empty when the format holds `q` exactly as codes; otherwise why not (one phrase).
  std::string (*cannot_hold)(const QuantizedLinear& q, const ExportOptions& o);
  // Writes the export of `src` at `tmp` (a fresh directory, or a file path for single_file).
  void (*write)(const ExportSource& src, const ExportOptions& o, const std::filesystem::path& tmp,
                ExportSummary& summary);
};

std::span<const ExportFormat* const> export_formats();
// The row named `name`; throws lowbit::Error naming the known formats.
const ExportFormat& find_export_format(std::string_view name);

// Exports the quantized checkpoint at `quantized_dir` as o.format to o.out (see above).
ExportSummary export_model(const std::string& quantized_dir, const ExportOptions& o);

// The rows, defined in src/export/*_export.cpp.
extern const ExportFormat kGptqExport;
extern const ExportFormat kAwqExport;
extern const ExportFormat kCompressedTensorsExport;
extern const ExportFormat kGgufExport;
extern const ExportFormat kHfExport;

}  // namespace lowbit
