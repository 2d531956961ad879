#include "pack/packed_model.h"

#include "core/error.h"
#include "formats/llama_tensors.h"
#include "quant/lowbit_checkpoint.h"

#include <algorithm>
#include <initializer_list>
#include <vector>

namespace lowbit::pack {

PackedActivations parse_packed_activations(const std::string& s) {
  if (s == "q8") return PackedActivations::Q8;
  if (s == "f32") return PackedActivations::F32;
  throw Error(fmt::format("--packed-act '{}' is not one of q8, f32", s));
}

PackedHead parse_packed_head(const std::string& s) {
  if (s == "stored") return PackedHead::Stored;
  if (s == "q8") return PackedHead::Q8;
  throw Error(fmt::format("--packed-head '{}' is not one of stored, q8", s));
}

void PackedIntLinear::apply(const float* x, float* y, int64_t rows) const {
  const PackedIntMatrix& w = *w_;
  // A view of some rows computes only those, into a [rows, all outputs] scratch it then copies
  // out of. Scratch is per thread and reused: decode calls this once per linear per token.
  thread_local std::vector<float> full;
  float* out = y;
  if (!whole()) {
    full.resize(size_t(rows * w.rows));
    out = full.data();
  }
  if (act_ == PackedActivations::Q8) {
    thread_local Q8Activations a;
    quantize_activations(w, x, rows, a);
    matmul_q8(w, a, out, best_isa(), r0_, r1_);
  } else {
    thread_local std::vector<float> xp;
    xp.resize(size_t(rows * w.padded()));
    gather_padded(w, x, rows, xp.data());
    matmul_f32(w, xp.data(), rows, out, r0_, r1_);
  }
  if (!whole())
    for (int64_t j = 0; j < rows; ++j)
      std::copy(out + j * w.rows + r0_, out + j * w.rows + r1_, y + j * (r1_ - r0_));
}

namespace {

Tensor as_f32(const Tensor& t) { return t.dtype() == DType::F32 ? t : t.to_f32(); }

}  // namespace

PackedSummary install_packed_linears(LlamaModel& model, PackedActivations act, PackedHead head) {
  const Checkpoint& ck = model.checkpoint();
  LB_CHECK(!ck.quantization.is_null(), "model '{}' is not a quantized checkpoint: --packed needs one", ck.path);
  auto* source = dynamic_cast<const QuantizedWeightSource*>(ck.weights.get());
  LB_CHECK(source != nullptr, "model '{}' has no quantized linears to pack", ck.path);
  PackedSummary sum;
  for (int64_t i = 0; i < model.config().num_hidden_layers; ++i) {
    auto w = std::make_shared<BlockWeights>();
    w->input_norm = as_f32(ck.weights->get(hf_tensor_name(TensorKind::AttnNorm, i)));
    w->post_norm = as_f32(ck.weights->get(hf_tensor_name(TensorKind::FfnNorm, i)));
    for (LinearKind k : kAllLinears) {
      const std::string name = linear_weight_name(i, k);
      if (!source->is_quantized(name)) {
        w->linear[size_t(k)] = as_f32(ck.weights->get(name));
        continue;
      }
      auto kernel = std::make_shared<PackedIntLinear>(
          std::make_shared<const PackedIntMatrix>(pack_int_linear(source->quantized(name), name)), act);
      sum.linears += 1;
      sum.packed_bytes += int64_t(kernel->matrix().nbytes());
      sum.weights += kernel->matrix().rows * kernel->matrix().cols;
      w->kernel[size_t(k)] = std::move(kernel);
    }
    // q, k, v (and gate, up) read one input: stacked, they run as one product (one quantization
    // of the input, one parallel region), unless their gather orders differ (act_order). The
    // stacked matrix replaces theirs: each linear's kernel becomes a view of its rows (for input
    // hooks, which give each linear its own input), so nothing is held twice.
    auto stack = [&](std::initializer_list<LinearKind> kinds) -> std::shared_ptr<const LinearKernel> {
      std::vector<const PackedIntMatrix*> parts;
      for (LinearKind k : kinds) {
        auto* p = dynamic_cast<const PackedIntLinear*>(w->kernel[size_t(k)].get());
        if (p == nullptr) return nullptr;
        parts.push_back(&p->matrix());
      }
      auto m = stack_rows(parts);
      if (!m) return nullptr;
      auto shared = std::make_shared<const PackedIntMatrix>(std::move(*m));
      int64_t r0 = 0;
      for (LinearKind k : kinds) {
        const int64_t n = w->kernel[size_t(k)]->out_features();
        w->kernel[size_t(k)] = std::make_shared<PackedIntLinear>(shared, act, r0, r0 + n);
        r0 += n;
      }
      return std::make_shared<PackedIntLinear>(shared, act);
    };
    w->qkv = stack({LinearKind::Q, LinearKind::K, LinearKind::V});
    w->gate_up = stack({LinearKind::Gate, LinearKind::Up});
    model.set_block_weights(i, std::move(w));
  }
  if (head == PackedHead::Q8) {
    const Tensor& t = model.lm_head_stored();
    LB_CHECK(t.is_contiguous() && t.ndim() == 2, "model '{}': the LM head is not a contiguous matrix", ck.path);
    auto kernel = std::make_shared<PackedIntLinear>(
        std::make_shared<const PackedIntMatrix>(pack_q8_dense(t.dtype(), t.data(), t.dim(0), t.dim(1))), act);
    sum.head_bytes = int64_t(kernel->matrix().nbytes());
    model.set_lm_head_kernel(std::move(kernel));
  }
  return sum;
}

}  // namespace lowbit::pack
