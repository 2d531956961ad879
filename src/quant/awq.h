// awq: Activation-aware Weight Quantization (Lin et al. 2023) as its reference code
// (mit-han-lab/llm-awq, auto_scale.py, auto_clip.py, quantizer.py) defines it.
//
// Per block, on the 16-bit model's activations (the inputs of every linear, recorded in one pass
// of the unmodified block):
//   1. scale search, per scaling group, each on the original weights:
//        input_layernorm -> q,k,v      inspected through the whole attention (o_proj original)
//        v_proj -> o_proj              only when v_proj and o_proj have the same shape (no GQA)
//        post_attention_layernorm -> gate,up   inspected through the whole MLP
//        up_proj -> down_proj          inspected through down_proj
//      s = mean|x|^r (clamped to >= 1e-4) / sqrt(max * min), for r = 0, 1/n, ..., (n-1)/n
//      (n = 20); each group's linears become Q(W diag(s)) diag(s)^-1; the r with the smallest
//      mean squared error of the inspected output wins (ties keep the first);
//   2. the scales are folded: the norm (or the previous linear's output rows) divided by s, the
//      group's weight columns multiplied by s, the recorded inputs divided by s; the 16-bit
//      function is unchanged;
//   3. clipping (clip=1), for every linear but q and k: per output row and group, the max |w|
//      shrunk by (1 - i/20), i = 0..9, keeping the value that minimizes the squared error of
//      the group's partial outputs on 512 evenly strided recorded tokens; w clamped to it;
//   4. quantization onto AWQ's grid: per (row, group) min/max (not forced to include 0),
//      scale = max(max - min, 1e-5) / (2^w - 1), zero = clamp(-round(min / scale), 0, 2^w - 1).
//
// The group size must divide the input features (as the reference asserts). All in fp32.
//
//   spec: awq:w=4,g=128,grid=20,clip=1
#pragma once

#include "calib/block_driver.h"
#include "quant/quantized_linear.h"

#include <string>
#include <vector>

namespace lowbit {

struct AwqOptions {
  int bits = 4;
  int64_t group_size = 128;  // -1: per output channel
  int grid = 20;
  bool clip = true;
  int clip_grid = 20;
  double max_shrink = 0.5;
  int64_t clip_tokens = 512;
};

// AWQ's grid (quantizer.py pseudo_quantize_tensor with zero_point=True), per (row, group).
QuantizedLinear awq_quantize(const float* w, int64_t rows, int64_t cols, int bits, int64_t group_size, DType dtype);
// w <- Q(w) in place, on the same grid.
void awq_fake_quantize(float* w, int64_t rows, int64_t cols, int bits, int64_t group_size);

// What the search chose for one block: each scaling group's ratio and scales, each clipped
// linear's per-(row, group) max value.
struct AwqBlockChoices {
  struct Group {
    std::string name;             // "qkv", "v->o", "gate,up", "up->down"
    double ratio = -1;
    double loss = 0;
    std::vector<double> losses;   // one per grid point
    std::vector<float> scales;    // [in_features]
  };
  std::vector<Group> groups;
  std::vector<std::string> notes;  // e.g. why a group was skipped
  std::map<LinearKind, std::vector<float>> clip_max;  // [rows * groups_per_row]
};

// Step 3 for one linear: w [rows, cols] (scaled), x [tokens, cols] its recorded (scaled) inputs;
// the chosen max |w| per (row, group), [rows * groups_per_row].
std::vector<float> awq_search_clip(const Tensor& w, const std::vector<float>& x, const AwqOptions& opt);

// Steps 1-3 on the block in ctx: rewrites ctx.weights() (scales folded, clipped) and returns
// the choices. Step 4 is the method's quantize_block.
AwqBlockChoices awq_scale_and_clip(BlockContext& ctx, const AwqOptions& opt);

}  // namespace lowbit
