#include "train/llama_backward_cuda.h"

#include "backend/cuda/adamw.cuh"
#include "backend/cuda/compact_weight.cuh"
#include "backend/cuda/mixed_gemm.cuh"
#include "backend/cuda/ops_backward.cuh"
#include "core/error.h"
#include "model/llama_block.h"
#include "train/adamw_cuda.h"
#include "train/compact_base.h"
#include "train/step_engine.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <set>
#include <string>
#include <tuple>

namespace lowbit::train {

namespace {

using cuda::DeviceBuffer;

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

void upload_f32(const Tensor& t, DeviceBuffer<float>& dst, cudaStream_t s) {
  const Tensor f = t.dtype() == DType::F32 && t.is_contiguous() ? t : t.to_f32();
  dst.resize(size_t(f.numel()));
  cuda::upload(dst.get(), f.data_as<float>(), size_t(f.numel()), s);
  // The source may be a temporary.
  LB_CUDA_CHECK(cudaStreamSynchronize(s));
}

// One frozen linear in its compact form (train/compact_base.h): F32 is used in place, every other
// kind is expanded into the shared scratch before each use.
struct GpuLinear {
  CompactKind kind = CompactKind::F32;
  DeviceBuffer<float> f32, scales, zeros, codebook, tau;
  DeviceBuffer<uint16_t> half;
  DeviceBuffer<uint8_t> codes;
  DeviceBuffer<int32_t> g_idx;
  cuda::CompactWeightView view;  // pointers into the buffers above
  int64_t numel = 0;

  size_t bytes() const {
    return f32.bytes() + scales.bytes() + zeros.bytes() + codebook.bytes() + tau.bytes() + half.bytes() +
           codes.bytes() + g_idx.bytes();
  }
};

template <typename T>
const T* upload_vec(const std::vector<T>& v, DeviceBuffer<T>& dst, cudaStream_t s) {
  if (v.empty()) return nullptr;
  dst.resize(v.size());
  cuda::upload(dst.get(), v.data(), v.size(), s);
  return dst.get();
}

// Uploads w (the caller synchronizes before w goes away).
void upload_linear(const CompactLinear& w, GpuLinear& g, cudaStream_t s) {
  g.kind = w.kind;
  g.numel = w.numel();
  cuda::CompactWeightView& v = g.view;
  v.rows = w.rows;
  v.cols = w.cols;
  switch (w.kind) {
    case CompactKind::F32: upload_vec(w.f32, g.f32, s); return;
    case CompactKind::Half16:
      v.kind = cuda::CompactWeightView::kHalf16;
      v.half = upload_vec(w.half, g.half, s);
      v.half_is_bf16 = w.half_dtype == DType::BF16;
      return;
    case CompactKind::Int:
    case CompactKind::Codebook: break;
  }
  v.kind = w.kind == CompactKind::Int ? cuda::CompactWeightView::kInt : cuda::CompactWeightView::kCodebook;
  v.codes = upload_vec(w.codes, g.codes, s);
  v.code_bits = w.code_bits;
  v.scales = upload_vec(w.scales, g.scales, s);
  v.zeros = upload_vec(w.zeros, g.zeros, s);
  v.codebook = upload_vec(w.codebook, g.codebook, s);
  v.tau = upload_vec(w.tau, g.tau, s);
  v.g_idx = upload_vec(w.g_idx, g.g_idx, s);
  v.group_size = w.group_size;
  v.flat_groups = w.flat_groups;
  LB_CHECK(w.round_to == DType::F32 || w.round_to == DType::BF16 || w.round_to == DType::F16,
           "a compact linear rounds to {}, not a float type", dtype_name(w.round_to));
  v.round_to = w.round_to == DType::BF16 ? 1 : w.round_to == DType::F16 ? 2 : 0;
}

struct GpuBlock {
  DeviceBuffer<float> input_norm, post_norm;  // [H]
  std::array<GpuLinear, 7> linear;            // [out, in], by LinearKind
};

// One linear's adapter on the GPU, its gradient, and what its forward keeps for the backward.
struct GpuAdapter {
  int64_t r = 0;
  bool iec = false;            // IEC's scalars (train/iec.h)
  float a_s = 0, b_s = 0;      // their values
  DeviceBuffer<float> a, b;    // [r, in], [out, r]
  DeviceBuffer<uint16_t> a16, b16;  // bf16 mode: a, b rounded to bf16 (the products' operands)
  DeviceBuffer<float> da, db;  // the same shapes
  DeviceBuffer<float> acc_a, acc_b;  // the same: the sum of earlier micro-batches' da, db (deferred)
  DeviceBuffer<float> m_a, v_a, m_b, v_b;  // held adapters: AdamW's moments of a and b
  DeviceBuffer<float> dscales; // [2]: the gradients of a_s and b_s
  DeviceBuffer<float> t;       // dropout(x) A^T [N, r] (with IEC: + a_s * the group means of x)
};

// The phases of a step LOWBIT_TRAIN_PROFILE=1 times (StepEngine::take_phase_seconds).
constexpr const char* kPhaseForwardGemm = "forward GEMMs";  // the block linears' and adapters' (recomputation included)
constexpr const char* kPhaseBackwardGemm = "backward GEMMs";
constexpr const char* kPhaseExpand = "base expansion";
constexpr const char* kPhaseAttention = "attention";
constexpr const char* kPhaseHead = "loss/LM head";  // final norm, head products, cross-entropy
constexpr const char* kPhaseOther = "norms/RoPE/SwiGLU/casts";
constexpr const char* kPhaseTransfer = "host<->device transfers";
constexpr const char* kPhaseAdamW = "AdamW (device)";  // the held adapters' norm, clipping and update

bool profile_requested() {
  const char* v = std::getenv("LOWBIT_TRAIN_PROFILE");
  return v != nullptr && std::strcmp(v, "1") == 0;
}

// LOWBIT_TRAIN_FUSE=0: the bf16 step's elementwise work one launch at a time (see Impl::fuse).
bool fusion_requested() {
  const char* v = std::getenv("LOWBIT_TRAIN_FUSE");
  return v == nullptr || std::strcmp(v, "0") != 0;
}

}  // namespace

struct CudaLlamaBackward::Impl {
  const LlamaModel& model;
  const LlamaConfig& c;
  const ComputePrecision compute;
  const bool bf16;  // compute == Bf16
  cuda::Context ctx;
  std::vector<GpuBlock> blocks;
  DeviceBuffer<float> final_norm, head;  // [H], [V, H] (head: fp32 and tf32 modes)
  DeviceBuffer<uint16_t> head16;         // [V, H] bf16 (bf16 mode)
  DeviceBuffer<float> scratch;           // [the largest compact linear]: the expanded weight in use
  // bf16 mode: one block's seven linears in bf16, [sum of out * in] at block_offset[kind], the
  // weights of block cached_layer for the kinds in cached (the base is frozen, so an expanded
  // linear stays valid until another block's takes its place: a block's recomputation and its
  // backward, and the last block of the forward and the first of the backward, share one
  // expansion).
  DeviceBuffer<uint16_t> scratch16;
  std::array<int64_t, 7> block_offset{};
  int64_t block_elements = 0;  // the seven linears' out * in
  int64_t cached_layer = -1;
  std::array<bool, 7> cached{};
  // Whether the cached linears came from hooks->weight (CudaStepHooks): a hooked weight may
  // change between calls (DB-LLM's scales after an optimizer step) and the same engine runs
  // unhooked too (DB-LLM's teacher), so a call with or after hooked weights starts uncached.
  bool cached_hooked = false;
  // bf16 mode with a resident base (base_residency.h): every block's seven linears in bf16,
  // [L, resident_stride] with block l's linear k at l * resident_stride + block_offset[k]; the
  // blocks' compact linears are not held then, nor the bf16 scratch, so hooks->weight is refused
  // with a resident base (check_hooks): a hook's weight is never read from or replaced by it.
  bool resident = false;
  int64_t resident_stride = 0;
  DeviceBuffer<uint16_t> base16;
  // bf16 mode: the products' bf16 operands. xb [N, max in] an input (or the final norm's output),
  // dyb [max(N * max out, logits chunk)] an upstream gradient (dyb2 [N, F]: the up projection's,
  // beside the gate's in dyb, when SwiGLU's backward writes both), tb / dtb [N, r] the adapter's
  // product and its gradient.
  DeviceBuffer<uint16_t> xb, dyb, dyb2, tb, dtb;
  DeviceBuffer<uint16_t> head_xb;  // bf16 mode: head_logits' rows of hidden states [rows, H]
  // bf16 mode, fused (LOWBIT_TRAIN_FUSE unset or not 0): the kernels that produce a product's fp32
  // input write its bf16 rounding too (RMSNorm into xb, SwiGLU into xb, SwiGLU's backward into
  // dyb and dyb2), and xb is not cast again while it holds the input (xb_holds: the fp32 buffer
  // whose values xb holds rounded, N * xb_count of them; null when none, e.g. after a dropped-out
  // input took xb). The values are those of the one-launch-at-a-time path bit for bit (the same
  // roundings of the same fp32 values, by the same kernels' code); only launches and memory
  // traffic go. With fuse off, every product casts its operands itself.
  bool fuse = true;
  // tf32 and bf16 modes with LOWBIT_TRAIN_ATTENTION=tf32: the attention's products (scores,
  // probabilities times values and their gradients) on tensor cores with TF32 operands and fp32
  // accumulation (PEFT's bf16 autocast runs them with bf16 operands); otherwise pure fp32 SGEMMs.
  bool attention_tf32 = false;
  const float* xb_holds = nullptr;
  int64_t xb_count = 0;
  std::unique_ptr<cuda::OpProfile> profile;  // LOWBIT_TRAIN_PROFILE=1
  const char* phase_now = nullptr;
  GpuModelBytes model_bytes;
  std::string base_layout;
  std::optional<CompactLayout> layout;  // of every linear, when they share one
  size_t peak_used = 0;  // the most cudaMemGetInfo showed in use after a step
  const LoraAdapters* uploaded = nullptr;  // the adapters whose values the GPU holds
  // Held adapters (StepEngine::hold_adapters): the trainer's host object whose values live on the
  // device (a, b, acc_a, acc_b as the step's gradient sum, the moments); no other adapters are
  // taken meanwhile.
  const LoraAdapters* held = nullptr;
  DeviceBuffer<double> norm_partial, norm_sum;
  // Deferred gradients (StepOptions::more_micro_batches): acc_a, acc_b hold the sum of earlier
  // calls' gradients, for these adapters and this host buffer.
  const LoraAdapters* pending_lora = nullptr;
  const LoraAdapters* pending_grads = nullptr;
  // RoPE tables [T, hd / 2] of the current sequence length.
  int64_t rope_T = 0;
  DeviceBuffer<float> rope_cos, rope_sin;

