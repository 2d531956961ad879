#include "core/error.h"
#include "pack/gemv_pack.h"
#include "pack/gpu_packed.h"
#include "pack/w4_tiles.h"

namespace lowbit::pack {

GpuPackedLayout gpu_packed_layout(const QuantizedLinear& q, const std::string& what) {
  // 4-bit int codes keep the tensor-core tiles, measured faster than a CUDA-core GEMV at every
  // batch size (bench_w4a16, bench_gemv_lowbit).
  if (can_pack_w4_tiles(q) && q.bits == 4) return GpuPackedLayout::W4A16;
  std::string why;
  if (can_pack_gemv(q, &why)) return GpuPackedLayout::Gemv;
  if (can_pack_w4_tiles(q)) return GpuPackedLayout::W4A16;
  fail("{}: --packed on a CUDA device has no kernel for this linear ({}-bit {}): {}", what, q.bits, q.format_name(),
       why);
}

}  // namespace lowbit::pack
