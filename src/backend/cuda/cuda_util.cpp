#include "backend/cuda/cuda_util.h"

#include "core/error.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <map>
#include <memory>

namespace lowbit::cuda {

void throw_api_error(const char* api, int code, const char* detail, const char* call, const char* file, int line) {
  fail("{} error {}{}{}{} in {} at {}:{}", api, code, *detail ? " (" : "", detail, *detail ? ")" : "", call, file, line);
}

void throw_error(const std::string& message) { throw Error(message); }

void throw_out_of_memory(size_t bytes) {
  size_t free_b = 0, total_b = 0;
  cudaMemGetInfo(&free_b, &total_b);
  fail("out of GPU memory allocating {:.2f} GiB ({:.2f} GiB free of {:.2f})", double(bytes) / double(1 << 30),
       double(free_b) / double(1 << 30), double(total_b) / double(1 << 30));
}

namespace {
std::atomic<size_t> g_in_use{0}, g_peak{0};
}  // namespace

size_t device_bytes_in_use() { return g_in_use.load(); }
size_t peak_device_bytes() { return g_peak.load(); }
void reset_peak_device_bytes() { g_peak.store(g_in_use.load()); }
void note_device_alloc(size_t bytes) {
  const size_t now = g_in_use.fetch_add(bytes) + bytes;
  size_t peak = g_peak.load();
  while (now > peak && !g_peak.compare_exchange_weak(peak, now)) {
  }
}
void note_device_free(size_t bytes) { g_in_use.fetch_sub(bytes); }

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return n;
}

Context::Context(int device) : device_(device) {
  const int n = device_count();
  LB_CHECK(n > 0, "no CUDA device is available (the driver reports none)");
  LB_CHECK(device >= 0 && device < n, "CUDA device {} does not exist ({} available)", device, n);
  LB_CUDA_CHECK(cudaSetDevice(device));
  LB_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  LB_CUBLAS_CHECK(cublasCreate(&cublas_));
  LB_CUBLAS_CHECK(cublasSetStream(cublas_, stream_));
  LB_CUSOLVER_CHECK(cusolverDnCreate(&cusolver_));
  LB_CUSOLVER_CHECK(cusolverDnSetStream(cusolver_, stream_));
}

Context::~Context() {
  if (cusolver_) cusolverDnDestroy(cusolver_);
  if (cublas_) cublasDestroy(cublas_);
  if (stream_) cudaStreamDestroy(stream_);
}

OpProfile::~OpProfile() {
  for (cudaEvent_t e : events_) cudaEventDestroy(e);
}

void OpProfile::mark(const char* name) {
  if (used_ == events_.size()) {
    cudaEvent_t e = nullptr;
    LB_CUDA_CHECK(cudaEventCreate(&e));
    events_.push_back(e);
    names_.push_back(nullptr);
  }
  LB_CUDA_CHECK(cudaEventRecord(events_[used_], stream_));
  names_[used_++] = name;
}

void OpProfile::collect() {
  if (used_ == 0) return;
  mark(nullptr);  // the end of the last op
  LB_CUDA_CHECK(cudaEventSynchronize(events_[used_ - 1]));
  for (size_t i = 0; i + 1 < used_; ++i) {
    float ms = 0;
    LB_CUDA_CHECK(cudaEventElapsedTime(&ms, events_[i], events_[i + 1]));
    auto it = std::find_if(totals_.begin(), totals_.end(), [&](const Entry& e) { return e.name == names_[i]; });
    if (it == totals_.end()) it = totals_.insert(totals_.end(), Entry{names_[i], 0.0, 0});
    it->ms += double(ms);
    ++it->calls;
  }
  used_ = 0;
}

std::string Context::name() const { return device_name(device_); }

std::string device_name(int device) {
  cudaDeviceProp p{};
  LB_CUDA_CHECK(cudaGetDeviceProperties(&p, device));
  return std::string(p.name) + " (sm_" + std::to_string(p.major) + std::to_string(p.minor) + ", " +
         std::to_string(p.totalGlobalMem >> 30) + " GiB)";
}