  // Per-step state (grown on demand).
  std::vector<std::array<GpuAdapter, 7>> adapters;
  DeviceBuffer<float> h, grad, checkpoints;  // [N, H] the hidden state and its gradient; [L, N, H]
  DeviceBuffer<float> x1, q, k, v, att, h_mid, x2, gate, up, act, y;
  DeviceBuffer<float> probs, dprobs;  // [nh, T, T]
  DeviceBuffer<float> xd, dxd, dt;   // [N, max in], [N, max in], [N, r]
  DeviceBuffer<float> dact, dgate, dup, dx, dn, datt, dq, dk, dv;
  DeviceBuffer<float> logits;  // [chunk, V]
  DeviceBuffer<double> loss;   // [N]
  DeviceBuffer<double> partial;  // [N, r]: the terms of an IEC scalar's gradient
  DeviceBuffer<int32_t> targets;

  // The step's settings.
  const LoraAdapters* lora = nullptr;
  const CudaStepHooks* hooks = nullptr;  // forward_backward_hooked's
  DeviceBuffer<float> hook_dw;           // [max out * in]: a linear's dW for hooks->weight_grad
  bool dropout_on = false;
  uint64_t seed = 0;
  int64_t B = 0, T = 0, N = 0;

  Impl(const LlamaModel& m, int device, const StepEngineOptions& o)
      : model(m), c(m.config()), compute(o.compute), bf16(o.compute == ComputePrecision::Bf16), ctx(device) {
    const cudaStream_t s = ctx.stream();
    if (profile_requested()) profile = std::make_unique<cuda::OpProfile>(s);
    fuse = bf16 && fusion_requested();
    attention_tf32 = tf32_attention(compute);
    LB_CHECK(bf16 || o.base_resident != BaseResidency::On,
             "--base-resident on with --compute {}: a resident base is the bf16 mode's", compute_precision_name(compute));
    if (bf16) {
      for (LinearKind k : kAllLinears) {
        block_offset[size_t(k)] = block_elements;
        block_elements += linear_out_features(c, k) * linear_in_features(c, k);
      }
    }
    upload_head();
    if (bf16 && o.base_resident != BaseResidency::Off) choose_resident(o);
    blocks.resize(size_t(c.num_hidden_layers));
    std::set<std::string> kinds;  // every block's linear kinds, for the log
    bool uniform = true;
    for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
      GpuBlock& g = blocks[size_t(l)];
      // Norms from the weights a block runs with (a method may rewrite them).
      {
        auto w = model.block_weights_replaced(l) ? model.block_weights(l) : nullptr;
        const WeightSource& src = *model.checkpoint().weights;
        upload_f32(w ? w->input_norm : src.get(hf_tensor_name(TensorKind::AttnNorm, l)), g.input_norm, s);
        upload_f32(w ? w->post_norm : src.get(hf_tensor_name(TensorKind::FfnNorm, l)), g.post_norm, s);
      }
      // One block's compact linears on the host at a time.
      std::array<CompactLinear, 7> lin = make_compact_block(model, l);
      for (LinearKind k : kAllLinears) {
        const CompactLinear& w = lin[size_t(k)];
        upload_linear(w, g.linear[size_t(k)], s);
        if (resident) continue;
        model_bytes.linears += int64_t(g.linear[size_t(k)].bytes());
        // bf16 rounds every linear into its scratch, F32 ones too.
        if (!bf16 && w.needs_scratch()) model_bytes.scratch = std::max(model_bytes.scratch, 4 * w.numel());
      }
      if (resident) {
        // Expanded once, by the per-step path's kernels: the same values; then the compact form
        // goes (nothing reads it again).
        for (LinearKind k : kAllLinears)
          expand_bf16(g.linear[size_t(k)], base16.get() + l * resident_stride + block_offset[size_t(k)]);
        ctx.synchronize();
        for (GpuLinear& x : g.linear) x = GpuLinear{};
      }
      ctx.synchronize();
      for (CompactLinear& w : lin) w.f32 = {}, w.half = {}, w.codes = {};
      CompactBase one{{std::move(lin)}};
      kinds.merge(one.kind_names());
      if (l == 0) {
        layout = one.uniform_layout();
      } else {
        uniform = uniform && layout && one.uniform_layout() == layout;
      }
    }
    for (const auto& k : kinds) base_layout += (base_layout.empty() ? "" : " + ") + k;
    if (!uniform) layout.reset();
    if (resident) {
      model_bytes.resident = int64_t(base16.bytes());
    } else if (bf16) {
      model_bytes.scratch = 2 * block_elements;
      scratch16.resize(size_t(block_elements));
    } else {
      scratch.resize(size_t(model_bytes.scratch / 4));
    }
    model_bytes.norms = int64_t(final_norm.bytes());
    for (const GpuBlock& b : blocks) model_bytes.norms += int64_t(b.input_norm.bytes() + b.post_norm.bytes());
    model_bytes.head = int64_t(bf16 ? head16.bytes() : head.bytes());
  }

  // The final norm and the LM head (before the blocks: the resident base's choice sees the
  // memory they leave).
  void upload_head() {
    const cudaStream_t s = stream();
    upload_f32(model.final_norm_weight(), final_norm, s);
    const size_t nhead = size_t(c.vocab_size * c.hidden_size);
    if (bf16) {
      // Through a bounded fp32 staging buffer, rounded on the device: the fp32 head never exists
      // whole on the GPU.
      head16.resize(nhead);
      DeviceBuffer<float> stage(std::min<size_t>(nhead, size_t(1) << 24));
      for (size_t i = 0; i < nhead; i += stage.size()) {
        const size_t n = std::min(stage.size(), nhead - i);
        cuda::upload(stage.get(), model.lm_head_f32() + i, n, s);
        cuda::to_bf16(stage.get(), head16.get() + i, int64_t(n), s);
      }
      ctx.synchronize();
    } else {
      head.resize(nhead);
      cuda::upload(head.get(), model.lm_head_f32(), nhead, s);
      ctx.synchronize();
    }
  }

  // base_residency.h's choice for On or Auto, from the device's free memory now (the head and
  // final norm held); allocates the resident base when chosen.
  void choose_resident(const StepEngineOptions& o) {
    resident_stride = resident_block_elements(c);
    const int64_t need = 2 * c.num_hidden_layers * resident_stride;  // bytes
    size_t free = 0, total = 0;
    LB_CUDA_CHECK(cudaMemGetInfo(&free, &total));
    // The blocks' norms go up after this: part of `other`.
    const int64_t other = o.other_bytes + 2 * c.num_hidden_layers * c.hidden_size * 4;
    constexpr double GiB = double(int64_t(1) << 30);
    if (o.base_resident == BaseResidency::On) {
      LB_CHECK(need + other <= int64_t(free),
               "--base-resident on: the bf16 base needs {:.2f} GiB and the run's other buffers {:.2f} GiB, device {} "
               "has {:.2f} GiB free",
               double(need) / GiB, double(other) / GiB, ctx.name(), double(free) / GiB);
    } else if (!resident_base_fits(need, int64_t(free), other)) {
      return;
    }
    resident = true;
    base16.resize(size_t(c.num_hidden_layers * resident_stride));
    // The rounding's tail of each block is never read; zeroed so the buffer holds no garbage.
    LB_CUDA_CHECK(cudaMemsetAsync(base16.get(), 0, base16.bytes(), stream()));
  }

  // w rounded to bf16 into dst [out * in] (the bf16 scratch's or the resident base's).
  void expand_bf16(const GpuLinear& g, uint16_t* dst) {
    if (g.kind == CompactKind::F32) {
      cuda::to_bf16(g.f32.get(), dst, g.numel, stream());
    } else {
      cuda::expand_compact_weight_bf16(g.view, dst, stream());
    }
  }

  // Marks the start of a phase (LOWBIT_TRAIN_PROFILE=1): what the stream runs from here to the
  // next change counts as `p`.
  void phase(const char* p) {
    if (profile == nullptr || p == phase_now) return;
    profile->mark(p);
    phase_now = p;
  }
  // Adds the marked phases' times to the totals (at the end of a call, after its last sync).
  void collect_phases() {
    if (profile == nullptr) return;
    profile->collect();
    phase_now = nullptr;
  }

