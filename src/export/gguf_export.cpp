// Export row "gguf": one llama.cpp model file (GGUF v3, architecture "llama") with the metadata
// and tensor names of llama.cpp's convert_hf_to_gguf.py and the tokenizer
// (gguf_tokenizer_export.h).
//
// A quantized linear goes into a ggml block type that holds its codes as they are:
//
//   lowbit int grid (per-row groups, group size a multiple of 32, no act-order map)
//     8 bits, symmetric (zero 128)  -> Q8_0  qs = code - 128,   d = scale (fp16)
//     4 bits, symmetric (zero 8)    -> Q4_0  q = code,          d = scale (fp16)
//     4 bits, asymmetric            -> Q4_1  q = code,          d = scale, m = -scale * zero (fp16)
//
// Every 32-column block of a group takes the group's scale and zero-point. Q8_0 and Q4_0 compute
// d * (q - offset), lowbit's formula: exact when the scale is an fp16 value. Q4_1 computes
// q * d + m: the same codes, but m = -scale * zero is rounded to fp16 and ggml's sum rounds
// differently from scale * (code - zero), so its weights differ from lowbit's by those roundings
// (reported). K-quants are not used: their 6-bit sub-block scales and shared super-block scale
// cannot hold lowbit's independent fp32 group scales. Other layouts (2/3/5-8-bit asymmetric,
// act-order, codebooks, binarized) are refused, or written dense with --dequantize.
//
// Tensors: token_embd, output_norm, output (untied only), blk.N.{attn_norm, ffn_norm} in F32;
// blk.N.{attn_q, attn_k, attn_v, attn_output, ffn_gate, ffn_up, ffn_down}; rope_freqs for llama3
// RoPE scaling. attn_q and attn_k rows are permuted as the converter does (HF row
// h*d + j*d/2 + i is stored at row h*d + 2i + j) so that llama.cpp's interleaved RoPE applies.
// Dense tensors are in the model's 16-bit type (--dtype: f16, bf16 or f32).
#include "core/error.h"
#include "export/export_gguf_types.h"
#include "export/export_util.h"
#include "export/gguf_tokenizer_export.h"
#include "formats/ggml_quants.h"
#include "formats/gguf_llama.h"
#include "formats/gguf_writer.h"

#include <cstring>
#include <map>

