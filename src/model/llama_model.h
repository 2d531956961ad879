// LlamaModel: a LlamaForCausalLM on the CPU, in fp32 compute over weights kept in their stored
// dtype (bf16/fp16/fp32, read through the checkpoint's memory map).
//
// The block-level API is the normal path: forward() is embed -> run_block for each block ->
// final norm -> LM head, and calibration and quantization call run_block on captured inputs.
// Every linear of a block has named hook points on its input and output.
//
// Shapes (B sequences of T tokens, H = hidden, F = intermediate, V = vocab):
//   hidden  [B*T, H]        tokens of sequence b at rows b*T .. b*T+T-1
//   logits  [rows, V]
#pragma once

#include "backend/ops.h"
#include "core/tensor.h"
#include "formats/checkpoint.h"
#include "model/kv_cache.h"

#include <array>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace lowbit {

// LinearKind, tensor names and input sites: formats/llama_tensors.h.

// A linear whose weight is held in a form that only it multiplies by (packed low-bit codes,
// src/pack/): y[rows, out] = x[rows, in] @ W^T, as ops::linear computes for an fp32 W.
class LinearKernel {
 public:
  virtual ~LinearKernel() = default;
  virtual void apply(const float* x, float* y, int64_t rows) const = 0;
  virtual int64_t in_features() const = 0;
  virtual int64_t out_features() const = 0;
};

// fp32 weights of one block, row-major as torch stores them ([out, in] for linears). A tensor
// may view the checkpoint (fp32 files) or own a converted copy. A linear with a kernel (packed
// execution) runs through it, and its tensor is empty.
struct BlockWeights {
  Tensor input_norm, post_norm;  // [H]
  std::array<Tensor, 7> linear;  // indexed by LinearKind
  std::array<std::shared_ptr<const LinearKernel>, 7> kernel;  // indexed by LinearKind; null: use `linear`
  // Optional kernels for linears that share an input, stacked along their outputs: q, k, v
  // ([B*T, q_dim + 2 kv_dim], in that order) and gate, up ([B*T, 2 F]). One product instead of
  // three or two (one pass over the input, one parallel region). Used when set and no input hook
  // is installed; each part's result is what its own kernel gives.
  std::shared_ptr<const LinearKernel> qkv, gate_up;
  const Tensor& operator[](LinearKind k) const { return linear[size_t(k)]; }
  Tensor& operator[](LinearKind k) { return linear[size_t(k)]; }
};

// A deep copy with every tensor owned and writable (for methods that edit a block's weights).
BlockWeights clone_block_weights(const BlockWeights& w);

// Hook points on every linear of a block, under the hook rules of model/llama_block.h. on_input
// sees (and may rewrite, e.g. to quantize activations) the [rows, in] input right before the
// product; on_output sees the [rows, out] result. q, k and v share one normalized input, gate and
// up another: when on_input is set, each of them gets its own copy, so a hook that rewrites one
// linear's input leaves the others' alone. Input hooks of linears sharing an input run before any
// of their products.
//
// stop_after: return from run_block as soon as the input hooks of that site have run; `hidden`
// is then left partly updated. Calibration uses it to collect a linear's input statistics
// without running the rest of the block.
struct BlockHooks {
  std::function<void(int64_t layer, LinearKind, float* x, int64_t rows, int64_t cols)> on_input;
  std::function<void(int64_t layer, LinearKind, const float* y, int64_t rows, int64_t cols)> on_output;
  std::optional<InputSite> stop_after;
};

// Keys (after RoPE) and values of the positions a sequence has run so far, per layer, on the
// host: for incremental decoding and for scoring several continuations of one shared prefix
// (positions and their rules: model/kv_cache.h).
struct KvCache : KvPositions {
  std::vector<std::vector<float>> k, v;  // [layers][capacity * kv_dim]
};

class LlamaModel {
 public:
  explicit LlamaModel(Checkpoint ck);

  const LlamaConfig& config() const { return ck_.config; }
  const Checkpoint& checkpoint() const { return ck_; }

  // Block i's weights in fp32 (cached for reuse when the model is small enough).
  std::shared_ptr<const BlockWeights> block_weights(int64_t i) const;
  // Block i's weights in fp32 as a writable copy of the caller's own (a quantization method's):
  // the cached or replaced block cloned, else converted from the checkpoint once, without the
  // clone. `reuse`: weights the caller is done with (the previous block's): each of its tensors
  // that is fp32, writable, of the same shape and held by nothing else receives the conversion
  // instead of a new allocation, whose fresh pages (0.87 GB per 8B block) cost more to fault in
  // than the conversion itself.
  BlockWeights writable_block_weights(int64_t i, BlockWeights reuse = {}) const;
  // Replaces block i's weights (a quantized block's dequantized weights, for instance).
  void set_block_weights(int64_t i, std::shared_ptr<const BlockWeights> w);
  // Whether set_block_weights() replaced block i: its weights are then no longer the checkpoint's
  // (readers of the checkpoint's quantized linears must use block_weights() instead).
  bool block_weights_replaced(int64_t i) const;

