// A LLaMA model stored as GGUF (llama.cpp's convert_hf_to_gguf.py output, any quantization lowbit
// reads: formats/ggml_quants.h), presented as a Hugging Face LlamaForCausalLM checkpoint.
//
// Hyper-parameters come from the `llama.*` metadata keys:
//   block_count, embedding_length, feed_forward_length, attention.head_count (required),
//   attention.head_count_kv (default head_count), attention.layer_norm_rms_epsilon (required),
//   rope.freq_base (default 10000), attention.key_length (default embedding / heads),
//   rope.dimension_count (must equal the head size), context_length (required),
//   vocab_size (default: the length of tokenizer.ggml.tokens, else token_embd's rows),
//   rope.scaling.type "none" | "linear" (+ rope.scaling.factor), or the older rope.scale_linear.
// LLaMA-3.1-style RoPE scaling is stored by the converter as a rope_freqs.weight tensor (the
// per-frequency divisors); lowbit recognizes the llama3 parameters that produce it (factor = its
// largest entry, low/high frequency factors 1 and 4 as in every Llama 3.x, the original context
// recovered from the interpolated band) and refuses any other.
//
// Tensors, renamed by the tensor table (formats/llama_tensors.h; GGUF dims are innermost first,
// shapes are outermost first):
//   token_embd.weight        -> model.embed_tokens.weight             [vocab, hidden]
//   blk.N.attn_norm.weight   -> model.layers.N.input_layernorm.weight
//   blk.N.attn_q/k/v.weight  -> model.layers.N.self_attn.q/k/v_proj.weight
//   blk.N.attn_output.weight -> model.layers.N.self_attn.o_proj.weight
//   blk.N.ffn_norm.weight    -> model.layers.N.post_attention_layernorm.weight
//   blk.N.ffn_gate/up/down.weight -> model.layers.N.mlp.gate/up/down_proj.weight
//   output_norm.weight       -> model.norm.weight
//   output.weight            -> lm_head.weight (absent: tied to the embeddings)
// Every tensor is dequantized to F32 when requested (the source's WeightInfo says F32). The
// converter permutes the rows of q/k (LlamaModel.permute: each head's rows interleaved so that
// adjacent rows rotate together); get() undoes it, giving transformers' RoPE layout.
#pragma once

#include "formats/checkpoint.h"
#include "formats/gguf.h"
#include "formats/llama_config.h"
#include "formats/weights.h"

#include <memory>
#include <vector>
#include <string>

namespace lowbit {

// The LlamaConfig of a GGUF file. Throws naming the file and key for a non-llama architecture, a
// missing required key or an inconsistent value.
LlamaConfig gguf_llama_config(const GgufFile& f);

// The rope_freqs.weight divisors (one per frequency, head_dim / 2) that llama.cpp's converter
// writes for llama3 RoPE scaling: the form in which GGUF carries that scaling.
std::vector<double> llama3_rope_factors(const LlamaConfig& c);

// The tensors of a GGUF LLaMA under Hugging Face names. Throws naming the tensor for one outside
// the LLaMA layout or of a ggml type lowbit cannot read.
std::shared_ptr<WeightSource> gguf_llama_weights(std::shared_ptr<const GgufFile> f, const LlamaConfig& c);

// open_checkpoint() for a .gguf file: format "gguf", tokenizer_path = the file itself.
Checkpoint open_gguf_checkpoint(const std::string& path);

}  // namespace lowbit