  // The step's fp32 products, in fp32 (SGEMM, no TF32) or tf32 (per call): ops_backward.cuh's
  // linear_f32 / linear_backward_f32 contracts.
  void mm(const float* x, const float* w, float* y, int64_t rows, int64_t in, int64_t out, float alpha = 1.0f,
          bool accumulate = false) {
    if (compute == ComputePrecision::Tf32) {
      cuda::linear_tf32(ctx, x, w, y, rows, in, out, alpha, accumulate);
    } else {
      cuda::linear_f32(ctx, x, w, y, rows, in, out, alpha, accumulate);
    }
  }
  void mm_backward(const float* x, const float* w, const float* dy, float* dx, float* dw, int64_t rows, int64_t in,
                   int64_t out, bool accumulate_dx, float alpha = 1.0f) {
    if (compute == ComputePrecision::Tf32) {
      cuda::linear_backward_tf32(ctx, x, w, dy, dx, dw, rows, in, out, accumulate_dx, alpha);
    } else {
      cuda::linear_backward_f32(ctx, x, w, dy, dx, dw, rows, in, out, accumulate_dx, alpha);
    }
  }
  // dst [n] = bf16(src), as an "other" phase.
  void cast(const float* src, DeviceBuffer<uint16_t>& dst, int64_t n) {
    phase(kPhaseOther);
    dst.resize(size_t(n));
    cuda::to_bf16(src, dst.get(), n, stream());
  }
  // xb = bf16(x [n]) unless it holds that already (fused mode).
  void cast_input(const float* x, int64_t n) {
    if (fuse && xb_holds == x && xb_count == n) return;
    cast(x, xb, n);
    note_xb(x, n);
  }
  // xb now holds bf16(x [n]) (x null: something not to be reused).
  void note_xb(const float* x, int64_t n) {
    xb_holds = fuse ? x : nullptr;
    xb_count = n;
  }

  // The fp32 weight [out, in] of a block's linear: hooks->weight's when given, else in place
  // (F32) or expanded into the scratch, which holds it until the next call.
  const float* weight(int64_t layer, LinearKind k) {
    LB_ASSERT(!bf16);
    if (hooks != nullptr && hooks->weight) return hooks->weight(layer, k);
    GpuLinear& g = blocks[size_t(layer)].linear[size_t(k)];
    if (g.kind == CompactKind::F32) return g.f32.get();
    phase(kPhaseExpand);
    cuda::expand_compact_weight(g.view, scratch.get(), stream());
    return scratch.get();
  }

  bool hooked_weights() const { return hooks != nullptr && bool(hooks->weight); }
  // At the start of a call: the bf16 cache is dropped when this call's or the last call's weights
  // are a hook's.
  void start_weight_cache() {
    if (hooked_weights() || cached_hooked) cached_layer = -1;
    cached_hooked = hooked_weights();
  }

  // bf16 mode: the weight [out, in] rounded to bf16 in the bf16 scratch (until the next call);
  // with hooks->weight, the hook's fp32 weight rounded (the bf16 of the fp32 weight, as for the
  // model's own linears).
  const uint16_t* weight16(int64_t layer, LinearKind k) {
    LB_ASSERT(bf16);
    if (resident) {
      LB_ASSERT(!hooked_weights());  // check_hooks
      return base16.get() + layer * resident_stride + block_offset[size_t(k)];
    }
    uint16_t* dst = scratch16.get() + block_offset[size_t(k)];
    if (layer != cached_layer) {
      cached_layer = layer;
      cached.fill(false);
    }
    if (cached[size_t(k)]) return dst;
    if (hooked_weights()) {
      const float* w = hooks->weight(layer, k);
      phase(kPhaseExpand);
      cuda::to_bf16(w, dst, linear_out_features(c, k) * linear_in_features(c, k), stream());
      cached[size_t(k)] = true;
      return dst;
    }
    phase(kPhaseExpand);
    expand_bf16(blocks[size_t(layer)].linear[size_t(k)], dst);
    cached[size_t(k)] = true;
    return dst;
  }

  cudaStream_t stream() const { return ctx.stream(); }

  void set_rope(int64_t len) {
    if (rope_T == len) return;
    const RopeTable rt = make_rope_table(c, len);
    LB_ASSERT(rt.half * 2 == c.head_dim);
    rope_cos.resize(rt.cos.size());
    rope_sin.resize(rt.sin.size());
    cuda::upload(rope_cos.get(), rt.cos.data(), rt.cos.size(), stream());
    cuda::upload(rope_sin.get(), rt.sin.data(), rt.sin.size(), stream());
    ctx.synchronize();
    rope_T = len;
  }

  // The adapters (and zeroed gradient buffers) for this step: uploaded unless `unchanged` says
  // the GPU already holds these values (StepOptions::adapters_unchanged).
  void set_adapters(const LoraAdapters* l, bool grads, bool unchanged) {
    lora = l;
    if (l == nullptr) return;
    LB_CHECK(held == nullptr || l == held,
             "training on the GPU: the device holds a trainer's adapters (TrainOptions::optimizer_on_device); a step "
             "with other adapters waits until it releases them");
    // Held adapters are current on the device only (the host object may be stale).
    const bool upload = held == nullptr && !(unchanged && uploaded == l && adapters.size() == l->layers.size());
    uploaded = nullptr;  // until the upload below is queued
    adapters.resize(l->layers.size());
    for (size_t i = 0; i < l->layers.size(); ++i)
      for (LinearKind k : kAllLinears) {
        const LoraLinear& a = l->layers[i][size_t(k)];
        GpuAdapter& g = adapters[i][size_t(k)];
        g.r = a.active() ? a.r : 0;
        if (!a.active()) continue;
        const int64_t in = linear_in_features(c, k), out = linear_out_features(c, k);
        LB_CHECK(a.in == in && a.out == out && int64_t(a.a.size()) == a.r * in && int64_t(a.b.size()) == out * a.r,
                 "LoRA adapter of block {} {}: A {} values and B {} for r {} on a [{}, {}] linear", i,
                 linear_name(k), a.a.size(), a.b.size(), a.r, out, in);
        g.iec = a.has_iec();
        if (g.iec) {
          LB_CHECK(a.a_scale.size() == 1 && a.b_scale.size() == 1 && in % a.r == 0 && out % a.r == 0,
                   "IEC adapter of block {} {}: {} and {} scalars, rank {} on a [{}, {}] linear", i, linear_name(k),
                   a.a_scale.size(), a.b_scale.size(), a.r, out, in);
          g.a_s = a.a_scale[0];
          g.b_s = a.b_scale[0];
          partial.resize(size_t(N * a.r));
        }
        if (upload) {
          phase(kPhaseTransfer);
          g.a.resize(a.a.size());
          g.b.resize(a.b.size());
          cuda::upload(g.a.get(), a.a.data(), a.a.size(), stream());
          cuda::upload(g.b.get(), a.b.data(), a.b.size(), stream());
          if (bf16) {
            cast(g.a.get(), g.a16, int64_t(a.a.size()));
            cast(g.b.get(), g.b16, int64_t(a.b.size()));
          }
        }
        g.t.resize(size_t(N * a.r));
        if (grads) {
          g.da.resize(a.a.size());
          g.db.resize(a.b.size());
          LB_CUDA_CHECK(cudaMemsetAsync(g.da.get(), 0, a.a.size() * sizeof(float), stream()));
          LB_CUDA_CHECK(cudaMemsetAsync(g.db.get(), 0, a.b.size() * sizeof(float), stream()));
          g.dscales.resize(2);
          LB_CUDA_CHECK(cudaMemsetAsync(g.dscales.get(), 0, 2 * sizeof(float), stream()));
        }
      }
    uploaded = l;
  }

  GpuAdapter* adapter(int64_t layer, LinearKind k) {
    if (lora == nullptr) return nullptr;
    GpuAdapter& a = adapters[size_t(layer)][size_t(k)];
    return a.r > 0 ? &a : nullptr;
  }
  bool dropped() const { return dropout_on && lora->config.dropout > 0; }
  // The dropout mask stream of (layer, kind): train/llama_backward.cpp's keep_scale.
  uint64_t mask_stream(int64_t layer, LinearKind k) const {
    return seed ^ splitmix64(uint64_t(layer) * 8 + uint64_t(k) + 1);
  }

  void alloc(int64_t B_, int64_t T_, bool backward) {
    B = B_;
    T = T_;
    N = B * T;
    const int64_t H = c.hidden_size, F = c.intermediate_size, L = c.num_hidden_layers;
    const int64_t qd = c.num_attention_heads * c.head_dim, kvd = c.num_key_value_heads * c.head_dim;
    const int64_t wide = std::max({H, F, qd});
    for (auto* b : {&h, &grad, &x1, &h_mid, &x2, &y, &dx, &dn}) b->resize(size_t(N * H));
    for (auto* b : {&q, &att, &datt, &dq}) b->resize(size_t(N * qd));
    for (auto* b : {&k, &v, &dk, &dv}) b->resize(size_t(N * kvd));
    for (auto* b : {&gate, &up, &act, &dact, &dgate, &dup}) b->resize(size_t(N * F));
    for (auto* b : {&xd, &dxd}) b->resize(size_t(N * wide));
    probs.resize(size_t(c.num_attention_heads * T * T));
    dprobs.resize(size_t(c.num_attention_heads * T * T));
    if (backward) checkpoints.resize(size_t(L * N * H));
    if (bf16) {
      xb.resize(size_t(N * wide));
      dyb.resize(size_t(N * wide));
      if (fuse && backward) dyb2.resize(size_t(N * F));
    }
    note_xb(nullptr, 0);  // xb may have been reallocated
    loss.resize(size_t(N));
    targets.resize(size_t(N));
  }

