// The LLaMA decoder block, written once for every device: the sequence of its steps, the input
// sites where hooks run, and the one loop that walks them. LlamaModel (CPU, fp32), CudaModel
// (GPU, bf16 GEMMs) and the training forwards (train/llama_backward.cpp on the CPU,
// llama_backward_cuda.cpp on the GPU: LoRA branches, the intermediates kept for the backward)
// implement the steps behind BlockOps; the loop, the order of the sites and where a run stops are
// the same for all.
//
//   step                 half   what it does (h: the residual stream [B*T, H])
//   Norm                 attn   x = rmsnorm(h, input_layernorm)
//   Hooks    AttnIn      attn   hooks see x, the input of q_proj, k_proj, v_proj
//   Products AttnIn      attn   q, k, v = x Wq^T, x Wk^T, x Wv^T
//   Attention            attn   a = causal GQA attention(rope(q), rope(k), v) (appending k, v to a
//                               KV cache when one is given)
//   Hooks    AttnOut     attn   hooks see a, the input of o_proj
//   Products AttnOut     attn   y = a Wo^T
//   Residual             attn   h += y
//   Norm                 mlp    x = rmsnorm(h, post_attention_layernorm)
//   Hooks    MlpIn       mlp    hooks see x, the input of gate_proj, up_proj
//   Products MlpIn       mlp    g, u = x Wg^T, x Wu^T
//   Swiglu               mlp    s = silu(g) * u
//   Hooks    MlpOut      mlp    hooks see s, the input of down_proj
//   Products MlpOut      mlp    y = s Wd^T
//   Residual             mlp    h += y
//
// Which linears read a site, and so share its input: site_linears() (formats/llama_tensors.h).
//
// The hook rules, the same on every device:
//   - a site's hooks run once per forward, in the order above, after the site's input is complete
//     and before any product that reads it;
//   - observe / capture: a hook sees the site's input as the products will read it, before any
//     rewrite; on the CPU (BlockHooks) each linear of the site is visited in block order with its
//     own copy, on the GPU (CudaModel::SiteInput) the site once, named by its first linear;
//   - rewrite: a rewrite of one linear's input (activation quantization) reaches that linear's
//     product only (on the CPU the hook rewrites its copy; on the GPU the model's activation
//     scheme quantizes the input inside the site's Products step);
//   - stop-after: a run that stops after site s returns once s's hooks have run, before its
//     products; h then holds what the steps before it made (unchanged within the attention half,
//     h + the attention's output within the MLP half).
//
// A half (the attention or the MLP, on an already normalized x) is the run from its first Hooks
// step to its last Products step: AWQ's probes and the GPU driver's part runs use halves alone.
#pragma once

#include "formats/llama_tensors.h"

#include <array>
#include <optional>
#include <span>
#include <vector>

namespace lowbit {

enum class BlockHalf { Attention, Mlp };

enum class BlockOp { Norm, Hooks, Products, Attention, Swiglu, Residual };

struct BlockStep {
  BlockOp op;
  BlockHalf half;
  InputSite site;  // for Hooks and Products; the half's input site otherwise
};

// The steps of one block, in order (the table above).
inline constexpr std::array<BlockStep, 14> kLlamaBlockSteps = {{
    {BlockOp::Norm, BlockHalf::Attention, InputSite::AttnIn},
    {BlockOp::Hooks, BlockHalf::Attention, InputSite::AttnIn},
    {BlockOp::Products, BlockHalf::Attention, InputSite::AttnIn},
    {BlockOp::Attention, BlockHalf::Attention, InputSite::AttnIn},
    {BlockOp::Hooks, BlockHalf::Attention, InputSite::AttnOut},
    {BlockOp::Products, BlockHalf::Attention, InputSite::AttnOut},
    {BlockOp::Residual, BlockHalf::Attention, InputSite::AttnIn},
    {BlockOp::Norm, BlockHalf::Mlp, InputSite::MlpIn},
    {BlockOp::Hooks, BlockHalf::Mlp, InputSite::MlpIn},
    {BlockOp::Products, BlockHalf::Mlp, InputSite::MlpIn},
    {BlockOp::Swiglu, BlockHalf::Mlp, InputSite::MlpIn},
    {BlockOp::Hooks, BlockHalf::Mlp, InputSite::MlpOut},
    {BlockOp::Products, BlockHalf::Mlp, InputSite::MlpOut},
    {BlockOp::Residual, BlockHalf::Mlp, InputSite::MlpIn},
}};

// The whole block, and one half of it (its first Hooks step to its last Products step).
std::span<const BlockStep> block_steps();
std::span<const BlockStep> half_steps(BlockHalf h);

// A device's implementation of the steps, on the buffers of one run (the residual stream, the
// normed input, the projections). The loop calls them in table order.
class BlockOps {
 public:
  virtual ~BlockOps() = default;
  virtual void norm(BlockHalf h) = 0;
  virtual void hooks(InputSite s) = 0;
  virtual void products(InputSite s) = 0;
  virtual void attention() = 0;
  virtual void swiglu() = 0;
  virtual void residual(BlockHalf h) = 0;
};

// Runs `steps` (block_steps() or a half) on ops; returns true when stop_after stopped the run
// (right after that site's Hooks step), false when every step ran.
bool run_block_steps(BlockOps& ops, std::span<const BlockStep> steps,
                     std::optional<InputSite> stop_after = std::nullopt);

// The site, of those the linears `kinds` read (not empty), that a block run visits last: a run
// that needs only their inputs stops after it.
InputSite last_input_site(std::span<const LinearKind> kinds);

// The input sites a run of `steps` visits, in order, up to and including stop_after.
std::vector<InputSite> visited_sites(std::span<const BlockStep> steps,
                                     std::optional<InputSite> stop_after = std::nullopt);

}  // namespace lowbit
