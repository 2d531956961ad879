#include "quant/gptq_cuda.h"

#include "calib/block_driver_cuda.h"

#include "backend/cuda/gptq.cuh"
#include "quant/obs_hinv.h"
#include "core/error.h"
#include "core/phase_profile.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <functional>
#include <numeric>
#include <optional>

namespace lowbit {

using cuda::bf16;
using cuda::DeviceBuffer;

bool potrf_cuda(cuda::Context& ctx, double* A, int64_t n, bool lower) {
  const cublasFillMode_t fill = lower ? CUBLAS_FILL_MODE_LOWER : CUBLAS_FILL_MODE_UPPER;
  int lwork = 0;
  LB_CUSOLVER_CHECK(cusolverDnDpotrf_bufferSize(ctx.cusolver(), fill, int(n), A, int(n), &lwork));
  DeviceBuffer<double> work(static_cast<size_t>(std::max(lwork, 1)));
  DeviceBuffer<int> info(1);
  LB_CUSOLVER_CHECK(cusolverDnDpotrf(ctx.cusolver(), fill, int(n), A, int(n), work.get(), lwork, info.get()));
  int h = 0;
  cuda::download(&h, info.get(), 1, ctx.stream());
  LB_CHECK(h >= 0, "cuSOLVER potrf: invalid argument {}", -h);
  return h == 0;
}

namespace {

void potri_lower(cuda::Context& ctx, double* A, int64_t n) {
  int lwork = 0;
  LB_CUSOLVER_CHECK(cusolverDnDpotri_bufferSize(ctx.cusolver(), CUBLAS_FILL_MODE_LOWER, int(n), A, int(n), &lwork));
  DeviceBuffer<double> work(static_cast<size_t>(std::max(lwork, 1)));
  DeviceBuffer<int> info(1);
  LB_CUSOLVER_CHECK(cusolverDnDpotri(ctx.cusolver(), CUBLAS_FILL_MODE_LOWER, int(n), A, int(n), work.get(), lwork,
                                     info.get()));
  int h = 0;
  cuda::download(&h, info.get(), 1, ctx.stream());
  LB_CHECK(h == 0, "cuSOLVER potri: singular factor (info {})", h);
}

// Hinv: the upper Cholesky factor of (H + damp mean_diag I)^-1 (fp32 [n, n] row-major; row-major
// upper = column-major lower), H written into A by fill (each attempt), factored in fp64, the
// damping raised tenfold on failure (as gptq_inverse_factor).
DeviceBuffer<float> inverse_factor(cuda::Context& ctx, const std::function<void(double* A)>& fill, int64_t n,
                                   double mean_diag, double damp, double* damp_used) {
  const cudaStream_t s = ctx.stream();
  DeviceBuffer<double> A(static_cast<size_t>(n * n));
  for (int attempt = 0;; ++attempt) {
    fill(A.get());
    cuda::add_diagonal(A.get(), n, damp * mean_diag, s);
    bool ok = potrf_cuda(ctx, A.get(), n, true);
    if (ok) {
      potri_lower(ctx, A.get(), n);
      ok = potrf_cuda(ctx, A.get(), n, true);
    }
    if (ok) break;
    LB_CHECK(attempt < 4, "the Hessian is not positive definite even with damping {} (x mean diagonal)", damp);
    damp = damp > 0.0 ? damp * 10.0 : 0.01;
  }
  *damp_used = damp;
  DeviceBuffer<float> hinv(static_cast<size_t>(n * n));
  cuda::f64_to_f32(A.get(), hinv.get(), n * n, s);
  return hinv;
}

// The same from a device Hessian h_scale * h_sum with the rows and columns in `perm` order and dead
// inputs' zero diagonals set to 1.
DeviceBuffer<float> inverse_factor(cuda::Context& ctx, const float* h_sum, double h_scale, const int32_t* perm,
                                   int64_t n, double mean_diag, double damp, double* damp_used) {
  return inverse_factor(
      ctx, [&](double* A) { cuda::permute_scale_symmetric(h_sum, A, n, perm, h_scale, ctx.stream()); }, n, mean_diag,
      damp, damp_used);
}

// The Hessian's diagonal (h_scale * h_sum) on the host, and its dead inputs (zero diagonal).
struct Diagonal {
  std::vector<double> d;  // dead inputs: 1, as the factorization sets them
  std::vector<uint8_t> dead;
  int64_t dead_count = 0;
  double mean = 0;
};
Diagonal hessian_diagonal(cuda::Context& ctx, const float* h_sum, double h_scale, int64_t n) {
  const cudaStream_t s = ctx.stream();
  DeviceBuffer<float> diag_d(static_cast<size_t>(n));
  cuda::diagonal(h_sum, diag_d.get(), n, s);
  std::vector<float> diag(static_cast<size_t>(n));
  cuda::download(diag.data(), diag_d.get(), size_t(n), s);
  Diagonal r;
  r.d.resize(size_t(n));
  r.dead.assign(size_t(n), 0);
  for (int64_t c = 0; c < n; ++c) {
    const bool dead = diag[size_t(c)] == 0.0f;
    r.dead[size_t(c)] = dead;
    r.dead_count += dead;
    r.d[size_t(c)] = dead ? 1.0 : double(diag[size_t(c)]) * h_scale;
    r.mean += r.d[size_t(c)];
  }
  r.mean /= double(n);
  return r;
}

}  // namespace

void column_batches_cuda(cuda::Context& ctx, const float* hinv, float* W, const float* err, int64_t rows,
                         int64_t cols, int64_t B, const std::function<void(int64_t i1, int64_t count)>& block) {
  const float minus_one = -1.0f, one = 1.0f;
  for (int64_t i1 = 0; i1 < cols; i1 += B) {
    const int64_t count = std::min(B, cols - i1), i2 = i1 + count;
    block(i1, count);
    if (i2 < cols)
      // Row-major W[:, i2:] -= Err [rows, count] . Hinv[i1:i2, i2:]; in column-major terms
      // W^T[i2:, :] -= Hinv^T[i2:, i1:i2] Err^T.
      LB_CUBLAS_CHECK(cublasSgemm(ctx.cublas(), CUBLAS_OP_N, CUBLAS_OP_N, int(cols - i2), int(rows), int(count),
                                  &minus_one, hinv + i1 * cols + i2, int(cols), err, int(count), &one, W + i2,
                                  int(cols)));
  }
}

GptqResult gptq_quantize_cuda(cuda::Context& ctx, const bf16* Wb, const float* h_sum, double h_scale, int64_t rows,
                              int64_t cols, const GptqOptions& opt, DType dtype, bf16* out) {
  const cudaStream_t s = ctx.stream();
  const int maxq = (1 << opt.bits) - 1;
  const bool per_channel = opt.group_size < 0;
  const int64_t gs = per_channel ? cols : opt.group_size;
  const int64_t ngroups = (cols + gs - 1) / gs;
  GptqResult res;

  DeviceBuffer<float> W(static_cast<size_t>(rows * cols)), Wp;
  cuda::bf16_to_f32(Wb, W.get(), rows * cols, s);
  DeviceBuffer<float> scale(static_cast<size_t>(rows * ngroups)), zero(static_cast<size_t>(rows * ngroups));
  // Per-channel grids from the whole row, before dead columns are zeroed (as the reference).
  if (per_channel) cuda::gptq_row_params(W.get(), rows, cols, 0, cols, maxq, opt.sym, scale.get(), zero.get(), 1, 0, s);

  // Dead inputs and the processing order, from the Hessian's diagonal.
  const Diagonal diag = hessian_diagonal(ctx, h_sum, h_scale, cols);
  const std::vector<uint8_t>& dead = diag.dead;
  res.dead_columns = diag.dead_count;
  if (res.dead_columns) {
    DeviceBuffer<uint8_t> dead_d(static_cast<size_t>(cols));
    cuda::upload(dead_d.get(), dead.data(), size_t(cols), s);
    cuda::zero_columns(W.get(), rows, cols, dead_d.get(), s);
    ctx.synchronize();
  }
  if (opt.static_groups && !per_channel)
    for (int64_t g = 0; g < ngroups; ++g)
      cuda::gptq_row_params(W.get(), rows, cols, g * gs, std::min(cols, (g + 1) * gs) - g * gs, maxq, opt.sym,
                            scale.get(), zero.get(), ngroups, g, s);
  const std::vector<int64_t> order = gptq_column_order(diag.d, opt.act_order);
  const std::vector<int32_t> perm(order.begin(), order.end());
  DeviceBuffer<int32_t> perm_d(static_cast<size_t>(cols));
  cuda::upload(perm_d.get(), perm.data(), size_t(cols), s);
  if (opt.act_order) {
    Wp.resize(size_t(rows * cols));
    cuda::permute_columns(W.get(), Wp.get(), rows, cols, perm_d.get(), s);
    std::swap(W, Wp);
    Wp.release();
  }

  DeviceBuffer<float> hinv = inverse_factor(ctx, h_sum, h_scale, perm_d.get(), cols, diag.mean, opt.damp, &res.damp);

  // Column blocks, then the lazy batch update of every later column.
  const int64_t B = std::min<int64_t>(128, std::max<int64_t>(1, opt.block));
  DeviceBuffer<uint8_t> codes(static_cast<size_t>(rows * cols));
  DeviceBuffer<float> err(static_cast<size_t>(rows * B));
  DeviceBuffer<double> loss(static_cast<size_t>(rows));
  LB_CUDA_CHECK(cudaMemsetAsync(loss.get(), 0, loss.bytes(), s));
  cuda::GptqBlockArgs a{};
  a.W = W.get();
  a.hinv = hinv.get();
  a.codes = codes.get();
  a.err = err.get();
  a.scale = scale.get();
  a.zero = zero.get();
  a.loss = loss.get();
  a.perm = perm_d.get();
  a.rows = rows;
  a.cols = cols;
  a.group_size = gs;
  a.ngroups = ngroups;
  a.maxq = maxq;
  a.sym = opt.sym;
  a.mode = per_channel ? 0 : opt.static_groups ? 2 : 1;
  column_batches_cuda(ctx, hinv.get(), W.get(), err.get(), rows, cols, B, [&](int64_t i1, int64_t count) {
    a.i1 = i1;
    a.count = count;
    cuda::gptq_block(a, s);
  });

  res.q = gptq_output(rows, cols, opt, dtype, order);
  QuantizedLinear& q = res.q;
  DeviceBuffer<uint8_t> codes_orig(static_cast<size_t>(rows * cols));
  cuda::unpermute_codes(codes.get(), codes_orig.get(), rows, cols, perm_d.get(), s);
  DeviceBuffer<int32_t> g_idx_d;
  if (!q.g_idx.empty()) {
    g_idx_d.resize(size_t(cols));
    cuda::upload(g_idx_d.get(), q.g_idx.data(), size_t(cols), s);
  }
  {
    // Dequantized into a scratch buffer first: out may alias the 16-bit weight the error needs.
    DeviceBuffer<bf16> deq(static_cast<size_t>(rows * cols));
    cuda::gptq_dequantize(codes_orig.get(), scale.get(), zero.get(), g_idx_d.get(), rows, cols, gs, ngroups,
                          deq.get(), s);
    DeviceBuffer<double> sums(2);
    LB_CUDA_CHECK(cudaMemsetAsync(sums.get(), 0, sums.bytes(), s));
    cuda::error_sums(Wb, deq.get(), rows * cols, sums.get(), s);
    double h[2];
    cuda::download(h, sums.get(), 2, s);
    res.weight_rel_err = h[1] > 0 ? std::sqrt(h[0] / h[1]) : 0.0;
    if (out != nullptr) LB_CUDA_CHECK(cudaMemcpyAsync(out, deq.get(), deq.bytes(), cudaMemcpyDeviceToDevice, s));
  }
  cuda::download(q.codes.data(), codes_orig.get(), q.codes.size(), s);
  cuda::download(q.scales.data(), scale.get(), q.scales.size(), s);
  cuda::download(q.zeros.data(), zero.get(), q.zeros.size(), s);
  std::vector<double> losses(static_cast<size_t>(rows));
  cuda::download(losses.data(), loss.get(), size_t(rows), s);
  res.loss = std::accumulate(losses.begin(), losses.end(), 0.0) / 2.0;
  return res;
}

std::optional<GptqResult> gptq_quantize_on(const BlockContext& bctx, LinearKind k, int64_t rows, int64_t cols,
                                           const InputStats& stats, const GptqOptions& opt, DType dtype) {
  if (!bctx.device().is_cuda()) return std::nullopt;
  // CudaBlockContext is the one context on a CUDA device.
  const PhaseScope phase("gptq solve (GPU)");
  std::optional<PhaseScope> sub(std::in_place, "gptq solve (GPU)/weight and Hessian");
  const auto& cctx = static_cast<const CudaBlockContext&>(bctx);
  cuda::Context& ctx = cctx.gpu().context();
  const cudaStream_t s = ctx.stream();
  LB_CHECK(stats.dim == cols, "gptq: input statistics of {} features for a linear of {}", stats.dim, cols);
  // W as the context holds the block on the device: bf16 of the host values.
  const bf16* W = cctx.device_weights(std::array{k})[k];
  LB_ASSERT(W != nullptr);
  // H where collect() left it, else the host values uploaded (rounded to fp32).
  DeviceBuffer<float> H;
  const float* hd = nullptr;
  double h_scale = 1.0;
  if (const auto dh = cctx.device_hessian(stats)) {
    hd = dh->sum;
    h_scale = dh->scale;
  } else {
    const std::vector<double>& h = stats.hessian();
    LB_CHECK(int64_t(h.size()) == cols * cols, "gptq: Hessian of {} values for {} input features", h.size(), cols);
    std::vector<float> hf(h.size());
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < int64_t(h.size()); ++i) hf[size_t(i)] = float(h[size_t(i)]);
    H.resize(hf.size());
    cuda::upload(H.get(), hf.data(), hf.size(), s);
    ctx.synchronize();
    hd = H.get();
  }
  // No dequantized weight from the solve: the caller dequantizes q.
  sub.emplace("gptq solve (GPU)/solve and download");
  GptqResult r = gptq_quantize_cuda(ctx, W, hd, h_scale, rows, cols, opt, dtype, nullptr);
  ctx.synchronize();
  return r;
}