  // y [N, out] = x W^T (+ scaling * dropout(x) A^T B^T).
  void linear_forward(int64_t layer, LinearKind k, const float* x, float* out_y) {
    if (bf16) return linear_forward_bf16(layer, k, x, out_y);
    const int64_t in = linear_in_features(c, k), out = linear_out_features(c, k);
    const float* w = weight(layer, k);
    phase(kPhaseForwardGemm);
    mm(x, w, out_y, N, in, out);
    const GpuAdapter* a = adapter(layer, k);
    if (a == nullptr) return;
    const float* xin = x;
    if (dropped()) {
      cuda::dropout_mask_f32(x, xd.get(), N * in, mask_stream(layer, k), lora->config.dropout, false, stream());
      xin = xd.get();
    }
    const float scaling = float(lora->config.scaling());
    mm(xin, a->a.get(), a->t.get(), N, in, a->r);
    // IEC (train/iec.h): h = xd A^T + a_s mean_groups(x) (the means read x, not the dropped-out
    // input), y += scaling (h B^T + b_s repeat_interleave(h)).
    if (a->iec && a->a_s != 0.0f) cuda::group_mean_add_f32(x, a->t.get(), N, in, a->r, a->a_s, stream());
    mm(a->t.get(), a->b.get(), out_y, N, a->r, out, scaling, true);
    if (a->iec && a->b_s != 0.0f) cuda::repeat_add_f32(a->t.get(), out_y, N, out, a->r, a->b_s * scaling, stream());
  }

  // The same in bf16 (llama_backward_cuda.h, "Precision"): every product's operands rounded to
  // bf16, its output fp32; t, IEC's terms and y stay fp32.
  void linear_forward_bf16(int64_t layer, LinearKind k, const float* x, float* out_y) {
    const int64_t in = linear_in_features(c, k), out = linear_out_features(c, k);
    cast_input(x, N * in);
    const uint16_t* w = weight16(layer, k);
    phase(kPhaseForwardGemm);
    cuda::linear_bf16(ctx, xb.get(), w, out_y, N, in, out);
    GpuAdapter* a = adapter(layer, k);
    if (a == nullptr) return;
    if (dropped()) {
      phase(kPhaseOther);
      cuda::dropout_mask_f32(x, xd.get(), N * in, mask_stream(layer, k), lora->config.dropout, false, stream());
      cast(xd.get(), xb, N * in);
      note_xb(nullptr, 0);
    }
    const float scaling = float(lora->config.scaling());
    phase(kPhaseForwardGemm);
    cuda::linear_bf16(ctx, xb.get(), a->a16.get(), a->t.get(), N, in, a->r);
    if (a->iec && a->a_s != 0.0f) cuda::group_mean_add_f32(x, a->t.get(), N, in, a->r, a->a_s, stream());
    cast(a->t.get(), tb, N * a->r);
    phase(kPhaseForwardGemm);
    cuda::linear_bf16(ctx, tb.get(), a->b16.get(), out_y, N, a->r, out, scaling, true);
    if (a->iec && a->b_s != 0.0f) cuda::repeat_add_f32(a->t.get(), out_y, N, out, a->r, a->b_s * scaling, stream());
  }

  // dx [N, in] = (or += with accumulate) the gradient at x for dy [N, out]; LoRA gradients into
  // the adapter's da, db.
  void linear_backward(int64_t layer, LinearKind k, const float* x, const float* dy, float* dxo, bool accumulate) {
    if (bf16) return linear_backward_bf16(layer, k, x, dy, dxo, accumulate);
    const int64_t in = linear_in_features(c, k), out = linear_out_features(c, k);
    const float* w = weight(layer, k);
    phase(kPhaseBackwardGemm);
    mm_backward(x, w, dy, dxo, nullptr, N, in, out, accumulate);
    if (hooks != nullptr && hooks->weight_grad) hooked_weight_grad(layer, k, x, dy);
    GpuAdapter* a = adapter(layer, k);
    if (a == nullptr) return;
    const float scaling = float(lora->config.scaling());
    // t = xd A^T, y += scaling t B^T:  dB += scaling dy^T t,  dt = scaling dy B.
    dt.resize(size_t(N * a->r));
    mm_backward(a->t.get(), a->b.get(), dy, dt.get(), a->db.get(), N, a->r, out, false, scaling);
    if (a->iec) {
      // The b_s term: dh_k += b_s s sum of dy over output chunk k, d b_s += s sum_j dy_j h_(j / chunk);
      // then the a_s term: d a_s += dh . mean_groups(x) (train/iec.h's iec_lora_backward).
      cuda::chunk_sum_backward_f32(dy, a->t.get(), dt.get(), partial.get(), N, out, a->r, scaling, a->b_s, stream());
      cuda::sum_into_f32(partial.get(), N * a->r, a->dscales.get() + 1, stream());
      cuda::group_dot_f32(x, dt.get(), partial.get(), N, in, a->r, stream());
      cuda::sum_into_f32(partial.get(), N * a->r, a->dscales.get(), stream());
    }
    if (!dropped()) {
      // dA += dt^T x,  dx += dt A.
      mm_backward(x, a->a.get(), dt.get(), dxo, a->da.get(), N, in, a->r, true);
    } else {
      // The mask drawn again: dA += dt^T xd,  dxd = dt A,  dx += dxd * mask.
      cuda::dropout_mask_f32(x, xd.get(), N * in, mask_stream(layer, k), lora->config.dropout, false, stream());
      mm_backward(xd.get(), a->a.get(), dt.get(), dxd.get(), a->da.get(), N, in, a->r, false);
      cuda::dropout_mask_f32(dxd.get(), dxo, N * in, mask_stream(layer, k), lora->config.dropout, true, stream());
    }
    // IEC's means read x itself: dx_i += a_s dh_(i / group) / group.
    if (a->iec && a->a_s != 0.0f) cuda::group_mean_backward_f32(dt.get(), dxo, N, in, a->r, a->a_s, stream());
  }

  // The same in bf16: dy, t, dt and the (dropped-out) input rounded to bf16 for the products; dx,
  // dA, dB, dt and IEC's terms accumulate in fp32. dy16: bf16(dy) when the caller has it (fused
  // mode), else null.
  void linear_backward_bf16(int64_t layer, LinearKind k, const float* x, const float* dy, float* dxo,
                            bool accumulate, const uint16_t* dy16 = nullptr) {
    const int64_t in = linear_in_features(c, k), out = linear_out_features(c, k);
    if (dy16 == nullptr) {
      cast(dy, dyb, N * out);
      dy16 = dyb.get();
    }
    const uint16_t* w = weight16(layer, k);
    phase(kPhaseBackwardGemm);
    cuda::linear_backward_bf16(ctx, nullptr, w, dy16, dxo, nullptr, N, in, out, accumulate);
    // dy16, not dyb: fused, the up projection's upstream gradient is in dyb2.
    if (hooks != nullptr && hooks->weight_grad) hooked_weight_grad_bf16(layer, k, x, dy16);
    GpuAdapter* a = adapter(layer, k);
    if (a == nullptr) return;
    const float scaling = float(lora->config.scaling());
    dt.resize(size_t(N * a->r));
    cast(a->t.get(), tb, N * a->r);
    phase(kPhaseBackwardGemm);
    cuda::linear_backward_bf16(ctx, tb.get(), a->b16.get(), dy16, dt.get(), a->db.get(), N, a->r, out, false,
                               scaling);
    if (a->iec) {
      cuda::chunk_sum_backward_f32(dy, a->t.get(), dt.get(), partial.get(), N, out, a->r, scaling, a->b_s, stream());
      cuda::sum_into_f32(partial.get(), N * a->r, a->dscales.get() + 1, stream());
      cuda::group_dot_f32(x, dt.get(), partial.get(), N, in, a->r, stream());
      cuda::sum_into_f32(partial.get(), N * a->r, a->dscales.get(), stream());
    }
    cast(dt.get(), dtb, N * a->r);
    if (!dropped()) {
      cast_input(x, N * in);
      phase(kPhaseBackwardGemm);
      cuda::linear_backward_bf16(ctx, xb.get(), a->a16.get(), dtb.get(), dxo, a->da.get(), N, in, a->r, true);
    } else {
      phase(kPhaseOther);
      cuda::dropout_mask_f32(x, xd.get(), N * in, mask_stream(layer, k), lora->config.dropout, false, stream());
      cast(xd.get(), xb, N * in);
      note_xb(nullptr, 0);
      phase(kPhaseBackwardGemm);
      cuda::linear_backward_bf16(ctx, xb.get(), a->a16.get(), dtb.get(), dxd.get(), a->da.get(), N, in, a->r, false);
      phase(kPhaseOther);
      cuda::dropout_mask_f32(dxd.get(), dxo, N * in, mask_stream(layer, k), lora->config.dropout, true, stream());
    }
    if (a->iec && a->a_s != 0.0f) cuda::group_mean_backward_f32(dt.get(), dxo, N, in, a->r, a->a_s, stream());
  }

  // The block's steps (model/llama_block.h) for training on the GPU: each linear with its LoRA
  // branch in the run's compute precision, the intermediates kept in the Impl's buffers for the
  // backward (the residual stream after the attention half in h_mid), each op timed under its
  // phase. No hooks: the training forward has none.
  class BlockSteps final : public BlockOps {
   public:
    BlockSteps(Impl& e, int64_t layer, float* hid) : e_(e), w_(e.blocks[size_t(layer)]), layer_(layer), hid_(hid) {}

