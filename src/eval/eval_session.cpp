#include "eval/eval_session.h"

#include "backend/device_check.h"
#include "core/error.h"

#include <algorithm>

namespace lowbit {

int32_t Decoder::next_greedy(std::span<const int32_t> tokens) {
  const std::span<const float> logits = step(tokens);
  return int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
}

namespace {

class CpuDecoder final : public Decoder {
 public:
  CpuDecoder(const LlamaModel& m, int64_t capacity)
      : model_(m), cache_(m.make_kv_cache(capacity)), logits_(size_t(m.config().vocab_size)) {}
  std::span<const float> step(std::span<const int32_t> tokens) override {
    const int64_t H = model_.config().hidden_size;
    hidden_.resize(tokens.size() * size_t(H));
    model_.forward_cached(tokens, cache_, hidden_.data());
    model_.lm_head(hidden_.data() + (int64_t(tokens.size()) - 1) * H, 1, logits_.data());
    return logits_;
  }

 private:
  const LlamaModel& model_;
  KvCache cache_;
  std::vector<float> hidden_, logits_;
};

class CpuPlacedModel final : public PlacedModel {
 public:
  explicit CpuPlacedModel(const LlamaModel& m) : model_(m) {}
  PerplexityResult perplexity(const std::vector<std::vector<int32_t>>& windows, int64_t,
                              const PerplexityProgress& progress) override {
    return lowbit::perplexity(model_, windows, progress);
  }
  KlDivergenceResult kl_divergence(PlacedModel& base, const std::vector<std::vector<int32_t>>& windows,
                                   const KlDivergenceProgress& progress) override {
    auto* b = dynamic_cast<CpuPlacedModel*>(&base);
    LB_CHECK(b != nullptr, "KL-divergence: the base model is placed on another device than the model (cpu)");
    return lowbit::kl_divergence(b->model_, model_, windows, progress);
  }
  std::unique_ptr<McBackend> mc_backend(int64_t max_length) override {
    return make_cpu_mc_backend(model_, max_length);
  }
  Tensor logits(std::span<const int32_t> ids) override {
    return model_.forward(ids);
  }
  std::unique_ptr<Decoder> decoder(int64_t capacity) override {
    return std::make_unique<CpuDecoder>(model_, capacity);
  }

 private:
  const LlamaModel& model_;
};

class CpuEvalSession final : public EvalSession {
 public:
  const Device& device() const override { return device_; }
  std::string name() const override { return "cpu"; }
  std::unique_ptr<PlacedModel> place(const LlamaModel& model, bool) override {
    return std::make_unique<CpuPlacedModel>(model);
  }

 private:
  Device device_;
};

}  // namespace

std::unique_ptr<EvalSession> open_eval_session(const Device& device) {
  check_device_available(device);
  if (device.is_cuda()) return open_cuda_eval_session(device);
  return std::make_unique<CpuEvalSession>();
}

}  // namespace lowbit
