#include "train/adapter_io.h"

#include "core/error.h"
#include "formats/safetensors.h"
#include "quant/lowbit_checkpoint.h"
#include "train/iec.h"

#include <filesystem>
#include <fstream>
#include <map>
#include <set>

namespace lowbit::train {

namespace fs = std::filesystem;

namespace {

void write_text_atomic(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    LB_CHECK(out.good(), "cannot write '{}'", tmp);
    out << text;
    out.flush();
    LB_CHECK(out.good(), "cannot write '{}'", tmp);
  }
  fs::rename(tmp, path);
}

Tensor f32_tensor(const std::vector<float>& v, std::vector<int64_t> shape) {
  Tensor t = Tensor::empty(DType::F32, std::move(shape));
  std::copy(v.begin(), v.end(), t.mutable_data_as<float>());
  return t;
}

}  // namespace

void save_lora_tensors(const std::string& path, const LoraAdapters& a) {
  SafetensorsWriter w;
  for (size_t l = 0; l < a.layers.size(); ++l)
    for (LinearKind k : kAllLinears) {
      const LoraLinear& ad = a.layers[l][size_t(k)];
      if (!ad.active()) continue;
      w.add(peft_key(int64_t(l), k, 'A'), f32_tensor(ad.a, {ad.r, ad.in}));
      w.add(peft_key(int64_t(l), k, 'B'), f32_tensor(ad.b, {ad.out, ad.r}));
      if (!ad.has_iec()) continue;
      w.add(iec_key(int64_t(l), k, 'A'), f32_tensor(ad.a_scale, {1}));
      w.add(iec_key(int64_t(l), k, 'B'), f32_tensor(ad.b_scale, {1}));
    }
  w.set_metadata("format", "pt");
  w.write(path);
}

void save_peft_adapter(const std::string& dir, const LoraAdapters& a, const std::string& base_model) {
  fs::create_directories(dir);
  std::vector<std::string> targets;
  for (LinearKind k : kAllLinears)
    if (a.config.targets_kind(k)) targets.emplace_back(linear_name(k));
  // The fields PEFT's LoraConfig writes; those lowbit does not use keep PEFT's defaults.
  const nlohmann::json cfg = {{"peft_type", "LORA"},
                              {"task_type", "CAUSAL_LM"},
                              {"base_model_name_or_path", base_model},
                              {"r", a.config.r},
                              {"lora_alpha", a.config.alpha},
                              {"lora_dropout", a.config.dropout},
                              {"target_modules", targets},
                              {"bias", "none"},
                              {"fan_in_fan_out", false},
                              {"inference_mode", true},
                              {"init_lora_weights", true},
                              {"use_rslora", false},
                              {"use_dora", false},
                              {"modules_to_save", nullptr},
                              {"layers_to_transform", nullptr},
                              {"layers_pattern", nullptr},
                              {"rank_pattern", nlohmann::json::object()},
                              {"alpha_pattern", nlohmann::json::object()},
                              {"revision", nullptr}};
  save_lora_tensors(dir + "/adapter_model.safetensors", a);
  write_text_atomic(dir + "/adapter_config.json", cfg.dump(2) + "\n");
}