    void norm(BlockHalf half) override {
      const int64_t H = e_.c.hidden_size;
      const float eps = float(e_.c.rms_norm_eps);
      e_.phase(kPhaseOther);
      const bool attn = half == BlockHalf::Attention;
      const float* x = attn ? hid_ : e_.h_mid.get();
      const float* w = attn ? w_.input_norm.get() : w_.post_norm.get();
      float* y = attn ? e_.x1.get() : e_.x2.get();
      if (e_.fuse) {
        // The norm's output and its bf16 rounding, the next products' input (Q, K, V or gate, up).
        cuda::rmsnorm_f32_bf16(x, w, y, e_.xb.get(), e_.N, H, eps, e_.stream());
        e_.note_xb(y, e_.N * H);
      } else {
        cuda::rmsnorm_f32(x, w, y, e_.N, H, eps, e_.stream());
        e_.note_xb(nullptr, 0);
      }
    }
    void hooks(InputSite) override {}
    void products(InputSite s) override {
      switch (s) {
        case InputSite::AttnIn:
          e_.linear_forward(layer_, LinearKind::Q, e_.x1.get(), e_.q.get());
          e_.linear_forward(layer_, LinearKind::K, e_.x1.get(), e_.k.get());
          e_.linear_forward(layer_, LinearKind::V, e_.x1.get(), e_.v.get());
          break;
        case InputSite::AttnOut: e_.linear_forward(layer_, LinearKind::O, e_.att.get(), e_.y.get()); break;
        case InputSite::MlpIn:
          e_.linear_forward(layer_, LinearKind::Gate, e_.x2.get(), e_.gate.get());
          e_.linear_forward(layer_, LinearKind::Up, e_.x2.get(), e_.up.get());
          break;
        case InputSite::MlpOut: e_.linear_forward(layer_, LinearKind::Down, e_.act.get(), e_.y.get()); break;
      }
    }
    void attention() override {
      const LlamaConfig& c = e_.c;
      const int64_t T = e_.T, nh = c.num_attention_heads, nkv = c.num_key_value_heads, hd = c.head_dim;
      const int64_t qd = nh * hd, kvd = nkv * hd;
      const cudaStream_t s = e_.stream();
      e_.phase(kPhaseOther);
      cuda::rope_f32(e_.q.get(), e_.N, T, nh, hd / 2, qd, e_.rope_cos.get(), e_.rope_sin.get(), false, s);
      cuda::rope_f32(e_.k.get(), e_.N, T, nkv, hd / 2, kvd, e_.rope_cos.get(), e_.rope_sin.get(), false, s);
      e_.phase(kPhaseAttention);
      if (e_.xb_holds == e_.att.get()) e_.note_xb(nullptr, 0);  // att is rewritten
      for (int64_t b = 0; b < e_.B; ++b) {
        const float* qb = e_.q.get() + b * T * qd;
        const float* kb = e_.k.get() + b * T * kvd;
        const float* vb = e_.v.get() + b * T * kvd;
        float* ob = e_.att.get() + b * T * qd;
        if (e_.compute == ComputePrecision::Fp32) {
          cuda::attention_f32(qb, kb, vb, ob, e_.probs.get(), T, nh, nkv, hd, s);
        } else {
          cuda::attention_gemm_f32(e_.ctx, qb, kb, vb, ob, e_.probs.get(), T, nh, nkv, hd, e_.attention_tf32);
        }
      }
    }
    void swiglu() override {
      e_.phase(kPhaseOther);
      const int64_t n = e_.N * e_.c.intermediate_size;
      if (e_.fuse) {
        // With its bf16 rounding: the down projection's input.
        cuda::swiglu_f32_bf16(e_.gate.get(), e_.up.get(), e_.act.get(), e_.xb.get(), n, e_.stream());
        e_.note_xb(e_.act.get(), n);
      } else {
        cuda::swiglu_f32(e_.gate.get(), e_.up.get(), e_.act.get(), n, e_.stream());
        e_.note_xb(nullptr, 0);
      }
    }
    void residual(BlockHalf half) override {
      const int64_t n = e_.N * e_.c.hidden_size;
      e_.phase(kPhaseOther);
      if (half == BlockHalf::Attention)
        cuda::sum_f32(hid_, e_.y.get(), e_.h_mid.get(), n, e_.stream());
      else
        cuda::sum_f32(e_.h_mid.get(), e_.y.get(), hid_, n, e_.stream());
    }

   private:
    Impl& e_;
    const GpuBlock& w_;
    const int64_t layer_;
    float* hid_;
  };

  // hidden [N, H] in place: h += attn(norm(h)); h += mlp(norm(h)); the intermediates kept.
  void block_forward(int64_t layer, float* hid) {
    BlockSteps steps(*this, layer, hid);
    run_block_steps(steps, block_steps());
  }

  // dh [N, H]: in, the gradient at the block's output; out, at its input h_in.
  void block_backward(int64_t layer, const float* h_in, float* dh) {
    const GpuBlock& w = blocks[size_t(layer)];
    const int64_t F = c.intermediate_size;
    const int64_t nh = c.num_attention_heads, nkv = c.num_key_value_heads, hd = c.head_dim;
    const int64_t qd = nh * hd, kvd = nkv * hd;
    const cudaStream_t s = stream();
    // MLP: h_out = h_mid + down(silu(gate(x2)) * up(x2)), x2 = norm(h_mid).
    linear_backward(layer, LinearKind::Down, act.get(), dh, dact.get(), false);
    phase(kPhaseOther);
    if (fuse) {
      // The gate's and up's upstream gradients with their bf16 roundings (the products' operands).
      cuda::swiglu_backward_f32_bf16(gate.get(), up.get(), dact.get(), dgate.get(), dup.get(), dyb.get(), dyb2.get(),
                                     N * F, s);
      linear_backward_bf16(layer, LinearKind::Gate, x2.get(), dgate.get(), dx.get(), false, dyb.get());
      linear_backward_bf16(layer, LinearKind::Up, x2.get(), dup.get(), dx.get(), true, dyb2.get());
    } else {
      cuda::swiglu_backward_f32(gate.get(), up.get(), dact.get(), dgate.get(), dup.get(), N * F, s);
      linear_backward(layer, LinearKind::Gate, x2.get(), dgate.get(), dx.get(), false);
      linear_backward(layer, LinearKind::Up, x2.get(), dup.get(), dx.get(), true);
    }
    phase(kPhaseOther);
    norm_backward_add(h_mid.get(), w.post_norm.get(), dh);  // dh is now d h_mid
    // Attention: h_mid = h_in + o(attn(rope(q(x1)), rope(k(x1)), v(x1))), x1 = norm(h_in).
    linear_backward(layer, LinearKind::O, att.get(), dh, datt.get(), false);
    phase(kPhaseAttention);
    for (int64_t b = 0; b < B; ++b) {
      const float* qb = q.get() + b * T * qd;
      const float* kb = k.get() + b * T * kvd;
      const float* vb = v.get() + b * T * kvd;
      const float* gb = datt.get() + b * T * qd;
      if (compute == ComputePrecision::Fp32) {
        cuda::attention_backward_f32(qb, kb, vb, gb, dq.get() + b * T * qd, dk.get() + b * T * kvd,
                                     dv.get() + b * T * kvd, probs.get(), dprobs.get(), T, nh, nkv, hd, s);
      } else {
        cuda::attention_backward_gemm_f32(ctx, qb, kb, vb, gb, dq.get() + b * T * qd, dk.get() + b * T * kvd,
                                          dv.get() + b * T * kvd, probs.get(), dprobs.get(), T, nh, nkv, hd,
                                          attention_tf32);
      }
    }
    phase(kPhaseOther);
    cuda::rope_f32(dq.get(), N, T, nh, hd / 2, qd, rope_cos.get(), rope_sin.get(), true, s);
    cuda::rope_f32(dk.get(), N, T, nkv, hd / 2, kvd, rope_cos.get(), rope_sin.get(), true, s);
    linear_backward(layer, LinearKind::Q, x1.get(), dq.get(), dx.get(), false);
    linear_backward(layer, LinearKind::K, x1.get(), dk.get(), dx.get(), true);
    linear_backward(layer, LinearKind::V, x1.get(), dv.get(), dx.get(), true);
    phase(kPhaseOther);
    norm_backward_add(h_in, w.input_norm.get(), dh);
  }

  // dh [N, H] += the gradient at x of rmsnorm(x) * w for the upstream gradient in dx: in one pass
  // when fused (the same values: ops_backward.cuh's rmsnorm_backward_add_f32).
  void norm_backward_add(const float* x, const float* w, float* dh) {
    const float eps = float(c.rms_norm_eps);
    if (fuse) {
      cuda::rmsnorm_backward_add_f32(x, w, dx.get(), dh, N, c.hidden_size, eps, stream());
    } else {
      cuda::rmsnorm_backward_f32(x, w, dx.get(), dn.get(), N, c.hidden_size, eps, stream());
      cuda::add_f32(dh, dn.get(), N * c.hidden_size, stream());
    }
  }

  // How a backward call treats its adapters' gradients: per StepOptions (downloaded, or summed
  // on the device until the step's last call downloads them), or summed into the held adapters'
  // step sum (kHeldFirst starts it).
  enum class Sum { kOptions, kHeldFirst, kHeldNext };