namespace {

// Two pinned buffers and the events of the copies that last read them, per thread and device
// (events belong to the device they were made on). Freed at thread exit; errors there (the
// runtime may be unloading) are ignored.
struct PinnedStaging {
  static constexpr size_t kBytes = size_t(16) << 20;
  std::array<void*, 2> buf{nullptr, nullptr};
  std::array<cudaEvent_t, 2> copied{nullptr, nullptr};
  std::array<bool, 2> pending{false, false};
  PinnedStaging() {
    for (size_t k = 0; k < 2; ++k) {
      cudaError_t e = cudaHostAlloc(&buf[k], kBytes, cudaHostAllocPortable);
      if (e == cudaSuccess) e = cudaEventCreateWithFlags(&copied[k], cudaEventDisableTiming);
      if (e != cudaSuccess) {
        release();
        LB_CUDA_CHECK(e);
      }
    }
  }
  ~PinnedStaging() { release(); }
  void release() {
    for (size_t k = 0; k < 2; ++k) {
      if (copied[k] != nullptr) (void)cudaEventDestroy(copied[k]);
      if (buf[k] != nullptr) (void)cudaFreeHost(buf[k]);
      copied[k] = nullptr;
      buf[k] = nullptr;
    }
  }
  PinnedStaging(const PinnedStaging&) = delete;
  PinnedStaging& operator=(const PinnedStaging&) = delete;
};

PinnedStaging& pinned_staging() {
  thread_local std::map<int, std::unique_ptr<PinnedStaging>> per_device;
  int dev = 0;
  LB_CUDA_CHECK(cudaGetDevice(&dev));
  std::unique_ptr<PinnedStaging>& st = per_device[dev];
  if (!st) st = std::make_unique<PinnedStaging>();
  return *st;
}

// Makes `device` current for its lifetime (restoring the previous one), so that the staging and its
// events are those of the device that dst and the stream belong to.
class CurrentDevice {
 public:
  explicit CurrentDevice(int device) {
    LB_CUDA_CHECK(cudaGetDevice(&previous_));
    if (device != previous_) LB_CUDA_CHECK(cudaSetDevice(device));
  }
  ~CurrentDevice() { (void)cudaSetDevice(previous_); }
  CurrentDevice(const CurrentDevice&) = delete;
  CurrentDevice& operator=(const CurrentDevice&) = delete;

 private:
  int previous_ = 0;
};

int device_of(const void* p) {
  cudaPointerAttributes a{};
  LB_CUDA_CHECK(cudaPointerGetAttributes(&a, p));
  if (a.type == cudaMemoryTypeDevice || a.type == cudaMemoryTypeManaged) return a.device;
  int current = 0;
  LB_CUDA_CHECK(cudaGetDevice(&current));
  return current;
}

}  // namespace

void upload_staged(void* dst, size_t elem_bytes, size_t n,
                   const std::function<void(size_t i0, size_t i1, void* out)>& fill, cudaStream_t s) {
  LB_ASSERT(elem_bytes > 0 && elem_bytes <= PinnedStaging::kBytes);
  if (n == 0) {
    LB_CUDA_CHECK(cudaStreamSynchronize(s));
    return;
  }
  const CurrentDevice on(device_of(dst));
  PinnedStaging& st = pinned_staging();
  const size_t per = PinnedStaging::kBytes / elem_bytes;
  auto* d = static_cast<unsigned char*>(dst);
  size_t k = 0;
  for (size_t i0 = 0; i0 < n; i0 += per, k ^= 1) {
    const size_t i1 = std::min(n, i0 + per);
    // The copy that last read this buffer (two pieces ago, or a previous call's) must be done.
    if (st.pending[k]) LB_CUDA_CHECK(cudaEventSynchronize(st.copied[k]));
    st.pending[k] = false;
    fill(i0, i1, st.buf[k]);
    const cudaError_t queued =
        cudaMemcpyAsync(d + i0 * elem_bytes, st.buf[k], (i1 - i0) * elem_bytes, cudaMemcpyHostToDevice, s);
    const cudaError_t recorded = queued == cudaSuccess ? cudaEventRecord(st.copied[k], s) : queued;
    if (recorded != cudaSuccess) {
      // No event to wait on: wait for the stream, so that no queued copy still reads a buffer
      // the next call overwrites.
      (void)cudaStreamSynchronize(s);
      st.pending = {false, false};
      LB_CUDA_CHECK(recorded);
    }
    st.pending[k] = true;
  }
  LB_CUDA_CHECK(cudaStreamSynchronize(s));
  st.pending = {false, false};
}

}  // namespace lowbit::cuda
