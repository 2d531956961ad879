// Export row "hf": the fake-quant model as a plain Hugging Face checkpoint, every quantized linear
// dequantized (QuantizedLinear::dequantize_as_stored, the weights every lowbit evaluation uses)
// and written dense in the model's 16-bit type (or --dtype). Any layout fits; nothing gets
// smaller, but any engine loads it, and it is the reference the packed exports are compared to.
//
//   model.safetensors  every tensor of the model under its Hugging Face name
//   config.json        the checkpoint's, without quantization_config; tokenizer files copied
#include "core/error.h"
#include "export/export_util.h"
#include "formats/safetensors.h"

namespace lowbit {

namespace {

namespace fs = std::filesystem;

std::string cannot_hold(const QuantizedLinear&, const ExportOptions&) { return ""; }

void write(const ExportSource& src, const ExportOptions& o, const fs::path& tmp, ExportSummary& summary) {
  const DType dtype = dense_dtype(src, o, "");
  SafetensorsWriter w;
  for (const std::string& name : src.linear_names)
    w.add(name, convert_tensor(src.weights->quantized(name).dequantize_f32(), dtype));
  for (const std::string& name : dense_tensor_names(src)) w.add(name, convert_tensor(src.ck.weights->get(name), dtype));
  w.set_metadata("format", "pt");
  w.write((tmp / "model.safetensors").string());
  write_hf_side_files(src, tmp, dtype, nullptr);
  summary.notes.push_back(fmt::format("fake-quant weights written dense in {}", dtype_name(dtype)));
}

}  // namespace

const ExportFormat kHfExport = {"hf", "the fake-quant model as a dense 16-bit Hugging Face checkpoint (any layout)",
                                false, false, cannot_hold, write};

}  // namespace lowbit
