#include "pack/packed_model.h"

#include "core/error.h"
#include "formats/llama_tensors.h"
#include "quant/lowbit_checkpoint.h"

#include <vector>

namespace lowbit::pack {

PackedActivations parse_packed_activations(const std::string& s) {
  if (s == "q8") return PackedActivations::Q8;
  if (s == "f32") return PackedActivations::F32;
  throw Error(fmt::format("--packed-act '{}' is not one of q8, f32", s));
}

void PackedIntLinear::apply(const float* x, float* y, int64_t rows) const {
  // One scratch per thread, reused across calls: decode calls this once per linear per token.
  if (act_ == PackedActivations::Q8) {
    thread_local Q8Activations a;
    quantize_activations(w_, x, rows, a);
    matmul_q8(w_, a, y);
  } else {
    thread_local std::vector<float> xp;
    xp.resize(size_t(rows * w_.padded()));
    gather_padded(w_, x, rows, xp.data());
    matmul_f32(w_, xp.data(), rows, y);
  }
}

namespace {

Tensor as_f32(const Tensor& t) { return t.dtype() == DType::F32 ? t : t.to_f32(); }

}  // namespace

PackedSummary install_packed_linears(LlamaModel& model, PackedActivations act) {
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
      auto kernel = std::make_shared<PackedIntLinear>(pack_int_linear(source->quantized(name), name), act);
      sum.linears += 1;
      sum.packed_bytes += int64_t(kernel->matrix().nbytes());
      sum.weights += kernel->matrix().rows * kernel->matrix().cols;
      w->kernel[size_t(k)] = std::move(kernel);
    }
    model.set_block_weights(i, std::move(w));
  }
  return sum;
}

}  // namespace lowbit::pack
