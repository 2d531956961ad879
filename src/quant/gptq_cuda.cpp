#include "quant/gptq_cuda.h"

#include "backend/cuda/gptq.cuh"
#include "core/error.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <numeric>

namespace lowbit {

using cuda::bf16;
using cuda::DeviceBuffer;

namespace {

// Cholesky (lower, column-major) in place; false when not positive definite.
bool potrf_lower(cuda::Context& ctx, double* A, int64_t n) {
  int lwork = 0;
  LB_CUSOLVER_CHECK(cusolverDnDpotrf_bufferSize(ctx.cusolver(), CUBLAS_FILL_MODE_LOWER, int(n), A, int(n), &lwork));
  DeviceBuffer<double> work(static_cast<size_t>(std::max(lwork, 1)));
  DeviceBuffer<int> info(1);
  LB_CUSOLVER_CHECK(cusolverDnDpotrf(ctx.cusolver(), CUBLAS_FILL_MODE_LOWER, int(n), A, int(n), work.get(), lwork,
                                     info.get()));
  int h = 0;
  cuda::download(&h, info.get(), 1, ctx.stream());
  LB_CHECK(h >= 0, "cuSOLVER potrf: invalid argument {}", -h);
  return h == 0;
}

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

}  // namespace

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
  DeviceBuffer<float> diag_d(static_cast<size_t>(cols));
  cuda::diagonal(h_sum, diag_d.get(), cols, s);
  std::vector<float> diag(static_cast<size_t>(cols));
  cuda::download(diag.data(), diag_d.get(), size_t(cols), s);
  std::vector<uint8_t> dead(static_cast<size_t>(cols), 0);
  for (int64_t c = 0; c < cols; ++c)
    if (diag[size_t(c)] == 0.0f) {
      dead[size_t(c)] = 1;
      ++res.dead_columns;
    }
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
  std::vector<double> d(static_cast<size_t>(cols));
  for (int64_t c = 0; c < cols; ++c) d[size_t(c)] = dead[size_t(c)] ? 1.0 : double(diag[size_t(c)]) * h_scale;
  const std::vector<int64_t> order = gptq_column_order(d, opt.act_order);
  const std::vector<int32_t> perm(order.begin(), order.end());
  DeviceBuffer<int32_t> perm_d(static_cast<size_t>(cols));
  cuda::upload(perm_d.get(), perm.data(), size_t(cols), s);
  if (opt.act_order) {
    Wp.resize(size_t(rows * cols));
    cuda::permute_columns(W.get(), Wp.get(), rows, cols, perm_d.get(), s);
    std::swap(W, Wp);
    Wp.release();
  }

