// The lowbit quantized checkpoint, defined once for the disk and for memory.
//
// On disk it is a directory: config.json, the tokenizer files, and model.safetensors holding, for
// every quantized linear "<base>" (e.g. model.layers.3.mlp.down_proj), the tensors its fields
// hold (generic over formats; the layout lists which ones are present):
//   <base>.qcodes      U8   [rows, ceil(cols * bits / 8)]  codes, bit-packed LSB-first per row
//   <base>.scales      F32  [rows, groups], or [n] for flat groups and other counts
//   <base>.zeros       F32  same shape as scales
//   <base>.g_idx       I32  [cols]
//   <base>.codebook    F32  [2^bits]
//   <base>.extra.NAME  the format's named tensors
// and every other tensor of the model under its usual name: the source's, or the method's
// rewrite of it (norms with folded scales; model-level tensors such as the embeddings for
// methods that rotate the residual stream), in F32. The safetensors metadata key
// "lowbit.quantization" holds one JSON object (quantization_metadata()): format_version, the
// method (spec as given and resolved, #W/#A/#G), calibration identity, activation scheme,
// source model (path, format, SHA-256 of its weight files, dtype), lowbit version and commit,
// created, quantize_seconds, each linear's layout (format name and version, sizes, params,
// the tensors present, bits per weight) and the list of rewritten tensors.
//
// In memory (quantized_in_memory.h) the same metadata object is the Checkpoint's
// `quantization`, so every evaluation treats both alike.
#pragma once

#include "formats/checkpoint.h"
#include "quant/quantized_linear.h"

#include <nlohmann/json.hpp>

#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace lowbit {

struct QuantizedModel;
class LlamaModel;

// The weights of a quantized checkpoint (on disk or in memory): a WeightSource whose quantized
// linears read as their dequantized 16-bit weights, and whose QuantizedLinear is available too
// (for packed kernels, export and inspection).
class QuantizedWeightSource : public TableWeightSource {
 public:
  virtual bool is_quantized(const std::string& name) const = 0;
  virtual QuantizedLinear quantized(const std::string& name) const = 0;
};

inline constexpr const char* kQuantizationMetadataKey = "lowbit.quantization";
// Version 2: generic per-linear tensor lists and format versions (version 1 is read too).
inline constexpr int kQuantizedCheckpointVersion = 2;

// One linear's layout as the metadata records it, and its tensors by suffix ("qcodes",
// "scales", ..., "extra.NAME").
nlohmann::json linear_layout(const QuantizedLinear& q);
std::vector<std::pair<std::string, Tensor>> linear_tensors(const QuantizedLinear& q);
// The suffixes a layout lists (derived from the fields of a version-1 layout).
std::vector<std::string> layout_tensor_suffixes(const nlohmann::json& layout);
// Reads a linear back: `get(suffix)` returns its tensors. Validates; errors name `what`.
QuantizedLinear read_linear(const std::function<Tensor(const std::string&)>& get, const nlohmann::json& layout,
                            const std::string& what);

// The metadata object of a quantized model of `source` (identity as recorded under "source").
nlohmann::json quantization_metadata(const QuantizedModel& qm, const nlohmann::json& source_identity);
// {"path", "format", "sha256", "dtype", "parameters"} of a checkpoint.
nlohmann::json source_identity(const Checkpoint& ck);

// Writes into `dir` the files a checkpoint directory of `ck` carries beside its weights:
// config.json (the source's own when it has one, else one written from its hyper-parameters) and
// the tokenizer (a GGUF's as the tokenizer.json and tokenizer_config.json transformers builds from
// it; otherwise the source's tokenizer files copied).
void write_source_side_files(const Checkpoint& ck, const std::filesystem::path& dir);

// What a checkpoint carries beyond the quantized language model (a LLaVA-Next checkpoint's vision
// tower and projector, quant/llava_next_quantized.h).
struct CheckpointAdditions {
  // Written to model.safetensors as given (dtype, shape and bytes), beside the model's tensors;
  // a name the model's tensors use is refused.
  std::vector<std::pair<std::string, Tensor>> tensors;
  // Writes the side files (config.json, tokenizer, ...) into the directory it is given, in place
  // of write_source_side_files().
  std::function<void(const std::filesystem::path&)> side_files;
};

// Writes the quantized checkpoint directory `out_dir` (which must not exist unless `overwrite`):
// everything goes to a temporary directory beside it that is renamed into place when complete.
// `extra` is merged into the metadata (e.g. peak memory).
void write_quantized_checkpoint(const std::string& out_dir, const LlamaModel& source, const QuantizedModel& qm,
                                const nlohmann::json& extra, bool overwrite,
                                const CheckpointAdditions* additions = nullptr);

// Opens a model directory or file, quantized or not. For a quantized checkpoint, the weights are
// the dequantized linears plus the stored tensors, and Checkpoint::quantization holds the
// metadata object; for others it is null. A quantized LLaVA-Next checkpoint (its config.json a
// LlavaNextForConditionalGeneration's, its metadata holding "multimodal") opens as its language
// model, the config being the text_config; its vision tensors pass through unread.
Checkpoint open_model(const std::string& path);
// The QuantizedLinear behind weight `name` of a checkpoint that open_model() opened as quantized
// (on disk or in memory); throws when it is not one.
QuantizedLinear quantized_linear_of(const Checkpoint& ck, const std::string& name);

// Installs a quantized checkpoint's activation quantization (if any) as the model's forward
// hooks: what every evaluation of such a model must do.
void install_quantized_forward(LlamaModel& model);
// open_model(), a LlamaModel over it, install_quantized_forward().
std::unique_ptr<LlamaModel> load_model(const std::string& path);

// SHA-256 over the checkpoint's weight files, in order (the identity of a model in results).
std::string weights_sha256(const Checkpoint& ck);

}  // namespace lowbit
