#include "model/llava_next_device.h"

#include "backend/device_check.h"
#include "core/error.h"

namespace lowbit {

namespace {

class CpuLlavaNextRunner final : public LlavaNextRunner {
 public:
  explicit CpuLlavaNextRunner(const LlavaNextModel& m) : model_(m) {}
  std::string device_name() const override { return "cpu"; }
  Tensor image_features(const vision::ProcessedImage& image) override { return model_.image_features(image); }
  Tensor forward(std::span<const int32_t> ids, std::span<const vision::ProcessedImage> images) override {
    return model_.forward(ids, images);
  }
  std::vector<int32_t> generate(std::span<const int32_t> ids, std::span<const vision::ProcessedImage> images,
                                int64_t max_new_tokens, std::span<const int64_t> stop_ids,
                                const std::function<void(int32_t)>& on_token) override {
    return model_.generate(ids, images, max_new_tokens, stop_ids, on_token);
  }

 private:
  const LlavaNextModel& model_;
};

}  // namespace

std::unique_ptr<LlavaNextRunner> place_llava_next(const LlavaNextModel& model, const Device& device) {
  check_device_available(device);
  if (device.is_cuda()) return make_cuda_llava_next_runner(model, device.index);
  return std::make_unique<CpuLlavaNextRunner>(model);
}

}  // namespace lowbit