DeviceObsHinv obs_hinv_cuda(cuda::Context& ctx, const float* h_sum, double h_scale, int64_t cols, double damp) {
  const PhaseScope phase("inverse factor (GPU)");
  const cudaStream_t s = ctx.stream();
  const Diagonal diag = hessian_diagonal(ctx, h_sum, h_scale, cols);
  std::vector<int32_t> identity(static_cast<size_t>(cols));
  std::iota(identity.begin(), identity.end(), 0);
  DeviceBuffer<int32_t> perm(static_cast<size_t>(cols));
  cuda::upload(perm.get(), identity.data(), identity.size(), s);
  DeviceObsHinv r;
  r.u = inverse_factor(ctx, h_sum, h_scale, perm.get(), cols, diag.mean, damp, &r.damp);
  r.dead = diag.dead;
  r.dead_columns = diag.dead_count;
  ctx.synchronize();
  return r;
}

std::optional<ObsHinv> obs_hinv_device(const BlockContext& bctx, const InputStats& stats, int64_t cols, double damp) {
  if (!bctx.device().is_cuda()) return std::nullopt;
  const auto& cctx = static_cast<const CudaBlockContext&>(bctx);
  const auto dh = cctx.device_hessian(stats);
  if (!dh) return std::nullopt;
  LB_CHECK(stats.dim == cols, "input statistics of {} features for a linear of {}", stats.dim, cols);
  cuda::Context& ctx = cctx.gpu().context();
  DeviceObsHinv d = obs_hinv_cuda(ctx, dh->sum, dh->scale, cols, damp);
  ObsHinv r;
  r.u.resize(static_cast<size_t>(cols * cols));
  cuda::download(r.u.data(), d.u.get(), r.u.size(), ctx.stream());
  // The factor's other triangle holds what the factorization left there; the host's is zero.
#pragma omp parallel for schedule(static)
  for (int64_t i = 1; i < cols; ++i) std::fill_n(r.u.data() + i * cols, i, 0.0f);
  r.dead = std::move(d.dead);
  r.dead_columns = d.dead_columns;
  r.damp = d.damp;
  return r;
}

