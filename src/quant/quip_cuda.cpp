// QuIP's dense products on the GPU (quip.h, quip_products_on): the transforms, the Cholesky
// factor, LDLQ's products of the later columns and the proxy loss by cuBLAS SGEMM (fp32, the
// handle's default math mode: no TF32) and cuSOLVER (fp64). The arrays stay on the host; each
// call uploads its operands and downloads its result, except LDLQ's factor, uploaded once per
// linear, and its errors, uploaded a block of columns at a time.
#include "quant/quip.h"

#include "backend/cuda/cuda_util.h"
#include "calib/block_driver_cuda.h"
#include "core/error.h"
#include "quant/gptq_cuda.h"

#include <algorithm>

namespace lowbit {

using cuda::DeviceBuffer;

namespace {

class CudaProducts final : public QuipProducts {
 public:
  explicit CudaProducts(cuda::Context& ctx) : ctx_(ctx) {}

  // Row-major c = op(a) op(b) is column-major c^T = op(b)^T op(a)^T: cuBLAS gets b first.
  void gemm(const float* a, const float* b, float* c, int64_t m, int64_t n, int64_t k, bool a_t, bool b_t) override {
    const cudaStream_t s = ctx_.stream();
    DeviceBuffer<float> A(size_t(m * k)), Bm(size_t(k * n)), C(size_t(m * n));
    cuda::upload(A.get(), a, A.size(), s);
    cuda::upload(Bm.get(), b, Bm.size(), s);
    const float one = 1.0f, zero = 0.0f;
    LB_CUBLAS_CHECK(cublasSgemm(ctx_.cublas(), b_t ? CUBLAS_OP_T : CUBLAS_OP_N, a_t ? CUBLAS_OP_T : CUBLAS_OP_N, int(n),
                                int(m), int(k), &one, Bm.get(), int(b_t ? k : n), A.get(), int(a_t ? m : k), &zero,
                                C.get(), int(n)));
    cuda::download(c, C.get(), C.size(), s);
  }

  // The row-major lower factor is the column-major upper one.
  bool cholesky_lower(double* a, int64_t n) override {
    const cudaStream_t s = ctx_.stream();
    DeviceBuffer<double> A(size_t(n * n));
    cuda::upload(A.get(), a, A.size(), s);
    if (!potrf_cuda(ctx_, A.get(), n, false)) return false;
    cuda::download(a, A.get(), A.size(), s);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) std::fill(a + i * n + i + 1, a + (i + 1) * n, 0.0);
    return true;
  }

  void ldlq_begin(const float* lf, int64_t rows, int64_t d) override {
    const cudaStream_t s = ctx_.stream();
    rows_ = rows;
    d_ = d;
    done_ = d;
    lf_.resize(size_t(d * d));
    e_.resize(size_t(rows * d));
    cuda::upload(lf_.get(), lf, size_t(d * d), s);  // lf_ may be larger: it only grows
  }

  void ldlq_accumulate(const float* e, int64_t b0, int64_t b1, float* acc) override {
    LB_CHECK(b1 <= done_ && b0 < b1, "quip LDLQ on {}: block {}..{} after columns from {} on", ctx_.name(), b0, b1,
             done_);
    const cudaStream_t s = ctx_.stream();
    const int64_t nb = b1 - b0;
    if (b1 >= d_) {
      std::fill(acc, acc + rows_ * nb, 0.0f);
      return;
    }
    // The columns finished since the last call: b1 .. done_ - 1 of every row.
    const size_t width = size_t(done_ - b1) * sizeof(float), pitch = size_t(d_) * sizeof(float);
    LB_CUDA_CHECK(cudaMemcpy2DAsync(e_.get() + b1, pitch, e + b1, pitch, width, size_t(rows_), cudaMemcpyHostToDevice, s));
    done_ = b1;
    acc_.resize(size_t(rows_ * nb));  // grows only
    // acc [rows, nb] = E[:, b1:d] . Lf[b1:d, b0:b1], row-major; column-major acc^T = Lf^T E^T.
    const float one = 1.0f, zero = 0.0f;
    LB_CUBLAS_CHECK(cublasSgemm(ctx_.cublas(), CUBLAS_OP_N, CUBLAS_OP_N, int(nb), int(rows_), int(d_ - b1), &one,
                                lf_.get() + b1 * d_ + b0, int(d_), e_.get() + b1, int(d_), &zero, acc_.get(), int(nb)));
    cuda::download(acc, acc_.get(), size_t(rows_ * nb), s);
  }

  // T = dW H on the GPU, then the sum of dW * T in fp64 on the host's cores.
  double quadratic_form(const float* dw, const float* h, int64_t rows, int64_t cols) override {
    std::vector<float> t(size_t(rows * cols));
    gemm(dw, h, t.data(), rows, cols, cols, false, false);
    double sum = 0;
    const int64_t n = rows * cols;
#pragma omp parallel for reduction(+ : sum) schedule(static)
    for (int64_t i = 0; i < n; ++i) sum += double(dw[i]) * double(t[size_t(i)]);
    return sum;
  }

 private:
  cuda::Context& ctx_;
  DeviceBuffer<float> lf_, e_, acc_;
  int64_t rows_ = 0, d_ = 0, done_ = 0;
};

}  // namespace

std::unique_ptr<QuipProducts> quip_products_on(const BlockContext& bctx) {
  if (!bctx.device().is_cuda()) return nullptr;
  // CudaBlockContext is the one context on a CUDA device.
  return std::make_unique<CudaProducts>(static_cast<const CudaBlockContext&>(bctx).gpu().context());
}

}  // namespace lowbit