  // Hinv: the upper Cholesky factor of (H + damp mean(diag H) I)^-1, in fp64, damping raised
  // tenfold on failure. Column-major lower factors read row-major are the upper ones.
  double mean_diag = 0;
  for (int64_t c = 0; c < cols; ++c) mean_diag += dead[size_t(c)] ? 1.0 : double(diag[size_t(c)]) * h_scale;
  mean_diag /= double(cols);
  DeviceBuffer<double> A(static_cast<size_t>(cols * cols));
  double damp = opt.damp;
  for (int attempt = 0;; ++attempt) {
    cuda::permute_scale_symmetric(h_sum, A.get(), cols, perm_d.get(), h_scale, s);
    cuda::add_diagonal(A.get(), cols, damp * mean_diag, s);
    bool ok = potrf_lower(ctx, A.get(), cols);
    if (ok) {
      potri_lower(ctx, A.get(), cols);
      ok = potrf_lower(ctx, A.get(), cols);
    }
    if (ok) break;
    LB_CHECK(attempt < 4, "gptq: the Hessian is not positive definite even with damping {} (x mean diagonal)", damp);
    damp = damp > 0.0 ? damp * 10.0 : 0.01;
  }
  res.damp = damp;
  DeviceBuffer<float> hinv(static_cast<size_t>(cols * cols));
  cuda::f64_to_f32(A.get(), hinv.get(), cols * cols, s);
  A.release();

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
  const float minus_one = -1.0f, one = 1.0f;
  for (int64_t i1 = 0; i1 < cols; i1 += B) {
    const int64_t count = std::min(B, cols - i1), i2 = i1 + count;
    a.i1 = i1;
    a.count = count;
    cuda::gptq_block(a, s);
    if (i2 < cols)
      // Row-major W[:, i2:] -= Err [rows, count] . Hinv[i1:i2, i2:]; in column-major terms
      // W^T[i2:, :] -= Hinv^T[i2:, i1:i2] Err^T.
      LB_CUBLAS_CHECK(cublasSgemm(ctx.cublas(), CUBLAS_OP_N, CUBLAS_OP_N, int(cols - i2), int(rows), int(count),
                                  &minus_one, hinv.get() + i1 * cols + i2, int(cols), err.get(), int(count), &one,
                                  W.get() + i2, int(cols)));
  }

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
    LB_CUDA_CHECK(cudaMemcpyAsync(out, deq.get(), deq.bytes(), cudaMemcpyDeviceToDevice, s));
  }
  cuda::download(q.codes.data(), codes_orig.get(), q.codes.size(), s);
  cuda::download(q.scales.data(), scale.get(), q.scales.size(), s);
  cuda::download(q.zeros.data(), zero.get(), q.zeros.size(), s);
  std::vector<double> losses(static_cast<size_t>(rows));
  cuda::download(losses.data(), loss.get(), size_t(rows), s);
  res.loss = std::accumulate(losses.begin(), losses.end(), 0.0) / 2.0;
  return res;
}

