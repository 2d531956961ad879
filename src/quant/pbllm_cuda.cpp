// PB-LLM's solve on the GPU (pbllm.h, pbllm_quantize_on): the inverse factor from the context's
// device Hessian, the masks and binarizers on the host (pbllm_plan: sorts per column group), the
// column loop by backend/cuda/pbllm.cu and the lazy batch updates by cuBLAS SGEMM, as GPTQ's GPU
// solve runs them.
#include "quant/pbllm.h"

#include "backend/cuda/gptq.cuh"
#include "backend/cuda/pbllm.cuh"
#include "calib/block_driver_cuda.h"
#include "core/error.h"
#include "core/phase_profile.h"
#include "quant/gptq_cuda.h"

#include <algorithm>
#include <numeric>

namespace lowbit {

using cuda::DeviceBuffer;

std::optional<PbllmResult> pbllm_quantize_on(const BlockContext& bctx, const float* w, int64_t rows, int64_t cols,
                                             const InputStats& stats, const PbllmOptions& opt, DType dtype) {
  if (!bctx.device().is_cuda()) return std::nullopt;
  // CudaBlockContext is the one context on a CUDA device.
  const auto& cctx = static_cast<const CudaBlockContext&>(bctx);
  const auto dh = cctx.device_hessian(stats);
  if (!dh) return std::nullopt;
  pbllm_check(cols, opt);
  LB_CHECK(stats.dim == cols, "pbllm: input statistics of {} features for a linear of {}", stats.dim, cols);
  const PhaseScope phase("pbllm solve (GPU)");
  cuda::Context& ctx = cctx.gpu().context();
  const cudaStream_t s = ctx.stream();
  DeviceObsHinv h = obs_hinv_cuda(ctx, dh->sum, dh->scale, cols, opt.damp);

  std::optional<PhaseScope> sub(std::in_place, "pbllm solve (GPU)/plan (host)");
  std::vector<float> u_diag(static_cast<size_t>(cols));
  {
    DeviceBuffer<float> d(static_cast<size_t>(cols));
    cuda::diagonal(h.u.get(), d.get(), cols, s);
    cuda::download(u_diag.data(), d.get(), u_diag.size(), s);
  }
  PbllmPlan plan = pbllm_plan(w, rows, cols, u_diag.data(), h.dead, opt);

  sub.emplace("pbllm solve (GPU)/columns");
  const int64_t n = rows * cols, gs = opt.group_size, ngroups = cols / gs;
  DeviceBuffer<float> W(static_cast<size_t>(n)), Q(static_cast<size_t>(n));
  cuda::upload(W.get(), w, size_t(n), s);
  if (h.dead_columns) {
    DeviceBuffer<uint8_t> dead(static_cast<size_t>(cols));
    cuda::upload(dead.get(), h.dead.data(), h.dead.size(), s);
    cuda::zero_columns(W.get(), rows, cols, dead.get(), s);
    ctx.synchronize();
  }
  DeviceBuffer<uint8_t> mask(static_cast<size_t>(n)), sign(static_cast<size_t>(n)), code(static_cast<size_t>(n)),
      at_mean(static_cast<size_t>(n));
  cuda::upload(mask.get(), plan.mask.data(), plan.mask.size(), s);
  for (auto* b : {&sign, &code, &at_mean}) LB_CUDA_CHECK(cudaMemsetAsync(b->get(), 0, b->bytes(), s));
  DeviceBuffer<float> mu(plan.mu.size()), alpha(plan.alpha.size()), hscale(static_cast<size_t>(rows)),
      hzero(static_cast<size_t>(rows));
  cuda::upload(mu.get(), plan.mu.data(), plan.mu.size(), s);
  cuda::upload(alpha.get(), plan.alpha.data(), plan.alpha.size(), s);
  {
    std::vector<float> sc(static_cast<size_t>(rows)), z(static_cast<size_t>(rows));
    for (int64_t r = 0; r < rows; ++r) {
      sc[size_t(r)] = plan.high[size_t(r)].scale;
      z[size_t(r)] = plan.high[size_t(r)].zero;
    }
    cuda::upload(hscale.get(), sc.data(), sc.size(), s);
    cuda::upload(hzero.get(), z.data(), z.size(), s);
    ctx.synchronize();
  }
  const int64_t B = opt.block;
  LB_CHECK(B <= 128, "pbllm on {}: block={} is not supported there (the GPU runs lazy batches of at most 128 columns)",
           ctx.name(), B);
  DeviceBuffer<float> err(static_cast<size_t>(rows * B));
  DeviceBuffer<double> loss(static_cast<size_t>(rows));
  LB_CUDA_CHECK(cudaMemsetAsync(loss.get(), 0, loss.bytes(), s));
  cuda::PbllmBlockArgs a{};
  a.W = W.get();
  a.hinv = h.u.get();
  a.mask = mask.get();
  a.mu = mu.get();
  a.alpha = alpha.get();
  a.high_scale = hscale.get();
  a.high_zero = hzero.get();
  a.sign = sign.get();
  a.at_mean = at_mean.get();
  a.code = code.get();
  a.q = Q.get();
  a.err = err.get();
  a.loss = loss.get();
  a.rows = rows;
  a.cols = cols;
  a.group_size = gs;
  a.ngroups = ngroups;
  a.maxq = (1 << opt.high_bit) - 1;
  column_batches_cuda(ctx, h.u.get(), W.get(), err.get(), rows, cols, B, [&](int64_t i1, int64_t count) {
    a.i1 = i1;
    a.count = count;
    cuda::pbllm_block(a, s);
  });
  PbllmColumns out;
  out.sign.resize(size_t(n));
  out.code.resize(size_t(n));
  out.at_mean.resize(size_t(n));
  out.w.resize(size_t(n));
  cuda::download(out.sign.data(), sign.get(), size_t(n), s);
  cuda::download(out.code.data(), code.get(), size_t(n), s);
  cuda::download(out.at_mean.data(), at_mean.get(), size_t(n), s);
  cuda::download(out.w.data(), Q.get(), size_t(n), s);
  std::vector<double> losses(static_cast<size_t>(rows));
  cuda::download(losses.data(), loss.get(), losses.size(), s);
  out.loss = std::accumulate(losses.begin(), losses.end(), 0.0);
  sub.emplace("pbllm solve (GPU)/stored form (host)");
  return pbllm_result(std::move(plan), std::move(out), rows, cols, opt, dtype, h.damp, h.dead_columns);
}

}  // namespace lowbit