  StepResult run(const LoraAdapters* l, const Batch& batch, const StepOptions& opt, bool backward,
                 LoraAdapters* lora_grads, Sum sum = Sum::kOptions) {
    check_step_input(model, l, batch);
    // A deferred sum continues with the call the caller promised; a call without
    // adapters_unchanged starts a new step and drops it (after a step that failed midway).
    if (!opt.adapters_unchanged) pending_lora = pending_grads = nullptr;
    LB_CHECK(pending_grads == nullptr || (backward && l == pending_lora && lora_grads == pending_grads),
             "training on the GPU: a micro-batch announced more of its step (more_micro_batches), but the next call "
             "{}",
             !backward ? "computes a loss only" : "has other adapters or another gradient buffer");
    const int64_t H = c.hidden_size, V = c.vocab_size, L = c.num_hidden_layers;
    // The embedding on the host (it checks the token ids), before the timed device work.
    std::vector<float> host(size_t(batch.B * batch.T * H));
    model.embed(batch.tokens, host.data());
    alloc(batch.B, batch.T, backward);
    set_rope(T);
    start_weight_cache();
    dropout_on = backward;
    seed = opt.dropout_seed;
    phase(kPhaseTransfer);
    set_adapters(l, backward, opt.adapters_unchanged);
    const cudaStream_t s = stream();

    StepResult res;
    res.num_targets = batch.num_targets();
    const double scale = opt.loss_scale > 0 ? opt.loss_scale : (res.num_targets ? 1.0 / double(res.num_targets) : 0.0);

    phase(kPhaseTransfer);
    cuda::upload(h.get(), host.data(), host.size(), s);
    cuda::upload(targets.get(), batch.targets.data(), batch.targets.size(), s);
    ctx.synchronize();
    for (int64_t i = 0; i < L; ++i) {
      if (backward) {
        phase(kPhaseOther);
        LB_CUDA_CHECK(cudaMemcpyAsync(checkpoints.get() + i * N * H, h.get(), size_t(N * H) * sizeof(float),
                                      cudaMemcpyDeviceToDevice, s));
      }
      block_forward(i, h.get());
    }
    // Final norm, LM head and loss in chunks of rows: the [N, V] logits never exist at once.
    phase(kPhaseHead);
    if (bf16) xb.resize(size_t(N * H));
    if (fuse) {
      cuda::rmsnorm_f32_bf16(h.get(), final_norm.get(), x1.get(), xb.get(), N, H, float(c.rms_norm_eps), s);
    } else {
      cuda::rmsnorm_f32(h.get(), final_norm.get(), x1.get(), N, H, float(c.rms_norm_eps), s);
      if (bf16) cuda::to_bf16(x1.get(), xb.get(), N * H, s);
    }
    note_xb(nullptr, 0);
    int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(N, (int64_t(256) << 20) / (4 * V)));
    if (hooks != nullptr && hooks->max_chunk_rows > 0) chunk = std::min(chunk, hooks->max_chunk_rows);
    logits.resize(size_t(chunk * V));
    if (bf16 && backward) dyb.resize(size_t(chunk * V));
    // Fused, the cross-entropy writes the logits' gradient into dyb itself; a hook's logits_loss
    // writes it in fp32 into the logits, rounded into dyb below as in the one-launch path.
    const bool hooked_loss = hooks != nullptr && bool(hooks->logits_loss);
    const bool fused_loss = fuse && backward && !hooked_loss;
    for (int64_t r0 = 0; r0 < N; r0 += chunk) {
      const int64_t rows = std::min(chunk, N - r0);
      if (bf16) {
        cuda::linear_bf16(ctx, xb.get() + r0 * H, head16.get(), logits.get(), rows, H, V);
      } else {
        mm(x1.get() + r0 * H, head.get(), logits.get(), rows, H, V);
      }
      if (hooked_loss) {
        res.loss_sum += hooks->logits_loss(r0, rows, V, logits.get());
        phase(kPhaseHead);  // the hook may have marked its own phases
        LB_CUDA_CHECK(cudaMemsetAsync(loss.get() + r0, 0, size_t(rows) * sizeof(double), s));
      } else if (fused_loss) {
        // The gradient straight into the head product's bf16 operand (the fp32 one has no reader).
        cuda::cross_entropy_backward_bf16(logits.get(), targets.get() + r0, dyb.get(), loss.get() + r0, rows, V,
                                          float(scale), s);
      } else {
        cuda::cross_entropy_backward_f32(logits.get(), targets.get() + r0, logits.get(), loss.get() + r0, rows, V,
                                         float(scale), s);
      }
      if (backward && bf16) {
        if (!fused_loss) cuda::to_bf16(logits.get(), dyb.get(), rows * V, s);
        cuda::linear_backward_bf16(ctx, nullptr, head16.get(), dyb.get(), dx.get() + r0 * H, nullptr, rows, H, V,
                                   false);
      } else if (backward) {
        mm_backward(x1.get() + r0 * H, head.get(), logits.get(), dx.get() + r0 * H, nullptr, rows, H, V, false);
      }
    }
    // The rows' losses come down at the end (one wait for the device per call, after the
    // backward has been queued), summed in row order after the hooks' chunk losses.
    auto add_row_losses = [&] {
      std::vector<double> row_loss(static_cast<size_t>(N));
      phase(kPhaseTransfer);
      cuda::download(row_loss.data(), loss.get(), row_loss.size(), s);
      for (double x : row_loss) res.loss_sum += x;
    };
    if (!backward) {
      add_row_losses();
      collect_phases();
      return res;
    }

