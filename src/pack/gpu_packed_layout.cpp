#include "core/error.h"
#include "formats/llama_tensors.h"
#include "pack/gemv_pack.h"
#include "pack/gpu_packed.h"
#include "pack/w4_tiles.h"
#include "quant/lowbit_checkpoint.h"

#include <algorithm>
#include <cstdlib>
#include <string>

namespace lowbit::pack {

GpuPackedLayout gpu_packed_layout(const QuantizedLinear& q, const std::string& what) {
  // 4-bit int codes keep the tensor-core tiles (they serve every row count; bench_gemv_lowbit
  // times both layouts side by side: int4 against w4a16). LOWBIT_PACKED_INT4=gemv puts 4-bit
  // linears the GEMV layout can hold into it instead.
  static const bool int4_gemv = [] {
    const char* v = std::getenv("LOWBIT_PACKED_INT4");
    LB_CHECK(v == nullptr || std::string(v) == "gemv" || std::string(v) == "w4a16",
             "LOWBIT_PACKED_INT4 is '{}': expected 'gemv' or 'w4a16'", v == nullptr ? "" : v);
    return v != nullptr && std::string(v) == "gemv";
  }();
  if (q.bits == 4 && int4_gemv && can_pack_gemv(q)) return GpuPackedLayout::Gemv;
  if (can_pack_w4_tiles(q) && q.bits == 4) return GpuPackedLayout::W4A16;
  std::string why;
  if (can_pack_gemv(q, &why)) return GpuPackedLayout::Gemv;
  if (can_pack_w4_tiles(q)) return GpuPackedLayout::W4A16;
  fail("{}: --packed on a CUDA device has no kernel for this linear ({}-bit {}): {}", what, q.bits, q.format_name(),
       why);
}

std::string gpu_packed_execution(const LlamaModel& model) {
  const Checkpoint& ck = model.checkpoint();
  LB_CHECK(!ck.quantization.is_null(), "model '{}' is not a quantized checkpoint: --packed needs one", ck.path);
  auto* source = dynamic_cast<const QuantizedWeightSource*>(ck.weights.get());
  LB_CHECK(source != nullptr, "model '{}' has no quantized linears to pack", ck.path);
  const nlohmann::json* linears =
      ck.quantization.contains("linears") && ck.quantization["linears"].is_object() ? &ck.quantization["linears"]
                                                                                     : nullptr;
  bool w4 = false, gemv = false;
  for (int64_t layer = 0; layer < model.config().num_hidden_layers; ++layer)
    for (LinearKind kind : kAllLinears) {
      const std::string name = linear_weight_name(layer, kind);
      if (!source->is_quantized(name)) continue;
      // The layout the metadata records decides, without reading the codes, unless the linear
      // has a g_idx (whether it permutes the groups is in its data).
      const std::string base = linear_base_name(layer, kind);
      GpuPackedLayout l;
      const bool listed = linears != nullptr && linears->contains(base);
      const nlohmann::json* e = listed ? &(*linears)[base] : nullptr;
      const bool has_g_idx =
          e != nullptr && e->contains("tensors") &&
          std::any_of((*e)["tensors"].begin(), (*e)["tensors"].end(), [](const nlohmann::json& t) {
            return t.is_string() && t.get<std::string>() == "g_idx";
          });
      if (e != nullptr && !has_g_idx && e->contains("format") && e->contains("bits") && e->contains("group_size")) {
        // The linear as its metadata describes it: the fields gpu_packed_layout reads, no codes.
        QuantizedLinear described;
        described.format = &find_quant_format((*e)["format"].get<std::string>());
        described.bits = (*e)["bits"].get<int>();
        described.group_size = (*e)["group_size"].get<int64_t>();
        described.flat_groups = e->value("flat_groups", false);
        described.rows = e->value("rows", int64_t(0));
        described.cols = e->value("cols", int64_t(0));
        l = gpu_packed_layout(described, name);
      } else {
        l = gpu_packed_layout(source->quantized(name), name);
      }
      (l == GpuPackedLayout::W4A16 ? w4 : gemv) = true;
    }
  return w4 && gemv ? "packed-w4a16+gemv" : gemv ? "packed-gemv" : "packed-w4a16";
}

}  // namespace lowbit::pack
