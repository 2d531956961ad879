// CudaModel: a LlamaModel's forward on one GPU (DESIGN.md, "Devices"). Weights are uploaded as
// bf16 (from the checkpoint's stored dtype, or a quantized checkpoint's dequantized weights) and
// kept resident when they fit in the GPU's memory; otherwise each block is streamed from the
// memory map when it runs. GEMMs go through cuBLAS (bf16 in, fp32 accumulate); the residual
// stream, norms and softmax are fp32; attention is the flash kernel of backend/cuda.
//
// Packed low-bit linears (backend/cuda/packed_weight.cuh): a quantized checkpoint's linears can
// run from their codes instead of bf16 weights (GpuPackedLinears, made by pack/gpu_packed_cuda.h
// for `--packed` on a CUDA device): 4-bit int codes through the W4A16 GEMM, 2-, 3- and 8-bit int
// codes and NF4 through the low-bit GEMV kernels. q/k/v and gate/up then run as one packed
// product per linear writing into the stacked outputs, o_proj and down_proj add into the residual
// stream in the product's epilogue; no bf16 copy of a packed linear is ever made, and the model
// stays resident. The token embedding of such a model (when the LM head is its own matrix) stays
// on the host: a lookup gathers its bf16 rows there and uploads them.
//
// A checkpoint's activation quantization (model/activation_scheme.h) is applied to every linear's
// input, as the CPU forward's hooks do.
//
// What runs here: perplexity windows (window_nll), incremental forwards with a KV cache for
// multiple-choice scoring and decoding (forward_cached, or forward_rows on padded batches, +
// score_rows), and the block pieces the GPU quantization drivers use (run_block with site hooks,
// the attention and MLP halves, blocks uploaded from a method's working copy). Everything here
// is launched kernel by kernel ("eager"); batch-1 greedy decode replays the same kernels of a
// one-token step as a CUDA graph (model/cuda_decode_graph.h; LOWBIT_CUDA_GRAPHS=0 keeps it eager).
#pragma once

#include "backend/cuda/ops.cuh"
#include "backend/cuda/packed_weight.cuh"
#include "model/activation_scheme.h"
#include "model/llama_model.h"

#include <array>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <vector>

namespace lowbit {

// One block's weights in bf16. q_proj, k_proj and v_proj are stacked into one [q_dim + 2 kv_dim, H]
// matrix and gate_proj, up_proj into one [2F, H] matrix, so that each group is one GEMM.
// With packed linears, a linear that has one (packed[k]) has no bf16 matrix (linear[k] null, and
// its group's stacked buffer unallocated); q/k/v and gate/up are packed all or none.
struct GpuBlockWeights {
  cuda::DeviceBuffer<cuda::bf16> input_norm, post_norm;  // [H]
  cuda::DeviceBuffer<cuda::bf16> qkv, o, gate_up, down;
  std::array<cuda::bf16*, 7> linear{};  // each linear's [out, in] matrix within those, indexed by LinearKind
  std::array<std::shared_ptr<const cuda::PackedWeight>, 7> packed{};  // indexed by LinearKind
  cuda::bf16* operator[](LinearKind k) const { return linear[size_t(k)]; }
  const cuda::PackedWeight* packed_linear(LinearKind k) const { return packed[size_t(k)].get(); }
};

// The packed weight of linear `kind` of block `layer`, uploaded; null: that linear runs from its
// bf16 weight.
using GpuPackedLinears = std::function<std::shared_ptr<const cuda::PackedWeight>(int64_t layer, LinearKind kind)>;
// The packed linears of a model for the CudaModels that the evaluation sessions and `generate`
// build: set once by `--packed` on a CUDA device (pack::use_gpu_packed_linears); unset, or
// returning an empty GpuPackedLinears for a model, every linear runs from bf16.
using GpuPackedFactory = std::function<GpuPackedLinears(const LlamaModel& model, cudaStream_t s)>;
void set_gpu_packed_factory(GpuPackedFactory f);
// The factory's GpuPackedLinears for `model` (empty when no factory is set).
GpuPackedLinears gpu_packed_linears(const LlamaModel& model, cudaStream_t s);

class GpuBlockOps;      // cuda_model.cpp: the block's steps (model/llama_block.h) on the GPU
class CudaDecodeGraph;  // model/cuda_decode_graph.h: a one-token decode step as a CUDA graph

// A KV cache on the GPU (positions and their rules: model/kv_cache.h).
struct GpuKvCache : KvPositions {
  std::vector<cuda::DeviceBuffer<cuda::bf16>> k, v;  // [layers][capacity * kv_dim]
};

class CudaModel {
 public:
  // resident: keep every block on the GPU (nullopt: when they take under 70% of free memory).
  // packed: where the linears' packed weights come from (empty: every linear runs from bf16;
  // set: every block is resident). Throws lowbit::Error for a q/k/v or gate/up group that is
  // packed in part.
  CudaModel(const LlamaModel& host, cuda::Context& ctx, std::optional<bool> resident = std::nullopt,
            GpuPackedLinears packed = {});
  bool packed() const { return static_cast<bool>(packed_); }
  // Whether token lookups read a host-held table (a packed model whose LM head is its own matrix).
  bool embedding_on_host() const { return embed_host_.data() != nullptr; }