LoraAdapters load_peft_adapter(const std::string& dir, const LlamaConfig& c) {
  const std::string cfg_path = dir + "/adapter_config.json";
  std::ifstream in(cfg_path);
  LB_CHECK(in.good(), "adapter '{}': no adapter_config.json", dir);
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    LB_CHECK(false, "'{}': not valid JSON ({})", cfg_path, e.what());
  }
  auto get = [&](const char* key, auto fallback) {
    auto it = j.find(key);
    return it == j.end() || it->is_null() ? fallback : it->get<decltype(fallback)>();
  };
  LB_CHECK(get("peft_type", std::string("LORA")) == "LORA", "'{}': peft_type '{}' is not LORA", cfg_path,
           get("peft_type", std::string()));
  LB_CHECK(get("bias", std::string("none")) == "none", "'{}': bias '{}' is not supported (only \"none\")", cfg_path,
           get("bias", std::string()));
  LB_CHECK(!get("use_dora", false) && !get("use_rslora", false), "'{}': DoRA and rsLoRA adapters are not supported",
           cfg_path);
  LB_CHECK(!get("fan_in_fan_out", false), "'{}': fan_in_fan_out adapters are not supported", cfg_path);
  LB_CHECK(j.contains("rank_pattern") == false || j["rank_pattern"].empty(),
           "'{}': per-module ranks (rank_pattern) are not supported", cfg_path);
  LB_CHECK(j.contains("alpha_pattern") == false || j["alpha_pattern"].empty(),
           "'{}': per-module alphas (alpha_pattern) are not supported", cfg_path);
  LoraConfig lc;
  lc.r = get("r", int64_t(8));
  lc.alpha = get("lora_alpha", 8.0);
  lc.dropout = get("lora_dropout", 0.0);
  lc.targets.fill(false);
  const auto& tm = j.at("target_modules");
  LB_CHECK(tm.is_array() || tm.is_string(), "'{}': target_modules must be a list of module names", cfg_path);
  if (tm.is_string()) {
    lc.targets[size_t(lora_target_kind(tm.get<std::string>()))] = true;
  } else {
    for (const auto& t : tm) lc.targets[size_t(lora_target_kind(t.get<std::string>()))] = true;
  }
  auto st = SafetensorsFile::open(dir + "/adapter_model.safetensors");
  // IR-QLoRA's adapters carry the IEC scalars beside A and B (PEFT's config has no field for them).
  for (const auto& e : st->entries())
    if (e.name.ends_with("_A_scale") || e.name.ends_with("_B_scale")) lc.iec = true;
  LoraAdapters a = LoraAdapters::zeros(c, lc);
  std::set<std::string> expected;
  a.for_each([&](const std::string& key, std::vector<float>& v) {
    expected.insert(key);
    const SafetensorsEntry* e = st->find(key);
    LB_CHECK(e != nullptr, "adapter '{}': tensor '{}' is missing (adapter_config.json targets it)", dir, key);
    const Tensor t = st->tensor(key);
    const bool scalar = v.size() == 1 && key.ends_with("_scale");
    LB_CHECK(t.numel() == int64_t(v.size()) && t.ndim() == (scalar ? 1 : 2),
             "adapter '{}': tensor '{}' has shape {}, this model needs {} elements (an adapter for another base "
             "model?)",
             dir, key, t.shape_str(), v.size());
    const Tensor f = t.dtype() == DType::F32 ? t : t.to_f32();
    std::copy(f.data_as<float>(), f.data_as<float>() + f.numel(), v.begin());
  });
  // Shapes exactly: [r, in] for A, [out, r] for B.
  for (size_t l = 0; l < a.layers.size(); ++l)
    for (LinearKind k : kAllLinears) {
      const LoraLinear& ad = a.layers[l][size_t(k)];
      if (!ad.active()) continue;
      const std::vector<int64_t> sa{ad.r, ad.in}, sb{ad.out, ad.r};
      const Tensor ta = st->tensor(peft_key(int64_t(l), k, 'A')), tb = st->tensor(peft_key(int64_t(l), k, 'B'));
      LB_CHECK(ta.shape() == sa, "adapter '{}': tensor '{}' has wrong shape: got {}, expected {}", dir,
               peft_key(int64_t(l), k, 'A'), ta.shape_str(), shape_str(sa));
      LB_CHECK(tb.shape() == sb, "adapter '{}': tensor '{}' has wrong shape: got {}, expected {}", dir,
               peft_key(int64_t(l), k, 'B'), tb.shape_str(), shape_str(sb));
    }
  for (const auto& e : st->entries())
    LB_CHECK(expected.count(e.name), "adapter '{}': unexpected tensor '{}' (another base model, or modules lowbit "
             "does not adapt)", dir, e.name);
  return a;
}

LoraAdapters load_init_adapter(const std::string& dir, const LlamaConfig& c, const LoraConfig& config) {
  LoraAdapters a = load_peft_adapter(dir, c);
  const std::string cfg = dir + "/adapter_config.json";
  LB_CHECK(a.config.r == config.r, "--init-adapter '{}': r is {}, the run's {}", cfg, a.config.r, config.r);
  LB_CHECK(a.config.alpha == config.alpha, "--init-adapter '{}': lora_alpha is {}, the run's {}", cfg, a.config.alpha,
           config.alpha);
  auto names = [](const LoraConfig& lc) {
    std::string s;
    for (LinearKind k : kAllLinears)
      if (lc.targets_kind(k)) {
        if (!s.empty()) s += '+';
        s += linear_name(k);
      }
    return s;
  };
  LB_CHECK(a.config.targets == config.targets, "--init-adapter '{}': target_modules are {}, the run's {}", cfg,
           names(a.config), names(config));
  LB_CHECK(!a.config.iec || config.iec, "--init-adapter '{}': the adapter holds IEC scalars, the run has no IEC",
           dir);
  if (config.iec && !a.config.iec) {
    LoraAdapters z = LoraAdapters::zeros(c, config);
    for (size_t l = 0; l < z.layers.size(); ++l)
      for (size_t k = 0; k < 7; ++k) {
        z.layers[l][k].a = std::move(a.layers[l][k].a);
        z.layers[l][k].b = std::move(a.layers[l][k].b);
      }
    return z;
  }
  a.config = config;
  return a;
}

nlohmann::json base_identity(const LlamaModel& model, const std::string& weights_sha256) {
  const LlamaConfig& c = model.config();
  return {{"hidden_size", c.hidden_size},
          {"intermediate_size", c.intermediate_size},
          {"num_hidden_layers", c.num_hidden_layers},
          {"num_attention_heads", c.num_attention_heads},
          {"num_key_value_heads", c.num_key_value_heads},
          {"vocab_size", c.vocab_size},
          {"weights_sha256", weights_sha256}};
}

