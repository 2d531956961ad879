// WeightSource: named tensors of a checkpoint, whatever its format (safetensors, llama2.c).
#pragma once

#include "core/tensor.h"

#include <map>
#include <string>
#include <vector>

namespace lowbit {

struct WeightInfo {
  DType dtype;
  std::vector<int64_t> shape;
  int64_t nbytes;
};

class WeightSource {
 public:
  virtual ~WeightSource() = default;
  virtual std::vector<std::string> names() const = 0;  // sorted
  virtual const WeightInfo* info(const std::string& name) const = 0;  // nullptr when absent
  bool has(const std::string& name) const { return info(name) != nullptr; }
  // The tensor, without copying where the format allows. Throws naming the tensor when absent.
  virtual Tensor get(const std::string& name) const = 0;
  virtual std::vector<std::string> files() const = 0;  // the files the weights come from
};

// A WeightSource whose names and infos come from a table its subclass fills.
class TableWeightSource : public WeightSource {
 public:
  std::vector<std::string> names() const override {
    std::vector<std::string> out;
    for (const auto& [k, v] : infos_) out.push_back(k);
    return out;
  }
  const WeightInfo* info(const std::string& name) const override {
    auto it = infos_.find(name);
    return it == infos_.end() ? nullptr : &it->second;
  }

 protected:
  std::map<std::string, WeightInfo> infos_;
};

}  // namespace lowbit