namespace lowbit {

namespace {

namespace fs = std::filesystem;

std::string cannot_hold(const QuantizedLinear& q, const ExportOptions&) {
  if (std::string why = int_grid_problem(q); !why.empty()) return why;
  return gguf_block_problem(q);
}

// The GGUF name of a Hugging Face tensor name, and whether its rows take the RoPE permutation
// (0: none, else the number of heads).
std::pair<std::string, int64_t> gguf_name(const std::string& hf, const LlamaConfig& c) {
  static const std::map<std::string, std::string> kTop = {{"model.embed_tokens.weight", "token_embd.weight"},
                                                           {"model.norm.weight", "output_norm.weight"},
                                                           {"lm_head.weight", "output.weight"}};
  static const std::map<std::string, std::string> kBlock = {
      {"input_layernorm.weight", "attn_norm.weight"},  {"post_attention_layernorm.weight", "ffn_norm.weight"},
      {"self_attn.q_proj.weight", "attn_q.weight"},    {"self_attn.k_proj.weight", "attn_k.weight"},
      {"self_attn.v_proj.weight", "attn_v.weight"},    {"self_attn.o_proj.weight", "attn_output.weight"},
      {"mlp.gate_proj.weight", "ffn_gate.weight"},     {"mlp.up_proj.weight", "ffn_up.weight"},
      {"mlp.down_proj.weight", "ffn_down.weight"}};
  if (auto it = kTop.find(hf); it != kTop.end()) return {it->second, 0};
  const std::string prefix = "model.layers.";
  LB_CHECK(hf.rfind(prefix, 0) == 0, "gguf: no GGUF name for tensor '{}'", hf);
  const size_t dot = hf.find('.', prefix.size());
  const std::string layer = hf.substr(prefix.size(), dot - prefix.size());
  const std::string rest = hf.substr(dot + 1);
  auto it = kBlock.find(rest);
  LB_CHECK(it != kBlock.end(), "gguf: no GGUF name for tensor '{}'", hf);
  const int64_t heads = rest == "self_attn.q_proj.weight"   ? c.num_attention_heads
                        : rest == "self_attn.k_proj.weight" ? c.num_key_value_heads
                                                            : 0;
  return {"blk." + layer + "." + it->second, heads};
}

// GGUF row p holds source row perm[p] (see the header comment).
std::vector<int64_t> rope_row_order(int64_t heads, int64_t head_dim) {
  const int64_t half = head_dim / 2;
  std::vector<int64_t> perm(size_t(heads * head_dim));
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t i = 0; i < half; ++i)
      for (int64_t j = 0; j < 2; ++j) perm[size_t(h * head_dim + 2 * i + j)] = h * head_dim + j * half + i;
  return perm;
}

QuantizedLinear permute_rows(const QuantizedLinear& q, const std::vector<int64_t>& perm) {
  QuantizedLinear p = q;
  const int64_t g = q.groups_per_row();
  for (int64_t r = 0; r < q.rows; ++r) {
    const int64_t s = perm[size_t(r)];
    std::memcpy(p.codes.data() + r * q.cols, q.codes.data() + s * q.cols, size_t(q.cols));
    for (int64_t k = 0; k < g; ++k) {
      p.scales[size_t(r * g + k)] = q.scales[size_t(s * g + k)];
      p.zeros[size_t(r * g + k)] = q.zeros[size_t(s * g + k)];
    }
  }
  return p;
}

Tensor permute_rows(const Tensor& t, const std::vector<int64_t>& perm) {
  Tensor out = Tensor::empty(t.dtype(), t.shape());
  const int64_t row_bytes = t.nbytes() / t.dim(0);
  const auto* src = static_cast<const uint8_t*>(t.data());
  auto* dst = static_cast<uint8_t*>(out.mutable_data());
  for (int64_t r = 0; r < t.dim(0); ++r) std::memcpy(dst + r * row_bytes, src + perm[size_t(r)] * row_bytes, size_t(row_bytes));
  return out;
}

uint32_t ggml_dense_type(DType t) {
  switch (t) {
    case DType::F16: return uint32_t(GgmlType::F16);
    case DType::BF16: return uint32_t(GgmlType::BF16);
    default: return uint32_t(GgmlType::F32);
  }
}

std::vector<uint8_t> tensor_bytes(const Tensor& t) {
  const auto* p = static_cast<const uint8_t*>(t.data());
  return std::vector<uint8_t>(p, p + t.nbytes());
}

void add_dense(GgufWriter& w, const std::string& name, const Tensor& t, DType dtype) {
  const Tensor c = convert_tensor(t, dtype);
  std::vector<int64_t> ne(c.shape().rbegin(), c.shape().rend());
  w.add_tensor(name, ne, ggml_dense_type(dtype), tensor_bytes(c));
}

// llama_ftype of the file: the type most linears have (llama.h's LLAMA_FTYPE_*).
uint32_t file_type(const std::map<uint32_t, int64_t>& counts) {
  uint32_t best = 0;
  int64_t n = -1;
  for (const auto& [t, k] : counts)
    if (k > n) best = t, n = k;
  switch (GgmlType(best)) {
    case GgmlType::F16: return 1;
    case GgmlType::Q4_0: return 2;
    case GgmlType::Q4_1: return 3;
    case GgmlType::Q8_0: return 7;
    case GgmlType::BF16: return 32;
    default: return 0;
  }
}

void write(const ExportSource& src, const ExportOptions& o, const fs::path& tmp, ExportSummary& summary) {
  const LlamaConfig& c = src.ck.config;
  const DType dtype = dense_dtype(src, o, "");
  GgufWriter w;
  w.set_string("general.architecture", "llama");
  w.set_string("general.name", src.dir.filename().string());
  w.set_u32("general.quantization_version", 2);
  w.set_u32("llama.context_length", uint32_t(c.max_position_embeddings));
  w.set_u32("llama.embedding_length", uint32_t(c.hidden_size));
  w.set_u32("llama.block_count", uint32_t(c.num_hidden_layers));
  w.set_u32("llama.feed_forward_length", uint32_t(c.intermediate_size));
  w.set_u32("llama.rope.dimension_count", uint32_t(c.head_dim));
  w.set_u32("llama.attention.head_count", uint32_t(c.num_attention_heads));
  w.set_u32("llama.attention.head_count_kv", uint32_t(c.num_key_value_heads));
  if (c.head_dim * c.num_attention_heads != c.hidden_size) {
    w.set_u32("llama.attention.key_length", uint32_t(c.head_dim));
    w.set_u32("llama.attention.value_length", uint32_t(c.head_dim));
  }
  w.set_f32("llama.attention.layer_norm_rms_epsilon", float(c.rms_norm_eps));
  w.set_f32("llama.rope.freq_base", float(c.rope_theta));
  w.set_u32("llama.vocab_size", uint32_t(c.vocab_size));
  if (c.rope_scaling.type == RopeScaling::Type::Linear) {
    w.set_string("llama.rope.scaling.type", "linear");
    w.set_f32("llama.rope.scaling.factor", float(c.rope_scaling.factor));
  }

  // Tensors first (the file type depends on them); the writer keeps the order of the calls.
  GgufWriter tensors;
  std::map<uint32_t, int64_t> type_counts;
  if (c.rope_scaling.type == RopeScaling::Type::Llama3) {
    const std::vector<double> f = llama3_rope_factors(c);
    std::vector<float> ff(f.begin(), f.end());
    std::vector<uint8_t> bytes(ff.size() * 4);
    std::memcpy(bytes.data(), ff.data(), bytes.size());
    tensors.add_tensor("rope_freqs.weight", {int64_t(ff.size())}, uint32_t(GgmlType::F32), std::move(bytes));
  }
  for (const std::string& name : dense_tensor_names(src)) {
    const Tensor t = src.ck.weights->get(name);
    const bool one_dim = t.shape().size() == 1;
    const auto [gname, heads] = gguf_name(name, c);
    add_dense(tensors, gname, heads ? permute_rows(t, rope_row_order(heads, c.head_dim)) : t,
              one_dim ? DType::F32 : dtype);
  }
  for (const std::string& name : src.linear_names) {
    QuantizedLinear q = src.weights->quantized(name);
    const auto [gname, heads] = gguf_name(name, c);
    const bool dense = std::find(src.dense_linears.begin(), src.dense_linears.end(), name) != src.dense_linears.end();
    if (dense) {
      const Tensor t = q.dequantize_f32();
      add_dense(tensors, gname, heads ? permute_rows(t, rope_row_order(heads, c.head_dim)) : t, dtype);
      ++type_counts[ggml_dense_type(dtype)];
      continue;
    }
    if (heads) q = permute_rows(q, rope_row_order(heads, c.head_dim));
    const GgufBlocks b = pack_gguf_blocks(q);
    tensors.add_tensor(gname, {q.cols, q.rows}, b.type, b.bytes);
    ++type_counts[b.type];
    std::vector<float> held(size_t(q.rows * q.cols));
    ggml_dequantize(b.type, b.bytes.data(), held.data(), q.rows * q.cols, gname);
    record_difference(q, held.data(), name, summary);
  }
  w.set_u32("general.file_type", file_type(type_counts));

  std::string why;
  if (auto tok = gguf_tokenizer_of(src.dir, c, why)) {
    write_gguf_tokenizer(w, *tok);
    summary.notes.push_back(fmt::format("tokenizer: {} ({} tokens, pre {})", tok->model, tok->tokens.size(), tok->pre));
  } else {
    summary.notes.push_back("no tokenizer metadata (" + why + "): llama.cpp needs one to load the file");
  }
  w.append_tensors(std::move(tensors));
  w.write(tmp.string());
  for (const auto& [t, k] : type_counts) summary.notes.push_back(fmt::format("{} linears as {}", k, ggml_type_name(t)));
  summary.notes.push_back(fmt::format("dense tensors {}, norms F32", dtype_name(dtype)));
}

}  // namespace

const ExportFormat kGgufExport = {"gguf", "llama.cpp GGUF: Q8_0/Q4_0/Q4_1 blocks from int grids, metadata, tokenizer",
                                  true, true, cannot_hold, write};

}  // namespace lowbit