  const LlamaConfig& config() const { return host_.config(); }
  const LlamaModel& host() const { return host_; }
  cuda::Context& context() const { return ctx_; }
  bool resident() const { return resident_; }

  // Uploads block i's weights (bf16) into w.
  void upload_block(int64_t i, GpuBlockWeights& w) const;
  // Uploads host block weights (fp32 or any float dtype; a quantization method's working copy)
  // as bf16 into w; with `only`, just those linears, into a w that holds the block already.
  void upload_weights(const BlockWeights& host, GpuBlockWeights& w, std::span<const LinearKind> only = {}) const;
  // A block's weights: the resident copy, or uploaded into `scratch`.
  const GpuBlockWeights& block(int64_t i, GpuBlockWeights& scratch) const;

  // Per-op GPU times of the forwards from here on (profile()).
  void enable_profile();
  cuda::OpProfile* profile() const { return profile_.get(); }

  // Mean next-token NLL of each window (GPTQ's per-window loss), windows of equal length run
  // `batch` at a time.
  std::vector<double> window_nll(const std::vector<std::vector<int32_t>>& windows, int64_t batch);

  GpuKvCache make_kv_cache(int64_t capacity) const;
  // Runs tokens at positions cache.length.. through every block; hidden_out [T, H] (device,
  // fp32 -> bf16 final-normed) receives the final-normed states as bf16.
  void forward_cached(std::span<const int32_t> tokens, GpuKvCache& cache, cuda::DeviceBuffer<cuda::bf16>& normed);
  // The same from input embeddings instead of token ids: hidden_host [T, H] fp32 (host), e.g.
  // LLaVA-Next's token embeddings with image features spliced in (model/llava_next.h).
  void forward_embeddings_cached(const float* hidden_host, int64_t T, GpuKvCache& cache,
                                 cuda::DeviceBuffer<cuda::bf16>& normed);
  // B sequences of T tokens (ids [B * T], host; right-padded by the caller) through every block
  // without a cache; out [n, H] receives the final-normed states (bf16) of the n flat positions
  // `rows` (b * T + t).
  void forward_rows(const int32_t* ids, int64_t B, int64_t T, const std::vector<int32_t>& rows,
                    cuda::DeviceBuffer<cuda::bf16>& out);
  // log p(targets[r] | rows[r]) and whether it is the argmax, for hidden rows (bf16, device).
  void score_rows(const cuda::bf16* rows, const int32_t* targets_host, int64_t n, double* loglik, bool* greedy);

  // The bf16 input [rows, cols] (row stride ld) of the linears starting with `first` (Q for
  // q/k/v, O, Gate for gate/up, Down), as run_block computes it.
  using SiteInput = std::function<void(LinearKind first, const cuda::bf16* x, int64_t rows, int64_t cols, int64_t ld)>;
  // One block on B sequences of T tokens (the steps of model/llama_block.h): hidden (fp32,
  // device) updated in place; with a cache (B = 1) keys and values are appended at
  // cache->length. on_input sees each site's input (before any activation quantization).
  // With stop_after, the block stops once that site's input has been seen (hidden is then
  // partly updated: a caller that stops keeps its own copy).
  void run_block(int64_t layer, const GpuBlockWeights& w, float* hidden, int64_t B, int64_t T,
                 GpuKvCache* cache = nullptr, const SiteInput* on_input = nullptr,
                 std::optional<InputSite> stop_after = std::nullopt);
  // The block's two halves on a normed input x (bf16 [B*T, H], device; it is the workspace the
  // half may quantize in place): out (fp32 [B*T, H], device) = the attention's o_proj output or
  // the MLP's down_proj output, or out += it with accumulate (run_block: the residual add): the
  // halves of model/llama_block.h. The attention part appends to the cache as run_block does;
  // on_input sees the half's two sites (Q's and O's inputs; Gate's and Down's). stop_after: as
  // run_block's, for a site of the half.
  void attention_part(int64_t layer, const GpuBlockWeights& w, cuda::bf16* x, float* out, int64_t B, int64_t T,
                      bool accumulate, GpuKvCache* cache = nullptr, const SiteInput* on_input = nullptr,
                      std::optional<InputSite> stop_after = std::nullopt);
  void mlp_part(int64_t layer, const GpuBlockWeights& w, cuda::bf16* x, float* out, int64_t B, int64_t T,
                bool accumulate, const SiteInput* on_input = nullptr,
                std::optional<InputSite> stop_after = std::nullopt);
  // Embeddings of tokens into hidden (fp32, device).
  void embed(const int32_t* tokens_host, int64_t n, float* hidden);
  // Final norm into bf16 rows.
  void final_norm(const float* hidden, cuda::bf16* out, int64_t rows);
  // logits [rows, V] fp32 of bf16 rows.
  void lm_head(const cuda::bf16* rows, float* logits, int64_t n);
  // Starts the profile's op `name` (nothing without a profile).
  void mark(const char* name) {
    if (profile_) profile_->mark(name);
  }

