#include "formats/gguf_llama.h"

#include "core/error.h"
#include "formats/ggml_quants.h"
#include "formats/llama_tensors.h"

#include <fmt/format.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <map>

namespace lowbit {

namespace {

enum class Rope { None, Q, K };  // q/k rows carry the converter's RoPE permutation
constexpr const char* kRopeFreqs = "rope_freqs.weight";

int64_t positive_int(const GgufFile& f, const std::string& key) {
  const auto v = f.get_int(key);
  LB_CHECK(v.has_value(), "'{}': missing required metadata '{}'", f.path(), key);
  LB_CHECK(*v > 0 && *v <= (int64_t(1) << 40), "'{}': metadata '{}' = {} is not a plausible size", f.path(), key, *v);
  return *v;
}

// The converter writes llama3 scaling as per-frequency divisors only. Meta's Llama 3.x models
// all use low/high frequency factors 1 and 4; with those fixed, the factor is the largest
// divisor and the original context follows from any divisor in the interpolated band
// (smooth = (orig / wavelen - 1) / 3). Candidates are checked by recomputing every divisor.
void read_llama3_scaling(const GgufFile& f, const GgufTensorInfo& t, LlamaConfig& c) {
  LB_CHECK(t.ne.size() == 1 && t.ne[0] == c.head_dim / 2, "'{}': tensor '{}' has shape {}, expected [{}]", f.path(),
           t.name, shape_str(t.shape()), c.head_dim / 2);
  std::vector<float> got(size_t(t.numel()));
  f.dequantize(t, got.data());
  double factor = 0;
  for (float g : got) factor = std::max(factor, double(g));
  LB_CHECK(factor >= 1 && std::isfinite(factor), "'{}': tensor '{}' does not hold RoPE divisors (largest {})", f.path(),
           t.name, factor);
  if (factor == 1.0) return;  // no scaling at all
  RopeScaling& s = c.rope_scaling;
  s.type = RopeScaling::Type::Llama3;
  s.factor = factor;
  s.low_freq_factor = 1.0;
  s.high_freq_factor = 4.0;
  std::vector<int64_t> candidates;
  if (auto orig = f.get_int("llama.rope.scaling.original_context_length")) candidates.push_back(*orig);
  for (size_t i = 0; i < got.size(); ++i) {
    const double r = got[i];
    if (r > 1 + 1e-5 && r < factor * (1 - 1e-5)) {
      const double smooth = (1 / r - 1 / factor) / (1 - 1 / factor);
      const float freq = 1.0f / std::pow(float(c.rope_theta), float(2 * i) / float(c.head_dim));
      candidates.push_back(std::llround((3 * smooth + 1) * 2 * M_PI / double(freq)));
      break;
    }
  }
  candidates.push_back(8192);
  for (int k = 0; k <= 24; ++k) candidates.push_back(int64_t(1) << k);
  for (int64_t orig : candidates) {
    if (orig <= 0) continue;
    s.original_max_position_embeddings = orig;
    const std::vector<double> want = llama3_rope_factors(c);
    bool same = true;
    for (size_t i = 0; i < want.size() && same; ++i) same = std::fabs(double(got[i]) - want[i]) <= 1e-5 * want[i];
    if (same) return;
  }
  fail("'{}': tensor '{}' holds RoPE divisors that no llama3 scaling with low/high frequency factors 1/4 produces "
       "(largest {}); lowbit reads only that form of RoPE scaling from GGUF",
       f.path(), t.name, factor);
}

class GgufLlamaWeights final : public TableWeightSource {
 public:
  struct Entry {
    const GgufTensorInfo* tensor;
    Rope rope;
  };

  GgufLlamaWeights(std::shared_ptr<const GgufFile> f, const LlamaConfig& c) : file_(std::move(f)), c_(c) {}

  void add(const std::string& hf, const GgufTensorInfo& t, Rope rope) {
    const GgmlTypeTraits* tr = ggml_type_traits(t.type);
    LB_CHECK(tr && tr->to_float, "'{}': tensor '{}' has ggml type {} ({}), which lowbit cannot read", file_->path(),
             t.name, ggml_type_name(t.type), t.type);
    if (rope != Rope::None) {
      const int64_t heads = rope == Rope::Q ? c_.num_attention_heads : c_.num_key_value_heads;
      LB_CHECK(t.ne.size() == 2 && t.ne[1] == heads * c_.head_dim,
               "'{}': tensor '{}' has shape {}, expected {} rows ({} heads of {})", file_->path(), t.name,
               shape_str(t.shape()), heads * c_.head_dim, heads, c_.head_dim);
    }
    entries_[hf] = {&t, rope};
    infos_[hf] = {DType::F32, t.shape(), t.numel() * 4};
  }

  Tensor get(const std::string& name) const override {
    auto it = entries_.find(name);
    LB_CHECK(it != entries_.end(), "GGUF '{}' has no tensor that lowbit calls '{}'", file_->path(), name);
    const GgufTensorInfo& t = *it->second.tensor;
    Tensor out = Tensor::empty(DType::F32, t.shape());
    file_->dequantize(t, out.mutable_data_as<float>());
    if (it->second.rope != Rope::None)
      unpermute_rows(out, it->second.rope == Rope::Q ? c_.num_attention_heads : c_.num_key_value_heads);
    return out;
  }

