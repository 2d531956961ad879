#include "calib/input_stats_cuda.h"

#include "core/error.h"

#include <algorithm>

namespace lowbit {

using cuda::bf16;
using cuda::DeviceBuffer;

BlockContext::StatsMap layer_input_stats_cuda(const LlamaModel& model, const std::vector<std::vector<int32_t>>& windows,
                                              int64_t layer, cuda::Context& ctx) {
  const LlamaConfig& c = model.config();
  LB_CHECK(layer >= 0 && layer < c.num_hidden_layers, "layer {} is outside the model's {} blocks", layer,
           c.num_hidden_layers);
  LB_CHECK(!windows.empty(), "no calibration windows");
  const int64_t T = int64_t(windows[0].size()), H = c.hidden_size;
  for (const auto& w : windows) LB_CHECK(int64_t(w.size()) == T, "calibration windows differ in length");
  const cudaStream_t s = ctx.stream();
  CudaModel gpu(model, ctx);

  // One accumulator per site: q/k/v, o, gate/up, down.
  struct Site {
    LinearKind first;
    int64_t dim;
    DeviceBuffer<float> h, absmax, abssum;
  };
  std::vector<Site> sites;
  for (auto [k, dim] : {std::pair{LinearKind::Q, H}, std::pair{LinearKind::O, c.q_dim()}, std::pair{LinearKind::Gate, H},
                        std::pair{LinearKind::Down, c.intermediate_size}}) {
    Site st{k, dim, DeviceBuffer<float>(size_t(dim * dim)), DeviceBuffer<float>(size_t(dim)),
            DeviceBuffer<float>(size_t(dim))};
    for (auto* b : {&st.h, &st.absmax, &st.abssum}) LB_CUDA_CHECK(cudaMemsetAsync(b->get(), 0, b->bytes(), s));
    sites.push_back(std::move(st));
  }
  const CudaModel::SiteInput on_input = [&](LinearKind first, const bf16* x, int64_t rows, int64_t cols, int64_t ld) {
    Site& st = *std::find_if(sites.begin(), sites.end(), [&](const Site& e) { return e.first == first; });
    cuda::gram_accumulate(ctx, x, st.h.get(), rows, cols, ld);
    cuda::column_abs_stats(x, rows, cols, ld, st.absmax.get(), st.abssum.get(), s);
  };

  // Windows per forward: about 16k rows.
  const int64_t chunk = std::max<int64_t>(1, 16384 / std::max<int64_t>(T, 1));
  DeviceBuffer<float> hidden(static_cast<size_t>(std::min<int64_t>(chunk, int64_t(windows.size())) * T * H));
  GpuBlockWeights scratch;
  std::vector<int32_t> ids;
  for (size_t w0 = 0; w0 < windows.size(); w0 += size_t(chunk)) {
    const int64_t nb = std::min<int64_t>(chunk, int64_t(windows.size() - w0));
    ids.clear();
    for (int64_t b = 0; b < nb; ++b) ids.insert(ids.end(), windows[w0 + size_t(b)].begin(), windows[w0 + size_t(b)].end());
    gpu.embed(ids.data(), nb * T, hidden.get());
    for (int64_t i = 0; i < layer; ++i) gpu.run_block(i, gpu.block(i, scratch), hidden.get(), nb, T);
    gpu.run_block(layer, gpu.block(layer, scratch), hidden.get(), nb, T, nullptr, &on_input);
  }

  const int64_t n = int64_t(windows.size()), tokens = n * T;
  BlockContext::StatsMap out;
  for (const Site& st : sites) {
    auto r = std::make_shared<InputStats>();
    r->dim = st.dim;
    r->tokens = tokens;
    r->sequences = n;
    std::vector<float> h(size_t(st.dim * st.dim)), sum(size_t(st.dim));
    r->absmax.resize(size_t(st.dim));
    cuda::download(h.data(), st.h.get(), h.size(), s);
    cuda::download(r->absmax.data(), st.absmax.get(), r->absmax.size(), s);
    cuda::download(sum.data(), st.abssum.get(), sum.size(), s);
    r->hessian.resize(h.size());
    const double scale = 2.0 / double(n);
    for (size_t i = 0; i < h.size(); ++i) r->hessian[i] = double(h[i]) * scale;
    r->absmean.resize(sum.size());
    for (size_t i = 0; i < sum.size(); ++i) r->absmean[i] = double(sum[i]) / double(tokens);
    const std::shared_ptr<const InputStats> shared = r;
    for (LinearKind k : site_linears(input_site(st.first))) out[k] = shared;
  }
  return out;
}

}  // namespace lowbit