  // hidden[n, H] = embedding rows of tokens[0..n).
  void embed(std::span<const int32_t> tokens, float* hidden) const;
  // Runs block i in place on B sequences of T tokens at positions pos0 .. pos0+T-1: the steps of
  // model/llama_block.h. With a cache (B = 1, pos0 = cache->length), the block's keys and values
  // are appended to it and the queries attend to every cached position (the caller advances
  // cache->length after the last block).
  void run_block(int64_t i, const BlockWeights& w, float* hidden, int64_t B, int64_t T, int64_t pos0 = 0,
                 const BlockHooks* hooks = nullptr, KvCache* cache = nullptr) const;
  void run_block(int64_t i, float* hidden, int64_t B, int64_t T, int64_t pos0 = 0,
                 const BlockHooks* hooks = nullptr) const {
    run_block(i, *block_weights(i), hidden, B, T, pos0, hooks);
  }
  // The two halves of a block, on normalized inputs x [B*T, H], writing out [B*T, H] (before
  // the residual add): attention (q, k, v, RoPE, causal GQA, o) and the SwiGLU MLP, the halves of
  // model/llama_block.h. Return true when hooks->stop_after stopped them early.
  // With a cache (B = 1), the new keys and values are written at rows cache->length .. +T-1 of
  // the layer's buffers and the queries attend to every cached position; pos0 is cache->length.
  bool attention_part(int64_t layer, const BlockWeights& w, const float* x, float* out, int64_t B, int64_t T,
                      int64_t pos0 = 0, const BlockHooks* hooks = nullptr, KvCache* cache = nullptr) const;
  bool mlp_part(int64_t layer, const BlockWeights& w, const float* x, float* out, int64_t rows,
                const BlockHooks* hooks = nullptr) const;
  // Final RMSNorm in place, then logits[rows, V].
  void final_norm(float* hidden, int64_t rows) const;
  void lm_head(const float* hidden, int64_t rows, float* logits) const;
  // A kernel that lm_head() runs instead of the stored head ([V, H]: packed execution's 8-bit
  // head, say); null restores the stored one. The embedding lookup keeps reading the stored table.
  void set_lm_head_kernel(std::shared_ptr<const LinearKernel> k);
  const LinearKernel* lm_head_kernel() const { return lm_head_kernel_.get(); }

  KvCache make_kv_cache(int64_t capacity) const;
  // Runs `tokens` at positions cache.length .. cache.length + T - 1 through every block, reading
  // and extending the cache; hidden_out [T, H] receives the final-normed hidden states (for
  // lm_head on the rows needed). Applies the forward hooks when given none.
  void forward_cached(std::span<const int32_t> tokens, KvCache& cache, float* hidden_out,
                      const BlockHooks* hooks = nullptr) const;
  // The same from input embeddings: hidden [T, H] (token embeddings, or embeddings with other
  // rows spliced in, as LLaVA's image features) run in place and final-normed.
  void run_cached(float* hidden, int64_t T, KvCache& cache, const BlockHooks* hooks = nullptr) const;

  // Hooks that forward() and next_token_nll() apply when given none (a quantized model's
  // activation quantization, for instance). Null: none.
  void set_forward_hooks(std::shared_ptr<const BlockHooks> hooks) { forward_hooks_ = std::move(hooks); }
  const BlockHooks* forward_hooks() const { return forward_hooks_.get(); }

  // Logits [T, V] of one sequence.
  Tensor forward(std::span<const int32_t> tokens, const BlockHooks* hooks = nullptr) const;
  // -log p(tokens[t+1] | tokens[..t]) for t < T-1, with the LM head applied in row chunks so the
  // full [T, V] logits never exist at once.
  std::vector<double> next_token_nll(std::span<const int32_t> tokens, const BlockHooks* hooks = nullptr) const;

  // The longest sequence the RoPE table covers (grown on demand).
  void ensure_positions(int64_t n) const;

  // Whether block_weights() leaves linears stored in BF16/F16 in that dtype, behind a kernel that
  // reads them as they are (ops::gemv for a few rows, a per-call fp32 conversion for more): a
  // decode step then reads half the bytes. Off by default: quantization methods edit the fp32
  // copies. Set it before the first block_weights() call.
  void set_keep_16bit_weights(bool on) { keep_16bit_ = on; }

  // Whether block_weights() keeps converted fp32 blocks for reuse (on by default when all of
  // them fit in 4 GiB). Quantization turns it off: it holds one block at a time.
  void set_block_cache(bool on);

  // The LM head [V, H] in fp32 (the embedding table when tied), the embedding table [V, H] in its
  // stored dtype, the final norm's weight [H] in fp32: for the backward pass (train/).
  const float* lm_head_f32() const;
  const Tensor& lm_head_stored() const;
  const Tensor& embedding_table() const;
  const Tensor& final_norm_weight() const { return final_norm_w_; }

 private:
  // Block i converted from the checkpoint (block_weights without the cache); own: every tensor in
  // storage of its own (fp32 ones copied, no 16-bit kernels).
  BlockWeights load_block(int64_t i, bool own, BlockWeights* reuse = nullptr) const;

  Checkpoint ck_;
  mutable std::mutex mu_;
  mutable RopeTable rope_;
  mutable std::vector<std::shared_ptr<const BlockWeights>> blocks_;
  std::vector<bool> replaced_;  // by set_block_weights
  bool cache_blocks_ = true;
  bool keep_16bit_ = false;
  Tensor final_norm_w_;
  std::shared_ptr<const BlockHooks> forward_hooks_;
  mutable Tensor lm_head_, lm_head_stored_;
  std::shared_ptr<const LinearKernel> lm_head_kernel_;
  mutable std::once_flag lm_head_once_, lm_head_stored_once_;
  mutable Tensor embed_table_;
  mutable std::once_flag embed_once_;
};

}  // namespace lowbit