    // dh at the final norm's input, then through the blocks in reverse, recomputing each.
    phase(kPhaseHead);
    cuda::rmsnorm_backward_f32(h.get(), final_norm.get(), dx.get(), grad.get(), N, H, float(c.rms_norm_eps), s);
    for (int64_t i = L - 1; i >= 0; --i) {
      const float* h_in = checkpoints.get() + i * N * H;
      phase(kPhaseOther);
      LB_CUDA_CHECK(cudaMemcpyAsync(h.get(), h_in, size_t(N * H) * sizeof(float), cudaMemcpyDeviceToDevice, s));
      block_forward(i, h.get());
      block_backward(i, h_in, grad.get());
    }
    if (sum != Sum::kOptions) {
      phase(kPhaseOther);
      accumulate_on_device(sum == Sum::kHeldFirst);
    } else if (lora_grads != nullptr && lora != nullptr) {
      phase(kPhaseTransfer);
      if (opt.more_micro_batches || pending_grads != nullptr) accumulate_on_device(pending_grads == nullptr);
      if (opt.more_micro_batches) {
        pending_lora = lora;
        pending_grads = lora_grads;
        download_grads(*lora_grads, false);  // IEC's scalars only
      } else {
        download_grads(*lora_grads, true, pending_grads != nullptr);
        pending_lora = pending_grads = nullptr;
      }
    }
    add_row_losses();
    ctx.synchronize();
    collect_phases();
    note_memory_in_use();
    return res;
  }

  // dW [out, in] = dy^T x of a block linear in the step's precision (fp32 or tf32), handed to
  // hooks->weight_grad.
  void hooked_weight_grad(int64_t layer, LinearKind k, const float* x, const float* dy) {
    const int64_t in = linear_in_features(c, k), out = linear_out_features(c, k);
    hook_dw.resize(size_t(in * out));
    LB_CUDA_CHECK(cudaMemsetAsync(hook_dw.get(), 0, size_t(in * out) * sizeof(float), stream()));
    // dW alone (dx null): the weight is not read.
    mm_backward(x, nullptr, dy, nullptr, hook_dw.get(), N, in, out, false);
    hooks->weight_grad(layer, k, hook_dw.get());
  }
  // The same in bf16: dy16 the caller's bf16(dy) (dyb, or dyb2 for the fused up projection), x
  // rounded into xb here (fused: not again when xb holds it); fp32 dW.
  void hooked_weight_grad_bf16(int64_t layer, LinearKind k, const float* x, const uint16_t* dy16) {
    const int64_t in = linear_in_features(c, k), out = linear_out_features(c, k);
    cast_input(x, N * in);
    hook_dw.resize(size_t(in * out));
    LB_CUDA_CHECK(cudaMemsetAsync(hook_dw.get(), 0, size_t(in * out) * sizeof(float), stream()));
    phase(kPhaseBackwardGemm);
    cuda::linear_backward_bf16(ctx, xb.get(), nullptr, dy16, nullptr, hook_dw.get(), N, in, out, false);
    hooks->weight_grad(layer, k, hook_dw.get());
  }

  // logits [rows, V] = hidden [rows, H] times the LM head, in the step's precision (bf16: the
  // rows rounded to bf16 against the bf16 head), in the caller's phase.
  void head_logits(const float* hidden, float* out, int64_t rows) {
    const int64_t H = c.hidden_size, V = c.vocab_size;
    if (bf16) {
      head_xb.resize(size_t(rows * H));
      cuda::to_bf16(hidden, head_xb.get(), rows * H, stream());
      cuda::linear_bf16(ctx, head_xb.get(), head16.get(), out, rows, H, V);
    } else {
      mm(hidden, head.get(), out, rows, H, V);
    }
  }

  // The forward alone to the final norm's output (x1).
  const float* hidden(const Batch& batch) {
    check_step_input(model, nullptr, batch);
    const int64_t H = c.hidden_size;
    alloc(batch.B, batch.T, false);
    set_rope(T);
    start_weight_cache();
    dropout_on = false;
    set_adapters(nullptr, false, false);
    std::vector<float> host(size_t(N * H));
    model.embed(batch.tokens, host.data());
    cuda::upload(h.get(), host.data(), host.size(), stream());
    ctx.synchronize();
    for (int64_t i = 0; i < c.num_hidden_layers; ++i) block_forward(i, h.get());
    cuda::rmsnorm_f32(h.get(), final_norm.get(), x1.get(), N, H, float(c.rms_norm_eps), stream());
    note_xb(nullptr, 0);
    collect_phases();
    return x1.get();
  }

  // Visits every active adapter with its host twins in `x` (may be null) as (gpu, host linear).
  template <typename F>
  void for_active(const LoraAdapters* x, F&& f) {
    for (size_t i = 0; i < adapters.size(); ++i)
      for (LinearKind k : kAllLinears) {
        GpuAdapter& a = adapters[i][size_t(k)];
        if (a.r > 0) f(a, x != nullptr ? &x->layers[i][size_t(k)] : nullptr, i, k);
      }
  }

  bool can_hold(const LoraAdapters& p) const {
    bool iec = false;
    for (const auto& layer : p.layers)
      for (const LoraLinear& a : layer) iec = iec || (a.active() && a.has_iec());
    return !iec && hooks == nullptr;
  }

  // Uploads p (the adapters) and state's moments; p's values then live on the device.
  void hold(const LoraAdapters& p, const AdamWState& state) {
    LB_CHECK(can_hold(p), "training on the GPU: adapters with IEC's scalars are not held on the device (AdamW runs on "
             "the host for them)");
    LB_CHECK(state.m.layers.size() == p.layers.size() && state.v.layers.size() == p.layers.size(),
             "AdamW state of {} and {} layers for adapters of {}", state.m.layers.size(), state.v.layers.size(),
             p.layers.size());
    held = nullptr;
    pending_lora = pending_grads = nullptr;
    set_adapters(&p, false, false);
    phase(kPhaseTransfer);
    for_active(&p, [&](GpuAdapter& a, const LoraLinear*, size_t i, LinearKind k) {
      const LoraLinear& m = state.m.layers[i][size_t(k)];
      const LoraLinear& v = state.v.layers[i][size_t(k)];
      LB_CHECK(m.a.size() == a.a.size() && m.b.size() == a.b.size() && v.a.size() == a.a.size() &&
                   v.b.size() == a.b.size(),
               "AdamW state of block {} {}: moments of {} and {} values for adapters of {} and {}", i, linear_name(k),
               m.a.size(), m.b.size(), a.a.size(), a.b.size());
      for (auto [dst, src] : {std::pair{&a.m_a, &m.a}, std::pair{&a.v_a, &v.a}, std::pair{&a.m_b, &m.b},
                              std::pair{&a.v_b, &v.b}}) {
        dst->resize(src->size());
        cuda::upload(dst->get(), src->data(), src->size(), stream());
      }
      a.acc_a.resize(a.a.size());
      a.acc_b.resize(a.b.size());
      // A held step's gradient sum starts from zero: its norm or download before the first
      // held step reads zeros, not whatever the buffers held.
      LB_CUDA_CHECK(cudaMemsetAsync(a.acc_a.get(), 0, a.acc_a.size() * sizeof(*a.acc_a.get()), stream()));
      LB_CUDA_CHECK(cudaMemsetAsync(a.acc_b.get(), 0, a.acc_b.size() * sizeof(*a.acc_b.get()), stream()));
    });
    ctx.synchronize();
    collect_phases();
    held = &p;
  }

  void release() {
    held = nullptr;
    uploaded = nullptr;  // the device's values may differ from the host object's
  }

  // One micro-batch of a step over the held adapters, its gradients added to the step's sum.
  StepResult held_step(const Batch& batch, const StepOptions& opt, bool first) {
    LB_CHECK(held != nullptr, "training on the GPU: no adapters are held");
    StepOptions so = opt;
    so.adapters_unchanged = true;
    so.more_micro_batches = false;
    return run(held, batch, so, true, nullptr, first ? Sum::kHeldFirst : Sum::kHeldNext);
  }

  // The global L2 norm of the step's gradient sum: each tensor's squares in fixed-order fp64
  // partial sums, then their sum.
  double grad_norm() {
    LB_CHECK(held != nullptr, "training on the GPU: no adapters are held");
    phase(kPhaseAdamW);
    int64_t tensors = 0;
    for_active(nullptr, [&](GpuAdapter&, const LoraLinear*, size_t, LinearKind) { tensors += 2; });
    norm_partial.resize(size_t(std::max<int64_t>(1, tensors) * cuda::kSquareSumBlocks));
    norm_sum.resize(1);
    int64_t t = 0;
    for_active(held, [&](GpuAdapter& a, const LoraLinear* h, size_t, LinearKind) {
      cuda::sum_squares_f64(a.acc_a.get(), int64_t(h->a.size()), norm_partial.get() + t++ * cuda::kSquareSumBlocks,
                            stream());
      cuda::sum_squares_f64(a.acc_b.get(), int64_t(h->b.size()), norm_partial.get() + t++ * cuda::kSquareSumBlocks,
                            stream());
    });
    double ss = 0;
    if (tensors > 0) {
      cuda::sum_f64(norm_partial.get(), tensors * cuda::kSquareSumBlocks, norm_sum.get(), stream());
      cuda::download(&ss, norm_sum.get(), 1, stream());
    }
    collect_phases();
    return std::sqrt(ss);
  }

  // The clipped AdamW update of the held adapters (optimizer.h's adamw_update, element for
  // element) from the step's gradient sum; their bf16 copies follow.
  void adamw(double norm, double max_norm, const AdamWOptions& opt, double lr, int64_t step) {
    LB_CHECK(held != nullptr, "training on the GPU: no adapters are held");
    phase(kPhaseAdamW);
    const cuda::AdamWStepF32 c = adamw_step_f32(adamw_coefficients(step, opt, lr), clip_coefficient(norm, max_norm));
    for_active(held, [&](GpuAdapter& a, const LoraLinear* h, size_t, LinearKind) {
      cuda::adamw_update_f32(a.a.get(), a.acc_a.get(), a.m_a.get(), a.v_a.get(), int64_t(h->a.size()), c, stream());
      cuda::adamw_update_f32(a.b.get(), a.acc_b.get(), a.m_b.get(), a.v_b.get(), int64_t(h->b.size()), c, stream());
      if (bf16) {
        cast(a.a.get(), a.a16, int64_t(h->a.size()));
        cast(a.b.get(), a.b16, int64_t(h->b.size()));
      }
    });
    ctx.synchronize();
    collect_phases();
  }

  // The held values into the non-null host objects (shaped like the held adapters).
  void download_held(LoraAdapters* p, AdamWState* state, LoraAdapters* grads) {
    LB_CHECK(held != nullptr, "training on the GPU: no adapters are held");
    for (const LoraAdapters* x : {p, grads, state ? &state->m : nullptr, state ? &state->v : nullptr})
      LB_CHECK(x == nullptr || x->layers.size() == held->layers.size(), "held adapters of {} layers into {}",
               held->layers.size(), x->layers.size());
    phase(kPhaseTransfer);
    for_active(held, [&](GpuAdapter& a, const LoraLinear* h, size_t i, LinearKind k) {
      // The host buffers must have the held adapters' shapes (the device's may be larger).
      auto get = [&](const DeviceBuffer<float>& src, std::vector<float>& dst, size_t n) {
        LB_CHECK(dst.size() == n && src.size() >= n, "block {} {}: a host buffer of {} values for {} held", i,
                 linear_name(k), dst.size(), n);
        cuda::download(dst.data(), src.get(), n, stream());
      };
      const size_t na = h->a.size(), nb = h->b.size();
      if (p != nullptr) {
        get(a.a, p->layers[i][size_t(k)].a, na);
        get(a.b, p->layers[i][size_t(k)].b, nb);
      }
      if (state != nullptr) {
        get(a.m_a, state->m.layers[i][size_t(k)].a, na);
        get(a.v_a, state->v.layers[i][size_t(k)].a, na);
        get(a.m_b, state->m.layers[i][size_t(k)].b, nb);
        get(a.v_b, state->v.layers[i][size_t(k)].b, nb);
      }
      if (grads != nullptr) {
        get(a.acc_a, grads->layers[i][size_t(k)].a, na);
        get(a.acc_b, grads->layers[i][size_t(k)].b, nb);
      }
    });
    collect_phases();
  }

  // The seconds per phase since the last call, then none.
  std::vector<PhaseSeconds> take_phases() {
    std::vector<PhaseSeconds> out;
    if (profile == nullptr) return out;
    for (const auto& e : profile->totals()) out.push_back({e.name, e.ms / 1000.0});
    profile->reset();
    return out;
  }

  // Every buffer is allocated after a step (they are kept for the next), so what the device
  // shows in use then is the step's peak, besides the allocator's transient workspaces.
  void note_memory_in_use() {
    size_t free = 0, total = 0;
    LB_CUDA_CHECK(cudaMemGetInfo(&free, &total));
    peak_used = std::max(peak_used, total - free);
  }

  // acc = (first ? 0 : acc) + this call's da, db: the host's order of sums, kept on the device.
  void accumulate_on_device(bool first) {
    for (size_t i = 0; i < adapters.size(); ++i)
      for (LinearKind k : kAllLinears) {
        GpuAdapter& a = adapters[i][size_t(k)];
        if (a.r == 0) continue;
        const LoraLinear& src = lora->layers[i][size_t(k)];
        for (auto [d, acc, n] :
             {std::tuple{&a.da, &a.acc_a, src.a.size()}, std::tuple{&a.db, &a.acc_b, src.b.size()}}) {
          if (first) {
            acc->resize(n);
            LB_CUDA_CHECK(cudaMemsetAsync(acc->get(), 0, n * sizeof(float), stream()));
          }
          cuda::add_f32(acc->get(), d->get(), int64_t(n), stream());
        }
      }
  }

  // Adds the step's adapter gradients into g (the host's buffers, same shapes as the adapters):
  // A's and B's when `matrices` (from acc_a, acc_b when `accumulated`, else this call's), IEC's
  // scalars always (two values; added on the host per call).
  void download_grads(LoraAdapters& g, bool matrices, bool accumulated = false) {
    LB_CHECK(g.layers.size() == lora->layers.size(), "LoRA gradients for {} layers, adapters for {}",
             g.layers.size(), lora->layers.size());
    std::vector<float> tmp;
    for (size_t i = 0; i < g.layers.size(); ++i)
      for (LinearKind k : kAllLinears) {
        const GpuAdapter& a = adapters[i][size_t(k)];
        if (a.r == 0) continue;
        LoraLinear& out = g.layers[i][size_t(k)];
        const LoraLinear& src = lora->layers[i][size_t(k)];
        LB_CHECK(out.a.size() == src.a.size() && out.b.size() == src.b.size(),
                 "LoRA gradient of block {} {}: {} and {} values for adapters of {} and {}", i, linear_name(k),
                 out.a.size(), out.b.size(), src.a.size(), src.b.size());
        if (matrices)
          for (auto [dev, host] : {std::pair{accumulated ? &a.acc_a : &a.da, &out.a},
                                   std::pair{accumulated ? &a.acc_b : &a.db, &out.b}}) {
            tmp.resize(host->size());
            cuda::download(tmp.data(), dev->get(), tmp.size(), stream());
            for (size_t j = 0; j < tmp.size(); ++j) (*host)[j] += tmp[j];
          }
        if (!a.iec) continue;
        LB_CHECK(out.a_scale.size() == 1 && out.b_scale.size() == 1,
                 "LoRA gradient of block {} {} has no IEC scalars; its adapters have them", i, linear_name(k));
        float sc[2];
        cuda::download(sc, a.dscales.get(), 2, stream());
        out.a_scale[0] += sc[0];
        out.b_scale[0] += sc[1];
      }
  }
};

