// Export row "hf": the fake-quant model as a plain Hugging Face checkpoint, every quantized linear
// dequantized (QuantizedLinear::dequantize_as_stored, the weights every lowbit evaluation uses)
// and written dense in the model's 16-bit type (or --dtype). Any layout fits; nothing gets
// smaller, but any engine loads it, and it is the reference the packed exports are compared to.
// A model that is not quantized (a GGUF file, a llama2.c checkpoint) is written the same way:
// every tensor as lowbit reads it (a GGUF's dequantized to fp32, in --dtype f32 exactly), with
// the config and tokenizer a quantized checkpoint of it would carry (write_source_side_files).
//
//   model.safetensors  every tensor of the model under its Hugging Face name
//   config.json        the checkpoint's, without quantization_config; tokenizer files copied
#include "core/error.h"
#include "export/export_util.h"
#include "formats/safetensors.h"
#include "quant/lowbit_checkpoint.h"

#include <fstream>
#include <sstream>

namespace lowbit {

namespace {

namespace fs = std::filesystem;

std::string cannot_hold(const QuantizedLinear&, const ExportOptions&) { return ""; }

// The written type in config.json: transformers 5 reads "dtype", earlier versions "torch_dtype".
void set_config_dtype(const fs::path& path, DType dtype) {
  std::ifstream in(path);
  LB_CHECK(in.good(), "cannot read '{}'", path.string());
  std::stringstream ss;
  ss << in.rdbuf();
  in.close();
  nlohmann::json cfg = nlohmann::json::parse(ss.str(), nullptr, false);
  LB_CHECK(!cfg.is_discarded() && cfg.is_object(), "'{}' is not a JSON object", path.string());
  cfg["torch_dtype"] = torch_dtype_name(dtype);
  if (cfg.contains("dtype")) cfg["dtype"] = torch_dtype_name(dtype);
  std::ofstream(path) << cfg.dump(2) << "\n";
}

void write(const ExportSource& src, const ExportOptions& o, const fs::path& tmp, ExportSummary& summary) {
  const DType dtype = dense_dtype(src, o, "");
  SafetensorsWriter w;
  for (const std::string& name : src.linear_names)
    w.add(name, convert_tensor(src.weights->quantized(name).dequantize_f32(), dtype));
  for (const std::string& name : dense_tensor_names(src)) w.add(name, convert_tensor(src.ck.weights->get(name), dtype));
  w.set_metadata("format", "pt");
  w.write((tmp / "model.safetensors").string());
  if (src.weights == nullptr) {
    write_source_side_files(src.ck, tmp);
    set_config_dtype(tmp / "config.json", dtype);
  } else {
    write_hf_side_files(src, tmp, dtype, nullptr);
  }
  summary.notes.push_back(fmt::format("{} written dense in {}",
                                      src.weights == nullptr ? "the model's weights (not quantized)" : "fake-quant weights",
                                      dtype_name(dtype)));
}

}  // namespace

const ExportFormat kHfExport = {"hf", "the fake-quant model as a dense 16-bit Hugging Face checkpoint (any layout)",
                                false, false, cannot_hold, write};

}  // namespace lowbit