  std::vector<std::string> files() const override { return {file_->path()}; }

 private:
  std::shared_ptr<const GgufFile> file_;
  LlamaConfig c_;
  std::map<std::string, Entry> entries_;

  // The converter stores HF row h*d + j*(d/2) + i at row h*d + 2i + j (j = 0, 1; i < d/2); this
  // moves each row back.
  void unpermute_rows(Tensor& w, int64_t heads) const {
    const int64_t d = c_.head_dim, half = d / 2, cols = w.dim(1);
    LB_ASSERT(w.dim(0) == heads * d);
    std::vector<float> src(w.mutable_data_as<float>(), w.mutable_data_as<float>() + w.numel());
    float* dst = w.mutable_data_as<float>();
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t j = 0; j < 2; ++j)
        for (int64_t i = 0; i < half; ++i)
          std::memcpy(dst + (h * d + j * half + i) * cols, src.data() + (h * d + 2 * i + j) * cols, size_t(cols) * 4);
  }
};

}  // namespace

// The rope_freqs.weight divisors the converter writes for llama3 scaling with these parameters
// (convert_hf_to_gguf.py LlamaModel.generate_extra_tensors, in double precision as Python does).
std::vector<double> llama3_rope_factors(const LlamaConfig& c) {
  const RopeScaling& s = c.rope_scaling;
  const double low_wavelen = double(s.original_max_position_embeddings) / s.low_freq_factor;
  const double high_wavelen = double(s.original_max_position_embeddings) / s.high_freq_factor;
  std::vector<double> out;
  for (int64_t i = 0; i < c.head_dim; i += 2) {
    const float freq = 1.0f / std::pow(float(c.rope_theta), float(i) / float(c.head_dim));
    const double wavelen = 2 * M_PI / double(freq);
    if (wavelen < high_wavelen) {
      out.push_back(1.0);
    } else if (wavelen > low_wavelen) {
      out.push_back(s.factor);
    } else {
      const double smooth = (double(s.original_max_position_embeddings) / wavelen - s.low_freq_factor) /
                            (s.high_freq_factor - s.low_freq_factor);
      out.push_back(1.0 / ((1.0 - smooth) / s.factor + smooth));
    }
  }
  return out;
}

