#include "formats/checkpoint.h"

#include "core/error.h"
#include "core/mapped_file.h"
#include "formats/gguf_llama.h"
#include "formats/llava_next_checkpoint.h"
#include "formats/random_weights.h"
#include "formats/safetensors.h"
#include "formats/tokenizer.h"

#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <map>

namespace lowbit {

namespace fs = std::filesystem;
using json = nlohmann::json;

void validate_llama_weights(const LlamaConfig& c, const WeightSource& w, const std::string& what) {
  // Visited one at a time: a config that overstates the layer count fails at the first missing
  // tensor without first listing them all.
  for_each_expected_llama_tensor(c, [&](const std::string& name, const std::vector<int64_t>& shape) {
    const WeightInfo* info = w.info(name);
    if (!info && name == hf_tensor_name(TensorKind::Output))
      fail("{}: config says tie_word_embeddings=false but there is no lm_head.weight", what);
    LB_CHECK(info != nullptr, "{}: missing tensor '{}'", what, name);
    LB_CHECK(info->shape == shape, "{}: tensor '{}' has wrong shape: got {}, expected {}", what, name,
             shape_str(info->shape), shape_str(shape));
    LB_CHECK(info->dtype == DType::F32 || info->dtype == DType::F16 || info->dtype == DType::BF16,
             "{}: tensor '{}' has dtype {}; a 16-bit checkpoint needs F32, F16 or BF16", what, name,
             dtype_name(info->dtype));
  });
}

namespace {

std::string read_file_text(const std::string& path) {
  std::ifstream in(path);
  LB_CHECK(in.good(), "cannot open '{}'", path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

class Llama2cWeights final : public TableWeightSource {
 public:
  Tensor get(const std::string& name) const override {
    auto it = tensors_.find(name);
    LB_CHECK(it != tensors_.end(), "llama2.c checkpoint '{}' has no tensor named '{}'", file_->path(), name);
    return it->second;
  }
  std::vector<std::string> files() const override { return {file_->path()}; }

  std::shared_ptr<const MappedFile> file_;
  std::map<std::string, Tensor> tensors_;
  void put(const std::string& name, Tensor t) {
    infos_[name] = {t.dtype(), t.shape(), t.nbytes()};
    tensors_[name] = std::move(t);
  }
};

// run.c rotates adjacent pairs (2i, 2i+1) of each head; transformers rotates (i, i + d/2).
// Row h*d + j*(d/2) + i of the result is row h*d + 2i + j of the source.
Tensor rope_rows_to_hf(const float* src, int64_t heads, int64_t head_dim, int64_t cols) {
  Tensor out = Tensor::empty(DType::F32, {heads * head_dim, cols});
  float* dst = out.mutable_data_as<float>();
  const int64_t half = head_dim / 2;
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t j = 0; j < 2; ++j)
      for (int64_t i = 0; i < half; ++i)
        std::memcpy(dst + (h * head_dim + j * half + i) * cols, src + (h * head_dim + 2 * i + j) * cols,
                    size_t(cols) * 4);
  return out;
}

}  // namespace

std::shared_ptr<WeightSource> open_llama2c_checkpoint(const std::string& path, LlamaConfig& c) {
  auto w = std::make_shared<Llama2cWeights>();
  w->file_ = MappedFile::open(path);
  const uint8_t* base = w->file_->data();
  const size_t size = w->file_->size();
  LB_CHECK(size >= 28, "llama2.c checkpoint '{}': file is {} bytes, shorter than its 28-byte header", path, size);
  int32_t hdr[7];
  std::memcpy(hdr, base, 28);
  const char* names[7] = {"dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len"};
  for (int i = 0; i < 7; ++i)
    LB_CHECK(i == 5 ? (hdr[i] != 0 && hdr[i] > -(1 << 24) && hdr[i] < (1 << 24)) : (hdr[i] > 0 && hdr[i] < (1 << 24)),
             "llama2.c checkpoint '{}': header field {} = {} is not plausible (is this a llama2.c v0 file?)", path,
             names[i], hdr[i]);
  c = LlamaConfig{};
  c.source = "llama2.c header";
  c.hidden_size = hdr[0];
  c.intermediate_size = hdr[1];
  c.num_hidden_layers = hdr[2];
  c.num_attention_heads = hdr[3];
  c.num_key_value_heads = hdr[4];
  c.tie_word_embeddings = hdr[5] > 0;
  c.vocab_size = hdr[5] > 0 ? hdr[5] : -hdr[5];
  c.max_position_embeddings = hdr[6];
  LB_CHECK(c.hidden_size % c.num_attention_heads == 0 && c.num_attention_heads % c.num_key_value_heads == 0,
           "llama2.c checkpoint '{}': dim {} / n_heads {} / n_kv_heads {} do not divide", path, c.hidden_size,
           c.num_attention_heads, c.num_key_value_heads);
  c.head_dim = c.hidden_size / c.num_attention_heads;
  LB_CHECK(c.head_dim % 2 == 0, "llama2.c checkpoint '{}': head size {} is odd", path, c.head_dim);
  c.rms_norm_eps = 1e-5;  // run.c
  c.rope_theta = 10000.0;
  c.bos_token_id = 1;
  c.eos_token_ids = {2};
  c.torch_dtype = "float32";

  const int64_t L = c.num_hidden_layers, d = c.hidden_size, f = c.intermediate_size, V = c.vocab_size;
  const int64_t q = c.q_dim(), kv = c.kv_dim(), hs = c.head_dim;
  const int64_t counts[] = {V * d, L * d, L * d * q, L * d * kv, L * d * kv, L * q * d, L * d,
                            L * f * d, L * d * f, L * f * d, d, c.max_position_embeddings * hs / 2,
                            c.max_position_embeddings * hs / 2, c.tie_word_embeddings ? 0 : V * d};
  uint64_t expected = 28;
  for (int64_t n : counts) expected += uint64_t(n) * 4;
  LB_CHECK(size == expected, "llama2.c checkpoint '{}': header implies {} bytes, file has {}", path, expected, size);

  const float* p = reinterpret_cast<const float*>(base + 28);
  auto take = [&](int64_t n) {
    const float* r = p;
    p += n;
    return r;
  };
  auto view = [&](const float* data, std::vector<int64_t> shape) {
    return Tensor::view(DType::F32, std::move(shape), data, w->file_);
  };
  const float* emb = take(V * d);
  const float* rms_att = take(L * d);
  const float* wq = take(L * d * q);
  const float* wk = take(L * d * kv);
  const float* wv = take(L * d * kv);
  const float* wo = take(L * q * d);
  const float* rms_ffn = take(L * d);
  const float* w1 = take(L * f * d);
  const float* w2 = take(L * d * f);
  const float* w3 = take(L * f * d);
  const float* rms_final = take(d);
  take(c.max_position_embeddings * hs / 2);  // freq_cis_real: recomputed from rope_theta
  take(c.max_position_embeddings * hs / 2);  // freq_cis_imag
  const float* wcls = c.tie_word_embeddings ? nullptr : take(V * d);

  using K = TensorKind;
  w->put(hf_tensor_name(K::TokenEmbd), view(emb, {V, d}));
  for (int64_t i = 0; i < L; ++i) {
    w->put(hf_tensor_name(K::AttnNorm, i), view(rms_att + i * d, {d}));
    w->put(hf_tensor_name(K::Q, i), rope_rows_to_hf(wq + i * d * q, c.num_attention_heads, hs, d));
    w->put(hf_tensor_name(K::K, i), rope_rows_to_hf(wk + i * d * kv, c.num_key_value_heads, hs, d));
    w->put(hf_tensor_name(K::V, i), view(wv + i * d * kv, {kv, d}));
    w->put(hf_tensor_name(K::O, i), view(wo + i * q * d, {d, q}));
    w->put(hf_tensor_name(K::FfnNorm, i), view(rms_ffn + i * d, {d}));
    w->put(hf_tensor_name(K::Gate, i), view(w1 + i * f * d, {f, d}));
    w->put(hf_tensor_name(K::Down, i), view(w2 + i * d * f, {d, f}));
    w->put(hf_tensor_name(K::Up, i), view(w3 + i * f * d, {f, d}));
  }
  w->put(hf_tensor_name(K::OutputNorm), view(rms_final, {d}));
  if (wcls) w->put(hf_tensor_name(K::Output), view(wcls, {V, d}));
  return w;
}

Checkpoint open_checkpoint(const std::string& path) {
  if (is_random_checkpoint(path)) return open_random_checkpoint(path);
  LB_CHECK(fs::exists(path), "model '{}' does not exist", path);
  Checkpoint ck;
  ck.path = path;
  if (fs::is_directory(path)) {
    const fs::path dir(path);
    const fs::path cfg = dir / "config.json";
    if (fs::exists(cfg)) {
      if (is_llava_next_config(json::parse(read_file_text(cfg.string()), nullptr, false)))
        return open_llava_next_language_model(path);
      ck.format = "hf-safetensors";
      ck.config = load_llama_config(cfg.string());
      LB_CHECK(fs::exists(dir / "model.safetensors") || fs::exists(dir / "model.safetensors.index.json"),
               "model directory '{}' has config.json but no weights (model.safetensors or "
               "model.safetensors.index.json)", path);
      ck.weights = SafetensorsWeights::open(path);
      validate_llama_weights(ck.config, *ck.weights, path);
      ck.tokenizer_path = find_tokenizer_file(path);
      return ck;
    }
    // A directory holding one llama2.c checkpoint.
    std::vector<fs::path> bins;
    for (const auto& e : fs::directory_iterator(dir))
      if (e.path().extension() == ".bin" && e.path().filename() != "tokenizer.bin" &&
          e.path().filename().string().rfind("tok", 0) != 0)
        bins.push_back(e.path());
    LB_CHECK(bins.size() == 1, "model directory '{}' has no config.json and {} llama2.c .bin checkpoints; "
             "expected a Hugging Face directory or one llama2.c checkpoint", path, bins.size());
    return open_checkpoint(bins[0].string());
  }
  const fs::path p(path);
  if (p.extension() == ".gguf") return open_gguf_checkpoint(path);
  if (p.extension() == ".safetensors") {
    const fs::path cfg = p.parent_path() / "config.json";
    LB_CHECK(fs::exists(cfg), "'{}': a safetensors file needs the config.json beside it", path);
    ck.format = "hf-safetensors";
    ck.config = load_llama_config(cfg.string());
    ck.weights = SafetensorsWeights::open(path);
    validate_llama_weights(ck.config, *ck.weights, path);
    ck.tokenizer_path = find_tokenizer_file(p.parent_path().string());
    return ck;
  }
  LB_CHECK(p.extension() == ".bin", "'{}': not a model (expected a Hugging Face directory, a .safetensors file, "
           "a .gguf file or a llama2.c .bin)", path);
  ck.format = "llama2c-v0";
  ck.weights = open_llama2c_checkpoint(path, ck.config);
  validate_llama_weights(ck.config, *ck.weights, path);
  // karpathy's custom-vocabulary models ship tok{N}.bin; the LLaMA-2 vocabulary ships tokenizer.bin.
  for (const std::string& name : {"tok" + std::to_string(ck.config.vocab_size) + ".bin", std::string("tokenizer.bin")}) {
    const fs::path t = p.parent_path() / name;
    if (fs::exists(t)) {
      ck.tokenizer_path = t.string();
      break;
    }
  }
  return ck;
}

}  // namespace lowbit
