// LLaVA-Next on one GPU (model/llava_next_device.h says what runs where).
//
// CudaClipVision: the CLIP tower's first feature_layers() encoder layers and the two-layer GELU
// projector with bf16 weights on the GPU (uploaded from the host tower's, which stay the
// reference). The patch convolution is one product over the patches that vision::clip_patches
// cuts on the host; then, with the residual stream h [N*(P+1), D] in fp32:
//   h = pre_layrnorm(class/position embeddings);
//   per layer: x = bf16(LN1(h)); qkv = bf16(x Wqkv^T + b) [rows, 3D] (q, k, v stacked);
//              a = bidirectional attention per tile (backend/cuda/vision_ops.cuh);
//              h += a Wo^T (in the product's epilogue) + bo;
//              x = bf16(LN2(h)); f = bf16(act(x W1^T + b1)); h += f W2^T + b2.
// Products take bf16 operands and accumulate in fp32 (cuBLAS); norms, softmax, activations and
// the residual stream are fp32. The projector: y = bf16(gelu(x W1^T + b1)), z = y W2^T + b2 (fp32)
// on the tiles' rows without the CLS token.
#pragma once

#include "backend/cuda/vision_ops.cuh"
#include "model/llava_next.h"
#include "model/llava_next_device.h"

#include <memory>

namespace lowbit {

class CudaClipVision {
 public:
  CudaClipVision(const LlavaNextModel& host, cuda::Context& ctx);

  // The CPU tower's hidden_states(k) (fp32, host [N*(P+1), D]) for pixel_values [N, 3, S, S].
  Tensor hidden_states(const Tensor& pixel_values, int64_t k);
  // LlavaNextModel::projected_tiles on the GPU (fp32, host [tiles * G*G, H]).
  Tensor projected_tiles(const vision::ProcessedImage& image);
  // The packed features: the host model's pack_image_features of projected_tiles.
  Tensor image_features(const vision::ProcessedImage& image);

 private:
  struct Layer {
    cuda::DeviceBuffer<cuda::bf16> ln1_w, ln1_b, qkv_w, qkv_b, o_w, o_b, ln2_w, ln2_b, fc1_w, fc1_b, fc2_w, fc2_b;
  };
  // Runs the tower to hidden state k, leaving it in h_ (fp32 [N*(P+1), D]).
  void run(const Tensor& pixel_values, int64_t k);

  const LlavaNextModel& host_;
  cuda::Context& ctx_;
  cuda::DeviceBuffer<cuda::bf16> patch_w_, class_emb_, pos_emb_, pre_w_, pre_b_;  // [D, 3p^2], [D], [P+1, D], [D]
  std::vector<Layer> layers_;
  cuda::DeviceBuffer<cuda::bf16> proj1_w_, proj1_b_, proj2_w_, proj2_b_;  // [H, Dv], [H], [H, H], [H] (biases optional)
  // Workspace, grown on demand.
  cuda::DeviceBuffer<float> px_, h_, f32_;
  cuda::DeviceBuffer<cuda::bf16> x_, qkv_, att_, f16_;
  cuda::BidirectionalAttentionWorkspace attn_ws_;
  int64_t tiles_ = 0;
};

}  // namespace lowbit
