// WeightSource: named tensors of a checkpoint, whatever its format (safetensors, llama2.c).
#pragma once

#include "core/tensor.h"

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

}  // namespace lowbit
