#include "pack/gpu_packed_cuda.h"

#include "core/error.h"
#include "formats/llama_tensors.h"
#include "pack/gemv_cuda.h"
#include "pack/w4_tiles_cuda.h"
#include "quant/lowbit_checkpoint.h"

namespace lowbit::pack {

std::shared_ptr<const cuda::PackedWeight> upload_packed_linear(const QuantizedLinear& q, const std::string& what,
                                                               cudaStream_t s) {
  auto out = std::make_shared<cuda::PackedWeight>();
  // gpu_packed_layout names the linear and says what no layout can hold (format, bits, groups).
  if (gpu_packed_layout(q, what) == GpuPackedLayout::W4A16) out->w = upload_w4_tiles(pack_w4_tiles(q, what), what, s);
  else out->w = upload_gemv_packed(pack_gemv(q, what), what, s);
  return out;
}

GpuPackedLinears gpu_packed_linears_of(const LlamaModel& model, cudaStream_t s) {
  const Checkpoint& ck = model.checkpoint();
  LB_CHECK(!ck.quantization.is_null(), "model '{}' is not a quantized checkpoint: --packed needs one", ck.path);
  auto* source = dynamic_cast<const QuantizedWeightSource*>(ck.weights.get());
  LB_CHECK(source != nullptr, "model '{}' has no quantized linears to pack", ck.path);
  return [source, s](int64_t layer, LinearKind kind) -> std::shared_ptr<const cuda::PackedWeight> {
    const std::string name = linear_weight_name(layer, kind);
    if (!source->is_quantized(name)) return nullptr;
    return upload_packed_linear(source->quantized(name), name, s);
  };
}

void use_gpu_packed_linears() {
  set_gpu_packed_factory([](const LlamaModel& model, cudaStream_t s) -> GpuPackedLinears {
    // A model that is not quantized (the 16-bit base of a KL-divergence, say) runs from bf16.
    if (model.checkpoint().quantization.is_null()) return {};
    return gpu_packed_linears_of(model, s);
  });
}

std::string enable_gpu_packed_linears(const LlamaModel& model) {
  std::string execution = gpu_packed_execution(model);
  use_gpu_packed_linears();
  return execution;
}

}  // namespace lowbit::pack