LlamaConfig gguf_llama_config(const GgufFile& f) {
  const std::string arch = f.get_string("general.architecture").value_or("");
  LB_CHECK(f.has("general.architecture"), "'{}': missing required metadata 'general.architecture'", f.path());
  LB_CHECK(arch == "llama", "'{}': general.architecture is '{}'; lowbit reads only 'llama' GGUF models", f.path(), arch);
  if (auto experts = f.get_int("llama.expert_count"); experts && *experts > 0)
    fail("'{}': a mixture-of-experts model (llama.expert_count = {}), which lowbit does not run", f.path(), *experts);
  LlamaConfig c;
  c.source = f.path();
  c.num_hidden_layers = positive_int(f, "llama.block_count");
  c.hidden_size = positive_int(f, "llama.embedding_length");
  c.intermediate_size = positive_int(f, "llama.feed_forward_length");
  c.num_attention_heads = positive_int(f, "llama.attention.head_count");
  c.num_key_value_heads = f.has("llama.attention.head_count_kv") ? positive_int(f, "llama.attention.head_count_kv")
                                                                  : c.num_attention_heads;
  LB_CHECK(c.num_attention_heads % c.num_key_value_heads == 0,
           "'{}': llama.attention.head_count {} is not a multiple of llama.attention.head_count_kv {}", f.path(),
           c.num_attention_heads, c.num_key_value_heads);
  if (f.has("llama.attention.key_length")) {
    c.head_dim = positive_int(f, "llama.attention.key_length");
  } else {
    LB_CHECK(c.hidden_size % c.num_attention_heads == 0,
             "'{}': llama.embedding_length {} is not a multiple of llama.attention.head_count {}", f.path(),
             c.hidden_size, c.num_attention_heads);
    c.head_dim = c.hidden_size / c.num_attention_heads;
  }
  if (f.has("llama.attention.value_length"))
    LB_CHECK(positive_int(f, "llama.attention.value_length") == c.head_dim,
             "'{}': llama.attention.value_length {} differs from the key length {}", f.path(),
             *f.get_int("llama.attention.value_length"), c.head_dim);
  LB_CHECK(c.head_dim % 2 == 0, "'{}': head size {} must be even for RoPE", f.path(), c.head_dim);
  if (f.has("llama.rope.dimension_count"))
    LB_CHECK(positive_int(f, "llama.rope.dimension_count") == c.head_dim,
             "'{}': llama.rope.dimension_count {} differs from the head size {} (partial RoPE is not LLaMA)", f.path(),
             *f.get_int("llama.rope.dimension_count"), c.head_dim);
  c.max_position_embeddings = positive_int(f, "llama.context_length");
  const auto eps = f.get_float("llama.attention.layer_norm_rms_epsilon");
  LB_CHECK(eps.has_value(), "'{}': missing required metadata 'llama.attention.layer_norm_rms_epsilon'", f.path());
  LB_CHECK(*eps > 0 && *eps < 1, "'{}': llama.attention.layer_norm_rms_epsilon {} is not in (0, 1)", f.path(), *eps);
  c.rms_norm_eps = *eps;
  c.rope_theta = f.get_float("llama.rope.freq_base").value_or(10000.0);
  LB_CHECK(c.rope_theta > 0 && std::isfinite(c.rope_theta), "'{}': llama.rope.freq_base {} must be positive", f.path(),
           c.rope_theta);

  // RoPE scaling: the explicit keys, or llama3 factors stored as a tensor.
  const std::string scaling = f.get_string("llama.rope.scaling.type").value_or("none");
  if (scaling == "linear") {
    c.rope_scaling.type = RopeScaling::Type::Linear;
    const auto factor = f.get_float("llama.rope.scaling.factor");
    LB_CHECK(factor.has_value(), "'{}': llama.rope.scaling.type is 'linear' but llama.rope.scaling.factor is missing",
             f.path());
    c.rope_scaling.factor = *factor;
  } else {
    LB_CHECK(scaling == "none", "'{}': llama.rope.scaling.type '{}' is not supported (supported: none, linear)",
             f.path(), scaling);
    if (auto old = f.get_float("llama.rope.scale_linear"); old && *old != 1.0) {
      c.rope_scaling.type = RopeScaling::Type::Linear;
      c.rope_scaling.factor = *old;
    }
  }
  if (c.rope_scaling.type == RopeScaling::Type::Linear)
    LB_CHECK(c.rope_scaling.factor > 0 && std::isfinite(c.rope_scaling.factor),
             "'{}': RoPE scaling factor {} must be positive", f.path(), c.rope_scaling.factor);
  if (const GgufTensorInfo* t = f.find_tensor(kRopeFreqs)) {
    LB_CHECK(c.rope_scaling.type == RopeScaling::Type::None,
             "'{}': both llama.rope.scaling.type '{}' and a {} tensor are present", f.path(), scaling, kRopeFreqs);
    read_llama3_scaling(f, *t, c);
  }

  const GgufTensorInfo* embd = f.find_tensor("token_embd.weight");
  if (f.has("llama.vocab_size"))
    c.vocab_size = positive_int(f, "llama.vocab_size");
  else if (const GgufValue* tokens = f.find("tokenizer.ggml.tokens"); tokens && tokens->type == GgufValueType::ARRAY)
    c.vocab_size = int64_t(tokens->count);
  else if (embd && embd->ne.size() == 2)
    c.vocab_size = embd->ne[1];
  LB_CHECK(c.vocab_size > 0, "'{}': the vocabulary size is unknown (no llama.vocab_size, tokenizer.ggml.tokens or "
           "token_embd.weight)", f.path());
  c.tie_word_embeddings = f.find_tensor("output.weight") == nullptr;
  if (auto bos = f.get_int("tokenizer.ggml.bos_token_id")) c.bos_token_id = *bos;
  if (auto eos = f.get_int("tokenizer.ggml.eos_token_id")) c.eos_token_ids = {*eos};
  c.torch_dtype = "float32";  // the weights are presented dequantized
  return c;
}

std::shared_ptr<WeightSource> gguf_llama_weights(std::shared_ptr<const GgufFile> f, const LlamaConfig& c) {
  auto w = std::make_shared<GgufLlamaWeights>(f, c);
  // Each GGUF name is parsed against the tensor table (llama_tensors.h): the work is linear in the
  // tensors the file holds, not in llama.block_count (which the file may overstate).
  for (const GgufTensorInfo& t : f->tensors()) {
    if (t.name == kRopeFreqs) continue;  // folded into the config
    const auto parsed = parse_gguf_tensor_name(t.name);
    LB_CHECK(parsed.has_value(), "'{}': tensor '{}' is not part of a LLaMA model", f->path(), t.name);
    const auto [kind, layer] = *parsed;
    LB_CHECK(layer < c.num_hidden_layers, "'{}': tensor '{}' belongs to block {}, but llama.block_count is {}",
             f->path(), t.name, layer, c.num_hidden_layers);
    const Rope rope = kind == TensorKind::Q ? Rope::Q : kind == TensorKind::K ? Rope::K : Rope::None;
    w->add(hf_tensor_name(kind, layer), t, rope);
  }
  return w;
}

Checkpoint open_gguf_checkpoint(const std::string& path) {
  auto f = GgufFile::open(path);
  Checkpoint ck;
  ck.path = path;
  ck.format = "gguf";
  ck.config = gguf_llama_config(*f);
  ck.weights = gguf_llama_weights(f, ck.config);
  validate_llama_weights(ck.config, *ck.weights, "'" + path + "'");
  ck.tokenizer_path = path;
  return ck;
}

}  // namespace lowbit
