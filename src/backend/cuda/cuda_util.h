// CUDA plumbing: error checks, device buffers, the library handles lowbit uses.
// Every CUDA, cuBLAS and cuSOLVER call goes through one of the CHECK macros, which throw
// lowbit::Error naming the call, file and line.
//
// This header is read by nvcc too, so it stays free of fmt (whose compile-time format checks
// nvcc's front end rejects): errors are raised through functions compiled as C++.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cusolverDn.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace lowbit::cuda {
// Throw lowbit::Error (defined in cuda_util.cpp).
[[noreturn]] void throw_api_error(const char* api, int code, const char* detail, const char* call, const char* file,
                                  int line);
[[noreturn]] void throw_error(const std::string& message);
}  // namespace lowbit::cuda

#define LB_CUDA_CHECK(call)                                                                                  \
  do {                                                                                                       \
    const cudaError_t err_ = (call);                                                                         \
    if (err_ != cudaSuccess)                                                                                 \
      ::lowbit::cuda::throw_api_error("CUDA", int(err_), cudaGetErrorString(err_), #call, __FILE__, __LINE__); \
  } while (0)

#define LB_CUBLAS_CHECK(call)                                                                                     \
  do {                                                                                                            \
    const cublasStatus_t st_ = (call);                                                                            \
    if (st_ != CUBLAS_STATUS_SUCCESS)                                                                             \
      ::lowbit::cuda::throw_api_error("cuBLAS", int(st_), cublasGetStatusString(st_), #call, __FILE__, __LINE__); \
  } while (0)

#define LB_CUSOLVER_CHECK(call)                                                                    \
  do {                                                                                             \
    const cusolverStatus_t st_ = (call);                                                           \
    if (st_ != CUSOLVER_STATUS_SUCCESS)                                                            \
      ::lowbit::cuda::throw_api_error("cuSOLVER", int(st_), "", #call, __FILE__, __LINE__);          \
  } while (0)

// Checks the last kernel launch.
#define LB_CUDA_LAUNCH_CHECK() LB_CUDA_CHECK(cudaGetLastError())

namespace lowbit::cuda {

// Bytes held by DeviceBuffers now, and the most they ever held (reset_peak_device_bytes()).
size_t device_bytes_in_use();
size_t peak_device_bytes();
void reset_peak_device_bytes();
void note_device_alloc(size_t bytes);
void note_device_free(size_t bytes);
[[noreturn]] void throw_out_of_memory(size_t bytes);

// An owned device allocation of n elements of T (uninitialized).
template <typename T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t n) { resize(n); }
  ~DeviceBuffer() { release(); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept : p_(std::exchange(o.p_, nullptr)), n_(std::exchange(o.n_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      release();
      p_ = std::exchange(o.p_, nullptr);
      n_ = std::exchange(o.n_, 0);
    }
    return *this;
  }
  // Reallocates (contents lost) when n exceeds the current size.
  void resize(size_t n) {
    if (n <= n_ && p_ != nullptr) return;
    release();
    if (n == 0) return;
    const cudaError_t err = cudaMalloc(reinterpret_cast<void**>(&p_), n * sizeof(T));
    if (err != cudaSuccess) {
      (void)cudaGetLastError();
      p_ = nullptr;
      throw_out_of_memory(n * sizeof(T));
    }
    n_ = n;
    note_device_alloc(n * sizeof(T));
  }
  void release() {
    if (p_ != nullptr) {
      cudaFree(p_);
      note_device_free(n_ * sizeof(T));
    }
    p_ = nullptr;
    n_ = 0;
  }
  T* get() const { return p_; }
  size_t size() const { return n_; }
  size_t bytes() const { return n_ * sizeof(T); }

 private:
  T* p_ = nullptr;
  size_t n_ = 0;
};

// The device, a stream, and the cuBLAS / cuSOLVER handles bound to it.
class Context {
 public:
  explicit Context(int device);
  ~Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;
  int device() const { return device_; }
  cudaStream_t stream() const { return stream_; }
  cublasHandle_t cublas() const { return cublas_; }
  cusolverDnHandle_t cusolver() const { return cusolver_; }
  void synchronize() const { LB_CUDA_CHECK(cudaStreamSynchronize(stream_)); }
  std::string name() const;

 private:
  int device_;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
  cusolverDnHandle_t cusolver_ = nullptr;
};

template <typename T>
void upload(T* dst, const T* src, size_t n, cudaStream_t s) {
  LB_CUDA_CHECK(cudaMemcpyAsync(dst, src, n * sizeof(T), cudaMemcpyHostToDevice, s));
}
template <typename T>
void download(T* dst, const T* src, size_t n, cudaStream_t s) {
  LB_CUDA_CHECK(cudaMemcpyAsync(dst, src, n * sizeof(T), cudaMemcpyDeviceToHost, s));
  LB_CUDA_CHECK(cudaStreamSynchronize(s));
}

// Uploads n elements of elem_bytes each to dst, produced on the host piece by piece:
// fill(i0, i1, out) writes elements [i0, i1) to out (elem_bytes each). The pieces go through two
// pinned staging buffers of the calling thread and device (16 MiB each), so that filling one piece
// overlaps the DMA of the previous: pageable sources are copied by the driver at a fraction of
// pinned speed, and a converted copy of a whole tensor would be one more weight-sized host
// allocation. Returns when dst holds every element (stream s synchronized).
void upload_staged(void* dst, size_t elem_bytes, size_t n,
                   const std::function<void(size_t i0, size_t i1, void* out)>& fill, cudaStream_t s);

// GPU time per op of the kernels one stream runs (ppl --profile): mark(name) records an event,
// and everything launched until the next mark() or collect() counts as `name`. Time in which
// the GPU waited for the host (after a synchronization) is in no op.
class OpProfile {
 public:
  struct Entry {
    std::string name;
    double ms = 0;
    int64_t calls = 0;
  };
  explicit OpProfile(cudaStream_t s) : stream_(s) {}
  ~OpProfile();
  OpProfile(const OpProfile&) = delete;
  OpProfile& operator=(const OpProfile&) = delete;
  void mark(const char* name);
  // Waits for the marked ops and adds their times to the totals.
  void collect();
  // Drops the totals (and any marks not collected).
  void reset() {
    used_ = 0;
    totals_.clear();
  }
  // Per op, in order of first appearance.
  const std::vector<Entry>& totals() const { return totals_; }

 private:
  cudaStream_t stream_;
  std::vector<cudaEvent_t> events_;  // a pool; the first used_ are recorded
  std::vector<const char*> names_;   // names_[i]: the op that starts at events_[i]
  size_t used_ = 0;
  std::vector<Entry> totals_;
};

// Number of CUDA devices (0 when the driver finds none).
int device_count();
// "NVIDIA H100 80GB HBM3 (sm_90, 79 GiB)".
std::string device_name(int device);

}  // namespace lowbit::cuda