std::optional<std::vector<float>> gptq_inverse_factor_on(const BlockContext& bctx, const std::vector<double>& h,
                                                         int64_t cols, double damp, double* damp_used) {
  if (!bctx.device().is_cuda()) return std::nullopt;
  LB_CHECK(int64_t(h.size()) == cols * cols, "inverse factor: Hessian of {} entries for {} columns", h.size(), cols);
  const PhaseScope phase("inverse factor (GPU)");
  cuda::Context& ctx = static_cast<const CudaBlockContext&>(bctx).gpu().context();
  const cudaStream_t s = ctx.stream();
  double mean_diag = 0;
  for (int64_t c = 0; c < cols; ++c) mean_diag += h[size_t(c * cols + c)];
  mean_diag /= double(cols);
  // The matrix made from h's lower triangle, as the host's factorization reads it (LAPACK's
  // column-major upper); cuSOLVER's column-major lower is the row-major upper triangle.
  std::vector<double> sym(h.size());
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < cols; ++i)
    for (int64_t j = 0; j < cols; ++j) sym[size_t(i * cols + j)] = h[size_t(std::max(i, j) * cols + std::min(i, j))];
  DeviceBuffer<double> H(h.size());
  cuda::upload(H.get(), sym.data(), sym.size(), s);
  ctx.synchronize();
  sym = {};
  double used = damp;
  DeviceBuffer<float> u = inverse_factor(
      ctx, [&](double* A) { LB_CUDA_CHECK(cudaMemcpyAsync(A, H.get(), H.bytes(), cudaMemcpyDeviceToDevice, s)); }, cols,
      mean_diag, damp, &used);
  std::vector<float> out(h.size());
  cuda::download(out.data(), u.get(), out.size(), s);
  // Below the diagonal: what the factorization left there; the host's factor has zeros.
#pragma omp parallel for schedule(static)
  for (int64_t i = 1; i < cols; ++i) std::fill_n(out.data() + i * cols, i, 0.0f);
  if (damp_used) *damp_used = used;
  return out;
}

}  // namespace lowbit