  const float* rope_cos() const { return rope_cos_.get(); }
  const float* rope_sin() const { return rope_sin_.get(); }

 private:
  friend class GpuBlockOps;
  friend class CudaDecodeGraph;
  void ensure_workspace(int64_t rows);
  // The blocks and the final norm on hidden (fp32 [T, H], device) after the cache's positions.
  void run_cached(float* hidden, int64_t T, GpuKvCache& cache, cuda::DeviceBuffer<cuda::bf16>& normed);
  // Activation quantization of a linear's bf16 input [B*T, cols] (row stride ld), in place.
  void quantize_input(int64_t layer, LinearKind k, cuda::bf16* x, int64_t B, int64_t T, int64_t cols, int64_t ld);
  // The linears `kinds` (stacked in that order into `stacked`) on the normed input x [B*T, H]
  // (quantized in place under an activation scheme): out [B*T, their rows together].
  void grouped_linear(int64_t layer, std::span<const LinearKind> kinds, const GpuBlockWeights& w,
                      const cuda::bf16* stacked, cuda::bf16* x, cuda::bf16* out, int64_t B, int64_t T);
  const LlamaModel& host_;
  cuda::Context& ctx_;
  GpuPackedLinears packed_;
  mutable cuda::W4A16Workspace w4ws_;
  bool resident_ = false;
  std::vector<GpuBlockWeights> blocks_;  // when resident
  mutable GpuBlockWeights scratch_;
  cuda::DeviceBuffer<cuda::bf16> embed_, final_norm_w_, lm_head_;
  // A packed, untied model's embedding table [V, H] in bf16 on the host instead of embed_ (the
  // checkpoint's own tensor when it is stored in bf16), and the gathered rows on their way up.
  Tensor embed_host_;
  cuda::DeviceBuffer<cuda::bf16> embed_rows_;
  cuda::DeviceBuffer<float> rope_cos_, rope_sin_;
  int64_t rope_positions_ = 0;
  // While a CudaDecodeGraph enqueues its step: the cached blocks' position (int32, device), which
  // RoPE, the KV-cache append and attention then read instead of the cache's host-side length.
  const int32_t* device_past_ = nullptr;
  // Per-forward workspace, grown on demand: x_ [rows, H] normed input, qkv_ [rows, q_dim +
  // 2 kv_dim], att_ [rows, q_dim], gate_up_ [rows, 2F].
  int64_t ws_rows_ = 0;
  cuda::DeviceBuffer<cuda::bf16> x_, qkv_, att_, gate_up_;
  // Activation quantization: the scheme, a copy of x_ per linear (static scales that differ
  // within a group), per-sequence maxima (per tensor).
  std::optional<ActivationScheme> act_;
  cuda::DeviceBuffer<cuda::bf16> xa_;
  cuda::DeviceBuffer<unsigned> act_seg_;
  cuda::DeviceBuffer<int32_t> ids_;
  // window_nll's buffers, kept across calls: hidden states, one window's logits, per-token NLLs
  // and targets of a batch.
  cuda::DeviceBuffer<float> hidden_, logits_, nll_;
  cuda::DeviceBuffer<int32_t> targets_;
  std::unique_ptr<cuda::OpProfile> profile_;
};

// Uploads a host tensor of any float dtype as bf16 into dst (resized), or into numel()
// elements at dst.
void upload_as_bf16(const Tensor& t, cuda::DeviceBuffer<cuda::bf16>& dst, cudaStream_t s);
void upload_as_bf16(const Tensor& t, cuda::bf16* dst, cudaStream_t s);

}  // namespace lowbit
