#include "core/tensor.h"

#include "core/error.h"

#include <fmt/ranges.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

namespace lowbit {

namespace {

std::vector<int64_t> contiguous_strides(const std::vector<int64_t>& shape) {
  std::vector<int64_t> s(shape.size());
  int64_t acc = 1;
  for (size_t i = shape.size(); i-- > 0;) {
    s[i] = acc;
    acc *= shape[i];
  }
  return s;
}

// 64-byte aligned heap buffer.
struct AlignedBuffer {
  void* p = nullptr;
  explicit AlignedBuffer(size_t n) {
    size_t rounded = (n + 63) / 64 * 64;
    p = std::aligned_alloc(64, rounded ? rounded : 64);
    LB_CHECK(p != nullptr, "out of memory allocating {} bytes", n);
    // Zeroed; a large buffer on all cores, in 4 MiB pieces (its pages first touched there too).
    constexpr size_t kPiece = size_t(1) << 22;
    const int64_t pieces = int64_t((rounded + kPiece - 1) / kPiece);
    auto* bytes = static_cast<unsigned char*>(p);
#pragma omp parallel for schedule(static) if (pieces > 4)
    for (int64_t i = 0; i < pieces; ++i) {
      const size_t off = size_t(i) * kPiece;
      std::memset(bytes + off, 0, std::min(kPiece, rounded - off));
    }
  }
  ~AlignedBuffer() { std::free(p); }
};

}  // namespace

Tensor Tensor::empty(DType dtype, std::vector<int64_t> shape) {
  Tensor t;
  t.dtype_ = dtype;
  t.shape_ = std::move(shape);
  t.strides_ = contiguous_strides(t.shape_);
  auto buf = std::make_shared<AlignedBuffer>(size_t(t.nbytes()));
  t.data_ = buf->p;
  t.mutable_data_ = buf->p;
  t.keepalive_ = std::move(buf);
  return t;
}

Tensor Tensor::view(DType dtype, std::vector<int64_t> shape, const void* data,
                    std::shared_ptr<const void> keepalive) {
  Tensor t;
  t.dtype_ = dtype;
  t.shape_ = std::move(shape);
  t.strides_ = contiguous_strides(t.shape_);
  t.data_ = data;
  t.keepalive_ = std::move(keepalive);
  return t;
}

int64_t Tensor::numel() const {
  int64_t n = 1;
  for (int64_t d : shape_) n *= d;
  return n;
}

bool Tensor::is_contiguous() const { return strides_ == contiguous_strides(shape_); }

Tensor Tensor::to_f32() const {
  LB_ASSERT(is_contiguous());
  Tensor out = empty(DType::F32, shape_);
  convert_to_f32(dtype_, data_, out.mutable_data_as<float>(), numel());
  return out;
}

std::string Tensor::shape_str() const { return lowbit::shape_str(shape_); }

std::string shape_str(const std::vector<int64_t>& shape) { return fmt::format("[{}]", fmt::join(shape, ", ")); }

}  // namespace lowbit
