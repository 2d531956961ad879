#include "pack/w4_tiles_cuda.h"
#include "pack/gpu_packed.h"

#include "core/error.h"
#include "formats/llama_tensors.h"
#include "quant/lowbit_checkpoint.h"

#include <memory>

namespace lowbit::pack {

GpuPackedLinears gpu_packed_linears_of(const LlamaModel& model, cudaStream_t s) {
  const Checkpoint& ck = model.checkpoint();
  LB_CHECK(!ck.quantization.is_null(), "model '{}' is not a quantized checkpoint: --packed needs one", ck.path);
  auto* source = dynamic_cast<const QuantizedWeightSource*>(ck.weights.get());
  LB_CHECK(source != nullptr, "model '{}' has no quantized linears to pack", ck.path);
  return [source, s](int64_t layer, LinearKind kind) -> std::shared_ptr<const cuda::W4A16Weight> {
    const std::string name = linear_weight_name(layer, kind);
    if (!source->is_quantized(name)) return nullptr;
    const QuantizedLinear q = source->quantized(name);
    // pack_w4_tiles names the linear and says what it cannot hold (format, bits, zero-points).
    const W4Tiles tiles = pack_w4_tiles(q, name);
    return std::make_shared<const cuda::W4A16Weight>(upload_w4_tiles(tiles, name, s));
  };
}

void use_gpu_packed_linears() {
  set_gpu_packed_factory([](const LlamaModel& model, cudaStream_t s) -> GpuPackedLinears {
    // A model that is not quantized (the 16-bit base of a KL-divergence, say) runs from bf16.
    if (model.checkpoint().quantization.is_null()) return {};
    return gpu_packed_linears_of(model, s);
  });
}

void enable_gpu_packed_linears(const LlamaModel& model) {
  (void)gpu_packed_linears_of(model, nullptr);
  use_gpu_packed_linears();
}

}  // namespace lowbit::pack