QuantizedModel gptq_quantize_model_cuda(LlamaModel& model, QuantMethod& method, const GptqOptions& opt, bool true_seq,
                                        const Calibration& calib, cuda::Context& ctx, const DriverCallbacks& cb) {
  using K = LinearKind;
  const auto t0 = std::chrono::steady_clock::now();
  const LlamaConfig& c = model.config();
  const int64_t H = c.hidden_size, F = c.intermediate_size, qd = c.q_dim(), kvd = c.kv_dim(), L = c.num_hidden_layers;
  const int64_t nseq = int64_t(calib.windows.size()), T = calib.seqlen, N = nseq * T;
  const float eps = float(c.rms_norm_eps);
  const cudaStream_t s = ctx.stream();
  LB_CHECK(nseq > 0, "gptq needs calibration windows");
  QuantizedModel qm;
  qm.method = {{"spec", method.spec().text()}, {"resolved", method.spec().resolved()},
               {"name", method.spec().method()}, {"weight_bits", method.weight_bits()},
               {"activation_bits", method.activation_bits()}, {"group_size", method.group_size()}};
  qm.calibration = calib.identity();
  qm.blocks.resize(size_t(L));

  CudaModel gpu(model, ctx, /*resident=*/false);
  DeviceBuffer<float> hidden(static_cast<size_t>(N * H));
  {
    std::vector<int32_t> ids;
    ids.reserve(size_t(N));
    for (const auto& w : calib.windows) ids.insert(ids.end(), w.begin(), w.end());
    gpu.embed(ids.data(), N, hidden.get());
  }
  // Windows per chunk of the GEMM-heavy steps: about 16k rows.
  const int64_t cw = std::max<int64_t>(1, std::min<int64_t>(nseq, 16384 / std::max<int64_t>(T, 1)));
  const int64_t CR = cw * T;
  DeviceBuffer<bf16> xn(static_cast<size_t>(N * H)), att(static_cast<size_t>(N * qd));
  // The block's ops as CudaModel::run_block runs them: the stacked q/k/v and gate/up projections,
  // RoPE on k (attention rotates q), the residual adds in the o_proj and down_proj GEMMs.
  const int64_t ldqkv = qd + 2 * kvd;
  DeviceBuffer<bf16> qkv(static_cast<size_t>(CR * ldqkv)), gate_up(static_cast<size_t>(CR * 2 * F));
  DeviceBuffer<float> h_small(static_cast<size_t>(std::max(H, qd) * std::max(H, qd))), h_big(static_cast<size_t>(F * F)),
      h1;
  const double h_scale = 2.0 / double(nseq);
  const std::vector<std::vector<K>> groups =
      true_seq ? std::vector<std::vector<K>>{{K::Q, K::K, K::V}, {K::O}, {K::Gate, K::Up}, {K::Down}}
               : std::vector<std::vector<K>>{{K::Q, K::K, K::V, K::O, K::Gate, K::Up, K::Down}};
  GpuBlockWeights w;
  for (int64_t layer = 0; layer < L; ++layer) {
    const auto tb = std::chrono::steady_clock::now();
    if (cb.on_block_start) cb.on_block_start(layer, L);
    gpu.upload_block(layer, w);
    auto quantize_linear = [&](K kind, const float* hs, int64_t cols) {
      const auto tl = std::chrono::steady_clock::now();
      const int64_t rows = linear_out_features(c, kind);
      GptqResult r = gptq_quantize_cuda(ctx, w[kind], hs, h_scale, rows, cols, opt,
                                        linear_storage_dtype(model, layer, kind), w[kind]);
      LinearReport rep;
      rep.kind = kind;
      rep.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - tl).count();
      rep.note = fmt::format("loss {:.4g}", r.loss);
      if (r.damp != opt.damp) rep.note += fmt::format(", damping raised to {}", r.damp);
      if (r.dead_columns) rep.note += fmt::format(", {} dead inputs", r.dead_columns);
      rep.weight_rel_err = r.weight_rel_err;
      qm.blocks[size_t(layer)].linear[size_t(kind)] = std::move(r.q);
      if (cb.on_linear) cb.on_linear(layer, rep);
    };
    auto zero = [&](DeviceBuffer<float>& b, int64_t n) { LB_CUDA_CHECK(cudaMemsetAsync(b.get(), 0, size_t(n) * sizeof(float), s)); };
    // The inputs of each site, chunk by chunk, with the weights as they are now.
    auto qkv_pass = [&](bool gram) {
      if (gram) zero(h_small, H * H);
      for (int64_t r0 = 0; r0 < N; r0 += CR) {
        const int64_t rows = std::min(CR, N - r0);
        cuda::rmsnorm(hidden.get() + r0 * H, w.input_norm.get(), xn.get() + r0 * H, rows, H, eps, s);
        if (gram) cuda::gram_accumulate(ctx, xn.get() + r0 * H, h_small.get(), rows, H);
      }
    };
    auto o_pass = [&](bool gram) {
      if (gram) zero(h_small, qd * qd);
      for (int64_t r0 = 0; r0 < N; r0 += CR) {
        const int64_t rows = std::min(CR, N - r0), nb = rows / T;
        cuda::linear(ctx, xn.get() + r0 * H, w.qkv.get(), qkv.get(), rows, ldqkv, H);
        cuda::rope(qkv.get() + qd, nb, T, c.num_key_value_heads, c.head_dim, ldqkv, gpu.rope_cos(), gpu.rope_sin(), 0, s);
        cuda::attention(qkv.get(), qkv.get() + qd, qkv.get() + qd + kvd, att.get() + r0 * qd, nb, T, 0,
                        c.num_attention_heads, c.num_key_value_heads, c.head_dim, ldqkv, ldqkv, qd, s, gpu.rope_cos(),
                        gpu.rope_sin());
        if (gram) cuda::gram_accumulate(ctx, att.get() + r0 * qd, h_small.get(), rows, qd);
      }
    };
    // residual += o(att); xn = post_norm(residual).
    auto gate_up_pass = [&](bool gram, float* residual) {
      if (gram) zero(h_small, H * H);
      for (int64_t r0 = 0; r0 < N; r0 += CR) {
        const int64_t rows = std::min(CR, N - r0);
        float* h = residual + r0 * H;
        cuda::linear(ctx, att.get() + r0 * qd, w[K::O], h, rows, H, qd, /*accumulate=*/true);
        cuda::rmsnorm(h, w.post_norm.get(), xn.get() + r0 * H, rows, H, eps, s);
        if (gram) cuda::gram_accumulate(ctx, xn.get() + r0 * H, h_small.get(), rows, H);
      }
    };
    // down's input per chunk; with `residual`, also residual += down(...).
    auto down_pass = [&](bool gram, float* residual) {
      if (gram) zero(h_big, F * F);
      for (int64_t r0 = 0; r0 < N; r0 += CR) {
        const int64_t rows = std::min(CR, N - r0);
        cuda::linear(ctx, xn.get() + r0 * H, w.gate_up.get(), gate_up.get(), rows, 2 * F, H);
        cuda::swiglu_rows(gate_up.get(), rows, F, s);
        if (gram) cuda::gram_accumulate(ctx, gate_up.get(), h_big.get(), rows, F, /*ldx=*/2 * F);
        if (residual)
          cuda::linear(ctx, gate_up.get(), w[K::Down], residual + r0 * H, rows, H, F, /*accumulate=*/true,
                       /*lda=*/2 * F);
      }
    };
    if (true_seq) {
      qkv_pass(true);
      for (K kind : {K::Q, K::K, K::V}) quantize_linear(kind, h_small.get(), H);
      o_pass(true);
      quantize_linear(K::O, h_small.get(), qd);
      gate_up_pass(true, hidden.get());
      for (K kind : {K::Gate, K::Up}) quantize_linear(kind, h_small.get(), H);
      down_pass(true, nullptr);
      quantize_linear(K::Down, h_big.get(), F);
      down_pass(false, hidden.get());
    } else {
      // Every site's statistics from the unquantized block (hidden untouched), then the
      // quantized block's outputs.
      DeviceBuffer<float> h_qkv(static_cast<size_t>(H * H)), h_o(static_cast<size_t>(qd * qd)), h_gu(static_cast<size_t>(H * H));
      qkv_pass(true);
      LB_CUDA_CHECK(cudaMemcpyAsync(h_qkv.get(), h_small.get(), size_t(H * H) * sizeof(float), cudaMemcpyDeviceToDevice, s));
      o_pass(true);
      LB_CUDA_CHECK(cudaMemcpyAsync(h_o.get(), h_small.get(), size_t(qd * qd) * sizeof(float), cudaMemcpyDeviceToDevice, s));
      h1.resize(size_t(N * H));
      LB_CUDA_CHECK(cudaMemcpyAsync(h1.get(), hidden.get(), size_t(N * H) * sizeof(float), cudaMemcpyDeviceToDevice, s));
      gate_up_pass(true, h1.get());
      LB_CUDA_CHECK(cudaMemcpyAsync(h_gu.get(), h_small.get(), size_t(H * H) * sizeof(float), cudaMemcpyDeviceToDevice, s));
      down_pass(true, nullptr);
      for (K kind : {K::Q, K::K, K::V}) quantize_linear(kind, h_qkv.get(), H);
      quantize_linear(K::O, h_o.get(), qd);
      for (K kind : {K::Gate, K::Up}) quantize_linear(kind, h_gu.get(), H);
      quantize_linear(K::Down, h_big.get(), F);
      qkv_pass(false);
      o_pass(false);
      gate_up_pass(false, hidden.get());
      down_pass(false, hidden.get());
    }
    ctx.synchronize();
    if (cb.on_block_done)
      cb.on_block_done(layer, L, std::chrono::duration<double>(std::chrono::steady_clock::now() - tb).count());
  }
  qm.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return qm;
}

}  // namespace lowbit
