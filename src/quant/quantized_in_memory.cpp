#include "quant/quantized_in_memory.h"

#include "core/error.h"
#include "quant/lowbit_checkpoint.h"

#include <map>
#include <memory>

namespace lowbit {

namespace {

// The source's tensors, with the quantized linears dequantized on request and the rewritten
// tensors substituted.
class QuantizedOverlay final : public QuantizedWeightSource {
 public:
  QuantizedOverlay(std::shared_ptr<WeightSource> base, std::shared_ptr<const QuantizedModel> qm)
      : base_(std::move(base)), qm_(std::move(qm)) {
    for (const auto& name : base_->names()) infos_[name] = *base_->info(name);
    auto replace = [&](const std::string& name, const Tensor& t) {
      LB_CHECK(infos_.count(name), "quantized model rewrites {}, which its source does not have", name);
      replaced_[name] = t;
      infos_[name] = WeightInfo{t.dtype(), t.shape(), t.nbytes()};
    };
    for (size_t i = 0; i < qm_->blocks.size(); ++i) {
      const QuantizedBlock& b = qm_->blocks[i];
      for (LinearKind k : kAllLinears) {
        const QuantizedLinear& q = *b.linear[size_t(k)];
        const std::string name = linear_weight_name(int64_t(i), k);
        LB_CHECK(infos_.count(name), "quantized model has {}, which its source does not", name);
        linears_[name] = &q;
        infos_[name] = WeightInfo{q.dequant_dtype, {q.rows, q.cols}, q.rows * q.cols * dtype_size(q.dequant_dtype)};
      }
      for (const auto& [kind, t] : b.rewritten) replace(hf_tensor_name(kind, int64_t(i)), t);
    }
    for (const auto& [kind, t] : qm_->rewritten) replace(hf_tensor_name(kind), t);
  }
  Tensor get(const std::string& name) const override {
    if (auto it = linears_.find(name); it != linears_.end()) return it->second->dequantize_as_stored();
    if (auto it = replaced_.find(name); it != replaced_.end()) return it->second;
    return base_->get(name);
  }
  // The files the source weights come from (the quantized tensors live in memory only).
  std::vector<std::string> files() const override { return base_->files(); }
  bool is_quantized(const std::string& name) const override { return linears_.count(name) > 0; }
  QuantizedLinear quantized(const std::string& name) const override {
    auto it = linears_.find(name);
    LB_CHECK(it != linears_.end(), "'{}' is not a quantized linear", name);
    return *it->second;
  }

 private:
  std::shared_ptr<WeightSource> base_;
  std::shared_ptr<const QuantizedModel> qm_;
  std::map<std::string, const QuantizedLinear*> linears_;
  std::map<std::string, Tensor> replaced_;
};

}  // namespace

Checkpoint quantized_checkpoint_in_memory(const Checkpoint& source, QuantizedModel qm,
                                          const nlohmann::json& source_identity) {
  LB_CHECK(qm.blocks.size() == size_t(source.config.num_hidden_layers), "quantized model has {} blocks, the source {}",
           qm.blocks.size(), source.config.num_hidden_layers);
  for (size_t i = 0; i < qm.blocks.size(); ++i)
    for (LinearKind k : kAllLinears)
      LB_CHECK(qm.blocks[i].linear[size_t(k)].has_value(), "quantized model leaves layer {} {} unquantized", i,
               linear_name(k));
  auto shared = std::make_shared<const QuantizedModel>(std::move(qm));
  Checkpoint ck;
  ck.path = source.path;
  ck.format = "lowbit-quantized-in-memory";
  ck.config = source.config;
  ck.tokenizer_path = source.tokenizer_path;
  ck.quantization = quantization_metadata(*shared, source_identity);
  ck.weights = std::make_shared<QuantizedOverlay>(source.weights, shared);
  return ck;
}

}  // namespace lowbit
