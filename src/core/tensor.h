// Tensor: dtype, shape, strides (in elements), device and a shared storage. A tensor may view
// memory it does not own (a mapped checkpoint); its storage keeps that memory alive.
#pragma once

#include "core/device.h"
#include "core/dtype.h"

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace lowbit {


struct Storage {
  virtual ~Storage() = default;
  virtual const void* data() const = 0;
  virtual void* mutable_data() { return nullptr; }  // nullptr for read-only (mapped) storage
  virtual size_t bytes() const = 0;
};

class Tensor {
 public:
  Tensor() = default;
  // A new zero-filled, contiguous, owned CPU tensor.
  static Tensor empty(DType dtype, std::vector<int64_t> shape);
  // A read-only view of `data` (bytes must cover the shape) kept alive by `keepalive`.
  static Tensor view(DType dtype, std::vector<int64_t> shape, const void* data,
                     std::shared_ptr<const void> keepalive);

  DType dtype() const { return dtype_; }
  Device::Kind device() const { return device_; }
  const std::vector<int64_t>& shape() const { return shape_; }
  const std::vector<int64_t>& strides() const { return strides_; }
  int ndim() const { return int(shape_.size()); }
  int64_t dim(int i) const { return shape_.at(size_t(i < 0 ? i + ndim() : i)); }
  int64_t numel() const;
  int64_t nbytes() const { return numel() * dtype_size(dtype_); }
  bool defined() const { return data_ != nullptr || numel() == 0; }
  bool is_contiguous() const;
  bool writable() const { return mutable_data_ != nullptr; }
  // Whether this tensor is the only holder of its storage (no other tensor or view shares it):
  // its memory may then be overwritten without any other tensor seeing the change.
  bool sole_owner() const { return keepalive_ != nullptr && keepalive_.use_count() == 1; }

  const void* data() const { return data_; }
  void* mutable_data() const { return mutable_data_; }
  template <typename T> const T* data_as() const { return static_cast<const T*>(data_); }
  template <typename T> T* mutable_data_as() const { return static_cast<T*>(mutable_data_); }

  // fp32 copy of a contiguous tensor of any float or integer dtype.
  Tensor to_f32() const;
  // "[4096, 1024]"
  std::string shape_str() const;

 private:
  DType dtype_ = DType::F32;
  Device::Kind device_ = Device::Kind::Cpu;
  std::vector<int64_t> shape_, strides_;
  const void* data_ = nullptr;
  void* mutable_data_ = nullptr;
  std::shared_ptr<const void> keepalive_;
};

std::string shape_str(const std::vector<int64_t>& shape);

}  // namespace lowbit
