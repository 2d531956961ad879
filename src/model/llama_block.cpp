#include "model/llama_block.h"

#include "core/error.h"

namespace lowbit {

std::span<const BlockStep> block_steps() { return kLlamaBlockSteps; }

std::span<const BlockStep> half_steps(BlockHalf h) {
  // Attention: steps 1..5 (Hooks AttnIn .. Products AttnOut); MLP: steps 8..12.
  return h == BlockHalf::Attention ? block_steps().subspan(1, 5) : block_steps().subspan(8, 5);
}

bool run_block_steps(BlockOps& ops, std::span<const BlockStep> steps, std::optional<InputSite> stop_after) {
  for (const BlockStep& st : steps) {
    switch (st.op) {
      case BlockOp::Norm: ops.norm(st.half); break;
      case BlockOp::Hooks:
        ops.hooks(st.site);
        if (stop_after == st.site) return true;
        break;
      case BlockOp::Products: ops.products(st.site); break;
      case BlockOp::Attention: ops.attention(); break;
      case BlockOp::Swiglu: ops.swiglu(); break;
      case BlockOp::Residual: ops.residual(st.half); break;
    }
  }
  return false;
}

InputSite last_input_site(std::span<const LinearKind> kinds) {
  LB_ASSERT(!kinds.empty());
  std::optional<InputSite> last;
  for (InputSite s : visited_sites(block_steps()))
    for (LinearKind k : kinds)
      if (input_site(k) == s) last = s;
  LB_ASSERT(last.has_value());
  return *last;
}

std::vector<InputSite> visited_sites(std::span<const BlockStep> steps, std::optional<InputSite> stop_after) {
  std::vector<InputSite> out;
  for (const BlockStep& st : steps) {
    if (st.op != BlockOp::Hooks) continue;
    out.push_back(st.site);
    if (stop_after == st.site) break;
  }
  return out;
}

}  // namespace lowbit
