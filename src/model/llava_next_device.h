// A LlavaNextModel placed on the device a command chose (DESIGN.md, "Devices"): its forward and
// greedy decoding there, without the caller knowing which backends this build has.
// place_llava_next() is the one place that knows the CUDA backend (model/llava_next_cuda.h
// implements the GPU side).
//
//   cpu   LlavaNextModel's own fp32 forward (the reference the GPU path is tested against);
//   cuda  the vision tower and the projector in bf16 on the GPU (CudaClipVision), the packing of
//         the tile features (any-resolution grid, image_newline) and the splicing of the features
//         into the token embeddings on the host (LlavaNextModel's, shared with the CPU path), and
//         the language model as CudaModel from those input embeddings (bf16 weights, fp32
//         accumulation; a quantized checkpoint's dequantized weights, as `eval --device cuda`,
//         or, once `--packed` has set the packed-linear factory (pack::enable_gpu_packed_linears,
//         model/cuda_model.h's gpu_packed_linears), its quantized linears from their codes).
// Packed execution on the CPU is the language model's own (pack::install_packed_linears on
// model.language_model() before or after placing): the runner runs whatever kernels it holds.
// Either way the vision tower and the projector run as stored.
#pragma once

#include "core/device.h"
#include "core/tensor.h"
#include "model/llava_next.h"
#include "vision/image_processor.h"

#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace lowbit {

class LlavaNextRunner {
 public:
  virtual ~LlavaNextRunner() = default;
  // As results record it: "cpu", or the GPU's name.
  virtual std::string device_name() const = 0;
  // LlavaNextModel::image_features, on this device.
  virtual Tensor image_features(const vision::ProcessedImage& image) = 0;
  // LlavaNextModel::forward: logits [T, V] (fp32, host).
  virtual Tensor forward(std::span<const int32_t> ids, std::span<const vision::ProcessedImage> images) = 0;
  // LlavaNextModel::generate's contract.
  virtual std::vector<int32_t> generate(std::span<const int32_t> ids, std::span<const vision::ProcessedImage> images,
                                        int64_t max_new_tokens, std::span<const int64_t> stop_ids,
                                        const std::function<void(int32_t)>& on_token = nullptr) = 0;
  // Device memory high-water mark since placing (GPU; nullopt on the CPU).
  virtual std::optional<double> peak_memory_bytes() const { return std::nullopt; }
};

// `model` must outlive the runner. Throws lowbit::Error naming the device when this build or
// machine cannot use it, and for a language model the GPU forward does not run (forward hooks
// other than a checkpoint's activation quantization).
std::unique_ptr<LlavaNextRunner> place_llava_next(const LlavaNextModel& model, const Device& device);

// The GPU runner that place_llava_next makes for CUDA device `device` (model/llava_next_cuda.cpp;
// a build without CUDA links model/llava_next_cuda_none.cpp instead, which refuses). Its language
// model runs its quantized linears packed when the packed-linear factory is set
// (model/cuda_model.h, gpu_packed_linears).
std::unique_ptr<LlavaNextRunner> make_cuda_llava_next_runner(const LlavaNextModel& model, int device);

}  // namespace lowbit
