// BiLLM's searches on the GPU (billm.h, billm_searches_on): each block's row-wise inputs are
// transposed on the host's cores and uploaded, backend/cuda/billm.cu evaluates every candidate
// (one thread per candidate and row) and takes each candidate's mean in the host's order, and
// only the means come back. Blocks outside 8..128 columns go to the host searches.
#include "quant/billm.h"

#include "backend/cuda/billm.cuh"
#include "backend/cuda/billm_rows.h"
#include "calib/block_driver_cuda.h"

namespace lowbit {

using cuda::DeviceBuffer;

namespace {

// dst [n, rows] = src [rows, n]^T.
template <typename T>
void transpose(const T* src, int64_t rows, int64_t n, std::vector<T>& dst) {
  dst.resize(size_t(rows * n));
#pragma omp parallel for schedule(static)
  for (int64_t j = 0; j < n; ++j)
    for (int64_t r = 0; r < rows; ++r) dst[size_t(j * rows + r)] = src[r * n + j];
}

class CudaSearches final : public BillmSearches {
 public:
  explicit CudaSearches(cuda::Context& ctx) : ctx_(ctx), host_(billm_host_searches()) {}

  std::vector<float> salient_errors(const float* s, int64_t rows, int64_t n, const int32_t* rank,
                                    int64_t nk) override {
    if (!fits(rows, n) || nk < 1) return host_->salient_errors(s, rows, n, rank, nk);
    const cudaStream_t st = ctx_.stream();
    upload_transposed(s, rows, n, sT_, hs_);
    rank_.resize(size_t(n));
    cuda::upload(rank_.get(), rank, size_t(n), st);
    e_.resize(size_t(nk * rows * n));
    cuda::billm_salient_errors(sT_.get(), rank_.get(), rows, n, nk, e_.get(), st);
    return means(nk, rows * n);
  }

  std::vector<float> split_errors(const float* s, const float* absn, const uint8_t* keep, const float* g3,
                                  int64_t rows, int64_t n, const std::vector<float>& splits) override {
    const int64_t ncand = int64_t(splits.size());
    if (!fits(rows, n) || ncand < 1) return host_->split_errors(s, absn, keep, g3, rows, n, splits);
    const cudaStream_t st = ctx_.stream();
    upload_transposed(s, rows, n, sT_, hs_);
    upload_transposed(absn, rows, n, absT_, ha_);
    upload_transposed(g3, rows, n, g3T_, hg_);
    upload_transposed(keep, rows, n, keepT_, hk_);
    splits_.resize(size_t(ncand));
    cuda::upload(splits_.get(), splits.data(), splits.size(), st);
    e_.resize(size_t(ncand * rows * n));
    cuda::billm_split_errors(sT_.get(), absT_.get(), keepT_.get(), g3T_.get(), splits_.get(), rows, n, ncand,
                             e_.get(), st);
    return means(ncand, rows * n);
  }

 private:
  static bool fits(int64_t rows, int64_t n) { return n >= 8 && n <= billm_rows::kMaxN && rows >= 1; }

  template <typename T>
  void upload_transposed(const T* src, int64_t rows, int64_t n, DeviceBuffer<T>& dst, std::vector<T>& staging) {
    transpose(src, rows, n, staging);
    dst.resize(staging.size());
    // Each array has its own staging vector, rewritten only after the means' download has
    // synchronized the stream.
    cuda::upload(dst.get(), staging.data(), staging.size(), ctx_.stream());
  }

  std::vector<float> means(int64_t ncand, int64_t numel) {
    const int64_t chunk = billm_rows::chunk_of(numel);
    partials_.resize(size_t(std::max<int64_t>(1, ncand * (numel / chunk) * billm_rows::kPartials)));
    mean_.resize(size_t(ncand));
    cuda::billm_candidate_means(e_.get(), ncand, numel, partials_.get(), mean_.get(), ctx_.stream());
    std::vector<float> out(static_cast<size_t>(ncand));
    cuda::download(out.data(), mean_.get(), out.size(), ctx_.stream());
    return out;
  }

  cuda::Context& ctx_;
  std::unique_ptr<BillmSearches> host_;
  DeviceBuffer<float> sT_, absT_, g3T_, splits_, e_, partials_, mean_;
  DeviceBuffer<uint8_t> keepT_;
  DeviceBuffer<int32_t> rank_;
  std::vector<float> hs_, ha_, hg_;  // staging of the transposed inputs
  std::vector<uint8_t> hk_;
};

}  // namespace

std::unique_ptr<BillmSearches> billm_searches_on(const BlockContext& bctx) {
  if (!bctx.device().is_cuda()) return nullptr;
  // CudaBlockContext is the one context on a CUDA device.
  return std::make_unique<CudaSearches>(static_cast<const CudaBlockContext&>(bctx).gpu().context());
}

}  // namespace lowbit