std::string adapter_base_quantization(const std::string& dir) {
  const std::string path = dir + "/lowbit_adapter.json";
  if (!fs::exists(path)) return {};
  std::ifstream in(path);
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    LB_CHECK(false, "'{}': not valid JSON ({})", path, e.what());
  }
  auto it = j.find("base_quantization");
  return it != j.end() && it->is_string() ? it->get<std::string>() : std::string();
}

void check_adapter_base(const std::string& dir, const LlamaModel& model, const std::string& weights_sha256) {
  const std::string path = dir + "/lowbit_adapter.json";
  if (!fs::exists(path)) return;  // a PEFT-written adapter: the tensor shapes are the check
  std::ifstream in(path);
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    LB_CHECK(false, "'{}': not valid JSON ({})", path, e.what());
  }
  LB_CHECK(j.contains("base"), "'{}' has no \"base\"", path);
  const nlohmann::json want = j["base"], have = base_identity(model, weights_sha256);
  for (const auto& [k, v] : want.items())
    LB_CHECK(have.contains(k) && have[k] == v, "adapter '{}' was trained on another base model: {} is {} there, {} here",
             dir, k, v.dump(), have.contains(k) ? have[k].dump() : "absent");
}

void merge_adapters(LlamaModel& model, const LoraAdapters& a) {
  LB_CHECK(int64_t(a.layers.size()) == model.config().num_hidden_layers, "adapters for {} layers on a model of {}",
           a.layers.size(), model.config().num_hidden_layers);
  const float scaling = float(a.config.scaling());
  for (size_t l = 0; l < a.layers.size(); ++l) {
    auto w = std::make_shared<BlockWeights>(clone_block_weights(*model.block_weights(int64_t(l))));
    for (LinearKind k : kAllLinears) {
      const LoraLinear& ad = a.layers[l][size_t(k)];
      if (!ad.active()) continue;
      float* wk = (*w)[k].mutable_data_as<float>();
      if (ad.has_iec()) {
        iec_merge({ad.a.data(), ad.b.data(), ad.r, ad.in, ad.out, ad.a_scale[0], ad.b_scale[0], scaling}, wk);
        continue;
      }
      // W[o, i] += scaling * sum_j B[o, j] A[j, i]
      for (int64_t o = 0; o < ad.out; ++o)
        for (int64_t j = 0; j < ad.r; ++j) {
          const float s = scaling * ad.b[size_t(o * ad.r + j)];
          const float* arow = ad.a.data() + j * ad.in;
          float* wrow = wk + o * ad.in;
          for (int64_t i = 0; i < ad.in; ++i) wrow[i] += s * arow[i];
        }
    }
    model.set_block_weights(int64_t(l), std::move(w));
  }
}

namespace {

// A checkpoint's weights with some tensors replaced (the merged linears).
class ReplacedWeights final : public TableWeightSource {
 public:
  ReplacedWeights(std::shared_ptr<WeightSource> base, std::map<std::string, Tensor> replaced)
      : base_(std::move(base)), replaced_(std::move(replaced)) {
    for (const auto& name : base_->names()) infos_[name] = *base_->info(name);
    for (const auto& [name, t] : replaced_) {
      LB_CHECK(infos_.count(name), "merged weight {} is not a tensor of the base", name);
      infos_[name] = WeightInfo{t.dtype(), t.shape(), t.nbytes()};
    }
  }
  Tensor get(const std::string& name) const override {
    if (auto it = replaced_.find(name); it != replaced_.end()) return it->second;
    return base_->get(name);
  }
  std::vector<std::string> files() const override { return base_->files(); }

 private:
  std::shared_ptr<WeightSource> base_;
  std::map<std::string, Tensor> replaced_;
};

}  // namespace

std::unique_ptr<LlamaModel> merged_model(const LlamaModel& base, const LoraAdapters& a) {
  // The merge on a model of its own over the same weights, so that `base` keeps its blocks.
  LlamaModel work(base.checkpoint());
  merge_adapters(work, a);
  std::map<std::string, Tensor> replaced;
  std::vector<std::shared_ptr<const BlockWeights>> blocks;
  for (size_t l = 0; l < a.layers.size(); ++l) {
    blocks.push_back(work.block_weights(int64_t(l)));
    for (LinearKind k : kAllLinears)
      if (a.layers[l][size_t(k)].active()) replaced[linear_weight_name(int64_t(l), k)] = (*blocks.back())[k];
  }
  Checkpoint ck = base.checkpoint();
  ck.weights = std::make_shared<ReplacedWeights>(ck.weights, std::move(replaced));
  auto out = std::make_unique<LlamaModel>(std::move(ck));
  for (size_t l = 0; l < blocks.size(); ++l) out->set_block_weights(int64_t(l), blocks[l]);
  install_quantized_forward(*out);
  return out;
}

}  // namespace lowbit::train
