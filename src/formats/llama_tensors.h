// The tensor table of a LlamaForCausalLM: every tensor kind with its Hugging Face name, its GGUF
// name, its shape and, for the linears of a block, the input site it reads (llama.cpp's
// LLM_TENSOR_NAMES habit). Checkpoint readers, the model, the quantization driver and writers
// all take names, shapes and input sharing from here.
//
//   kind        HF name (i: layer)                          GGUF name           shape
//   TokenEmbd   model.embed_tokens.weight                   token_embd.weight   [V, H]
//   AttnNorm    model.layers.i.input_layernorm.weight       blk.i.attn_norm     [H]
//   Q           model.layers.i.self_attn.q_proj.weight      blk.i.attn_q        [heads*hd, H]
//   K           model.layers.i.self_attn.k_proj.weight      blk.i.attn_k        [kv_heads*hd, H]
//   V           model.layers.i.self_attn.v_proj.weight      blk.i.attn_v        [kv_heads*hd, H]
//   O           model.layers.i.self_attn.o_proj.weight      blk.i.attn_output   [H, heads*hd]
//   FfnNorm     model.layers.i.post_attention_layernorm...  blk.i.ffn_norm      [H]
//   Gate        model.layers.i.mlp.gate_proj.weight         blk.i.ffn_gate      [F, H]
//   Up          model.layers.i.mlp.up_proj.weight           blk.i.ffn_up        [F, H]
//   Down        model.layers.i.mlp.down_proj.weight         blk.i.ffn_down      [H, F]
//   OutputNorm  model.norm.weight                           output_norm.weight  [H]
//   Output      lm_head.weight (absent when tied)           output.weight       [V, H]
// (GGUF names of block tensors end in ".weight" too.) Shapes are torch's [out, in].
//
// Input sites: q, k and v read the attention norm's output (AttnIn); o reads the attention
// output (AttnOut); gate and up read the MLP norm's output (MlpIn); down reads the SwiGLU output
// (MlpOut). Linears of one site share one input, so they share calibration statistics.
#pragma once

#include "formats/llama_config.h"

#include <array>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace lowbit {

// The linears of a decoder block, in the order the block uses them.
enum class LinearKind { Q, K, V, O, Gate, Up, Down };
inline constexpr std::array<LinearKind, 7> kAllLinears = {LinearKind::Q, LinearKind::K,    LinearKind::V,
                                                          LinearKind::O, LinearKind::Gate, LinearKind::Up,
                                                          LinearKind::Down};
const char* linear_name(LinearKind k);  // "q_proj", ..., "down_proj"

enum class TensorKind { TokenEmbd, AttnNorm, Q, K, V, O, FfnNorm, Gate, Up, Down, OutputNorm, Output };

enum class InputSite { AttnIn, AttnOut, MlpIn, MlpOut };
inline constexpr std::array<InputSite, 4> kAllInputSites = {InputSite::AttnIn, InputSite::AttnOut, InputSite::MlpIn,
                                                            InputSite::MlpOut};

struct TensorSpec {
  TensorKind kind;
  bool per_layer;
  const char* hf;    // with "{}" for the layer where per_layer
  const char* gguf;  // the same
  std::optional<LinearKind> linear;
};

// The table, in the order of the list above.
std::span<const TensorSpec> llama_tensor_table();
const TensorSpec& tensor_spec(TensorKind k);

// Names of tensor k (of block `layer` for per-layer kinds).
std::string hf_tensor_name(TensorKind k, int64_t layer = -1);
std::string gguf_tensor_name(TensorKind k, int64_t layer = -1);
// The kind and layer (-1 for model-level tensors) of an HF or GGUF name; nullopt for other names.
std::optional<std::pair<TensorKind, int64_t>> parse_hf_tensor_name(std::string_view name);
std::optional<std::pair<TensorKind, int64_t>> parse_gguf_tensor_name(std::string_view name);
std::vector<int64_t> tensor_shape(const LlamaConfig& c, TensorKind k);

TensorKind tensor_kind(LinearKind k);
// "model.layers.{layer}.self_attn.q_proj.weight" etc.
std::string linear_weight_name(int64_t layer, LinearKind k);
// The same without ".weight": the base name of a quantized linear's tensors.
std::string linear_base_name(int64_t layer, LinearKind k);
// A linear's output and input features (its weight is [out, in], as torch stores it).
int64_t linear_out_features(const LlamaConfig& c, LinearKind k);
int64_t linear_in_features(const LlamaConfig& c, LinearKind k);

InputSite input_site(LinearKind k);
const char* input_site_name(InputSite s);  // "attn_in", "attn_out", "mlp_in", "mlp_out"
// The linears reading site s, in block order (the first one is the site's representative).
std::span<const LinearKind> site_linears(InputSite s);
// The width of site s's input: the in_features of its linears.
int64_t input_site_features(const LlamaConfig& c, InputSite s);

// Every tensor a LlamaForCausalLM with this config has, with its HF name and shape (lm_head only
// when the embeddings are not tied), in checkpoint order; the visitor form lists nothing up front.
void for_each_expected_llama_tensor(
    const LlamaConfig& c, const std::function<void(const std::string&, const std::vector<int64_t>&)>& visit);
std::vector<std::pair<std::string, std::vector<int64_t>>> expected_llama_tensors(const LlamaConfig& c);

}  // namespace lowbit