namespace {
StepEngineOptions with_compute(ComputePrecision p) {
  StepEngineOptions o;
  o.compute = p;
  return o;
}
}  // namespace

CudaLlamaBackward::CudaLlamaBackward(const LlamaModel& model, int device, ComputePrecision compute)
    : impl_(std::make_unique<Impl>(model, device, with_compute(compute))) {}
CudaLlamaBackward::CudaLlamaBackward(const LlamaModel& model, int device, const StepEngineOptions& o)
    : impl_(std::make_unique<Impl>(model, device, o)) {}
CudaLlamaBackward::~CudaLlamaBackward() = default;

std::string CudaLlamaBackward::device_name() const { return impl_->ctx.name(); }

StepResult CudaLlamaBackward::forward_backward(const LoraAdapters* lora, const Batch& batch, const StepOptions& opt,
                                               LoraAdapters* lora_grads, BaseGrads* base_grads) {
  LB_CHECK(base_grads == nullptr,
           "training on the GPU: gradients of the base weights (full fine-tuning) are computed on the CPU only "
           "(DB-LLM's distillation runs on the GPU through train/fdb_train_cuda.h)");
  LB_CHECK(!opt.logits_loss,
           "training on the GPU: a host loss on the logits other than cross-entropy runs on the CPU only (a GPU "
           "logits loss goes through forward_backward_hooked)");
  return impl_->run(lora, batch, opt, true, lora_grads);
}

StepResult CudaLlamaBackward::forward_loss(const LoraAdapters* lora, const Batch& batch) {
  return impl_->run(lora, batch, StepOptions{}, false, nullptr);
}

StepResult CudaLlamaBackward::forward_backward_hooked(const Batch& batch, const CudaStepHooks& hooks) {
  check_hooks(&hooks);
  impl_->hooks = &hooks;
  struct Reset {
    Impl* impl;
    ~Reset() { impl->hooks = nullptr; }
  } reset{impl_.get()};
  return impl_->run(nullptr, batch, StepOptions{}, true, nullptr);
}

const float* CudaLlamaBackward::forward_hidden(const Batch& batch, const CudaStepHooks* hooks) {
  check_hooks(hooks);
  impl_->hooks = hooks;
  struct Reset {
    Impl* impl;
    ~Reset() { impl->hooks = nullptr; }
  } reset{impl_.get()};
  return impl_->hidden(batch);
}

const float* CudaLlamaBackward::lm_head() const {
  LB_CHECK(!impl_->bf16, "training on the GPU: the fp32 LM head is held in the fp32 and tf32 modes only, this engine "
           "computes in bf16");
  return impl_->head.get();
}

void CudaLlamaBackward::head_logits(const float* hidden, float* logits, int64_t rows) {
  impl_->head_logits(hidden, logits, rows);
}

ComputePrecision CudaLlamaBackward::compute() const { return impl_->compute; }
bool CudaLlamaBackward::base_resident() const { return impl_->resident; }

void CudaLlamaBackward::check_hooks(const CudaStepHooks* hooks) const {
  LB_CHECK(hooks == nullptr || !hooks->weight || !impl_->resident,
           "training on the GPU: step hooks' weights (DB-LLM's student) with a resident bf16 base: the hook replaces "
           "every block linear's weight and the resident base holds no scratch for it; build the engine with "
           "--base-resident off");
}

void CudaLlamaBackward::mark_phase(const char* name) { impl_->phase(name); }

bool CudaLlamaBackward::profiling() const { return impl_->profile != nullptr; }

bool CudaLlamaBackward::can_hold_adapters(const LoraAdapters& params) const { return impl_->can_hold(params); }
void CudaLlamaBackward::hold_adapters(const LoraAdapters& params, const AdamWState& state) {
  impl_->hold(params, state);
}
void CudaLlamaBackward::release_adapters() { impl_->release(); }
StepResult CudaLlamaBackward::held_forward_backward(const Batch& batch, const StepOptions& opt, bool first) {
  return impl_->held_step(batch, opt, first);
}
double CudaLlamaBackward::held_grad_norm() { return impl_->grad_norm(); }
void CudaLlamaBackward::held_adamw_step(double grad_norm, double max_grad_norm, const AdamWOptions& opt, double lr,
                                        int64_t step) {
  impl_->adamw(grad_norm, max_grad_norm, opt, lr, step);
}
void CudaLlamaBackward::download_held(LoraAdapters* params, AdamWState* state, LoraAdapters* grads) {
  impl_->download_held(params, state, grads);
}
std::vector<PhaseSeconds> CudaLlamaBackward::take_phase_seconds() {
  impl_->collect_phases();  // phases marked since the last call's end (mark_phase)
  return impl_->take_phases();
}

const cuda::Context& CudaLlamaBackward::context() const { return impl_->ctx; }

GpuModelBytes CudaLlamaBackward::model_bytes() const { return impl_->model_bytes; }
std::string CudaLlamaBackward::base_layout() const { return impl_->base_layout; }
std::optional<CompactLayout> CudaLlamaBackward::uniform_layout() const { return impl_->layout; }
int64_t CudaLlamaBackward::peak_in_use_bytes() const { return int64_t(impl_->peak_used); }

std::vector<float> CudaLlamaBackward::download_weight(int64_t layer, LinearKind k) {
  LB_CHECK(layer >= 0 && layer < impl_->c.num_hidden_layers, "layer {} of a {}-layer model", layer,
           impl_->c.num_hidden_layers);
  std::vector<float> out(size_t(linear_out_features(impl_->c, k) * linear_in_features(impl_->c, k)));
  if (impl_->bf16) {
    impl_->start_weight_cache();  // the model's weights, not a hook's left in the cache
    cuda::DeviceBuffer<float> wide(out.size());
    cuda::from_bf16(impl_->weight16(layer, k), wide.get(), int64_t(out.size()), impl_->stream());
    cuda::download(out.data(), wide.get(), out.size(), impl_->stream());
  } else {
    cuda::download(out.data(), impl_->weight(layer, k), out.size(), impl_->stream());
  }
  impl_->collect_phases();
  return out;
}

namespace {

class CudaStepEngine final : public StepEngine {
 public:
  CudaStepEngine(const LlamaModel& model, int device, const StepEngineOptions& o) : gpu_(model, device, o) {}
  std::string name() const override { return gpu_.device_name(); }
  StepResult forward_backward(const LoraAdapters* lora, const Batch& batch, const StepOptions& opt,
                              LoraAdapters* lora_grads, BaseGrads* base_grads) override {
    return gpu_.forward_backward(lora, batch, opt, lora_grads, base_grads);
  }
  StepResult forward_loss(const LoraAdapters* lora, const Batch& batch) override {
    return gpu_.forward_loss(lora, batch);
  }
  std::optional<EngineMemory> memory() const override {
    return EngineMemory{gpu_.base_layout(), gpu_.uniform_layout(), gpu_.model_bytes(),
                        int64_t(cuda::peak_device_bytes()), gpu_.peak_in_use_bytes()};
  }
  ComputePrecision compute() const override { return gpu_.compute(); }
  bool base_resident() const override { return gpu_.base_resident(); }
  bool profiling() const override { return gpu_.profiling(); }
  std::vector<PhaseSeconds> take_phase_seconds() override { return gpu_.take_phase_seconds(); }
  bool can_hold_adapters(const LoraAdapters& params) const override { return gpu_.can_hold_adapters(params); }
  void hold_adapters(const LoraAdapters& params, const AdamWState& state) override {
    gpu_.hold_adapters(params, state);
  }
  void release_adapters() override { gpu_.release_adapters(); }
  StepResult held_forward_backward(const Batch& batch, const StepOptions& opt, bool first) override {
    return gpu_.held_forward_backward(batch, opt, first);
  }
  double held_grad_norm() override { return gpu_.held_grad_norm(); }
  void held_adamw_step(double grad_norm, double max_grad_norm, const AdamWOptions& opt, double lr,
                       int64_t step) override {
    gpu_.held_adamw_step(grad_norm, max_grad_norm, opt, lr, step);
  }
  void download_held(LoraAdapters* params, AdamWState* state, LoraAdapters* grads) override {
    gpu_.download_held(params, state, grads);
  }

 private:
  CudaLlamaBackward gpu_;
};

}  // namespace

std::unique_ptr<StepEngine> make_cuda_step_engine(const Device& d, const LlamaModel& model,
                                                  const StepEngineOptions& o) {
  return std::make_unique<CudaStepEngine>(model, d.index, o);
}

}  // namespace lowbit::train
