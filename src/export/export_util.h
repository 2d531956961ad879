// What the export writers share: the checks an int layout must pass, scale rounding and the
// difference it makes, dense tensors in a chosen type, and the Hugging Face side files.
#pragma once

#include "export/export.h"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace lowbit {

// Empty when `q` is a per-row affine int grid (format "int", per-row groups, integer zero-points
// in [0, 2^bits)) whose groups tile each row evenly (group_size divides cols, or one group per
// row); otherwise why not.
std::string int_grid_problem(const QuantizedLinear& q);
// All zero-points are 2^(bits-1): the symmetric grid of GPTQ's Quantizer (sym=True).
bool is_symmetric(const QuantizedLinear& q);
// Zero-point of scale group s, as an integer (int_grid_problem() said it is one).
inline int32_t zero_code(const QuantizedLinear& q, int64_t s) { return int32_t(q.zeros[size_t(s)]); }

// `q` with every scale rounded to `dtype` (F16/BF16; F32 leaves them), i.e. the linear the export
// holds. Its dequantize() is what a consumer reading the export computes (in fp32).
QuantizedLinear with_scales_in(const QuantizedLinear& q, DType dtype);
// Records max |held - q| of the dequantized weights (both rounded to q's 16-bit type) in `s`.
void record_difference(const QuantizedLinear& q, const QuantizedLinear& held, const std::string& name,
                       ExportSummary& s);
// The same for held weights given in fp32 [rows, cols] (rounded to q's 16-bit type here).
void record_difference(const QuantizedLinear& q, const float* held, const std::string& name, ExportSummary& s);

// Parses "f16"/"bf16"/"f32" (also "float16", "bfloat16", "float32"); throws naming `option`.
DType parse_export_dtype(const std::string& text, const std::string& option);
// The type dense tensors are written in: o.dtype, else `fallback`, else the source's torch_dtype
// (F32 when it has none).
DType dense_dtype(const ExportSource& src, const ExportOptions& o, const std::string& fallback);
const char* torch_dtype_name(DType t);  // "float16", "bfloat16", "float32"

// `t` converted to `dtype` (F32/F16/BF16), rounding to nearest even.
Tensor convert_tensor(const Tensor& t, DType dtype);
Tensor f16_tensor(const std::vector<float>& v, std::vector<int64_t> shape);
Tensor i32_tensor(const std::vector<int32_t>& v, std::vector<int64_t> shape);

// The non-linear tensors of the model (embeddings, norms, lm_head), by their Hugging Face names.
std::vector<std::string> dense_tensor_names(const ExportSource& src);

// Writes `tmp`/config.json (the checkpoint's config.json with torch_dtype set and
// `quantization_config` added unless null) and copies the tokenizer and generation files.
void write_hf_side_files(const ExportSource& src, const std::filesystem::path& tmp, DType dtype,
                         const nlohmann::json& quantization_config);

// The symmetric/asymmetric, bits, group size of the int linears, required to be one scheme for
// the whole model by formats whose config has one (GPTQ, AWQ); throws naming the first linear
// that differs.
struct IntScheme {
  int bits = 0;
  int64_t group_size = 0;  // columns per group; equal to cols for one group per row
  bool per_row = false;    // one group per row (GPTQ group_size -1, compressed-tensors "channel")
  bool sym = false;
  bool act_order = false;  // g_idx present
};
IntScheme int_scheme(const QuantizedLinear& q);
IntScheme common_int_scheme(const ExportSource& src, const char* format);

}  // namespace lowbit
