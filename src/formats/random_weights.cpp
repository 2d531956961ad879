#include "formats/random_weights.h"

#include "core/error.h"
#include "formats/tokenizer.h"

#include <filesystem>
#include <map>

namespace lowbit {

namespace {

uint64_t fnv1a(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}

// splitmix64: a counter-based generator, so that any element can be produced independently.
inline uint64_t mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

class RandomWeights final : public TableWeightSource {
 public:
  explicit RandomWeights(const LlamaConfig& c) {
    for (const auto& [name, shape] : expected_llama_tensors(c)) {
      int64_t n = 1;
      for (int64_t d : shape) n *= d;
      infos_[name] = WeightInfo{DType::BF16, shape, n * 2};
    }
  }
  Tensor get(const std::string& name) const override {
    const WeightInfo* i = info(name);
    LB_CHECK(i != nullptr, "random checkpoint has no tensor named '{}'", name);
    Tensor t = Tensor::empty(DType::BF16, i->shape);
    uint16_t* p = t.mutable_data_as<uint16_t>();
    const int64_t n = t.numel();
    if (name.find("norm") != std::string::npos) {
      for (int64_t k = 0; k < n; ++k) p[k] = f32_to_bf16(1.0f);
      return t;
    }
    const uint64_t seed = fnv1a(name);
    // Uniform on [-a, a] with a = 0.02 * sqrt(3): standard deviation 0.02.
    const float a = 0.0346410162f;
#pragma omp parallel for schedule(static)
    for (int64_t k = 0; k < n; ++k) {
      const uint64_t r = mix(seed ^ uint64_t(k));
      const float u = float(r >> 40) * (1.0f / 16777216.0f);  // [0, 1)
      p[k] = f32_to_bf16((2.0f * u - 1.0f) * a);
    }
    return t;
  }
  std::vector<std::string> files() const override { return {}; }
};

}  // namespace

bool is_random_checkpoint(const std::string& path) { return path.rfind("random:", 0) == 0; }

Checkpoint open_random_checkpoint(const std::string& path) {
  const std::string dir = path.substr(7);
  const std::filesystem::path cfg = std::filesystem::path(dir) / "config.json";
  LB_CHECK(std::filesystem::exists(cfg), "'{}': a random checkpoint needs {}", path, cfg.string());
  Checkpoint ck;
  ck.path = path;
  ck.format = "random (weights generated on request)";
  ck.config = load_llama_config(cfg.string());
  ck.weights = std::make_shared<RandomWeights>(ck.config);
  ck.tokenizer_path = find_tokenizer_file(dir);
  return ck;
}

}  // namespace lowbit
