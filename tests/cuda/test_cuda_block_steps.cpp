// The GPU forward against the block written once (model/llama_block.h) and against the CPU
// forward: CudaModel::run_block visits the hook sites in the steps' order, each once and named by
// its first linear (the CPU visits every linear of the site, in the tensor table's order), stops
// right after a site's hooks as the CPU does, and what a hook sees at each site and what the run
// leaves in the residual stream match the CPU's within bf16's error. Skipped without a GPU.
#include "formats/checkpoint.h"
#include "model/cuda_model.h"
#include "model/llama_block.h"
#include "test_util.h"
#include "cuda_test_util.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <map>
#include <random>

namespace lowbit {
namespace {

using cuda::bf16;

// ||a - b|| / ||b|| (Frobenius).
double frob_rel(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(b[i]) * b[i];
  }
  EXPECT_GT(den, 0) << "a zero reference checks nothing";
  return den > 0 ? std::sqrt(num / den) : 0;
}

std::vector<float> minus(const std::vector<float>& a, const std::vector<float>& b) {
  std::vector<float> d(a.size());
  for (size_t i = 0; i < a.size(); ++i) d[i] = a[i] - b[i];
  return d;
}

TEST(CudaBlockSteps, SitesVisitedAndStopsAsOnTheCpu) {
  REQUIRE_GPU();
  const std::string dir = test::fixtures_dir() + "/models/llama3-mini-f32";
  LOWBIT_REQUIRE_PATH(dir);
  LlamaModel model(open_checkpoint(dir));
  const LlamaConfig& c = model.config();
  const int64_t layer = 1, T = 24, H = c.hidden_size;
  std::mt19937 g(7);
  std::uniform_int_distribution<int32_t> d(0, int32_t(c.vocab_size - 1));
  std::vector<int32_t> tokens(static_cast<size_t>(T));
  for (auto& t : tokens) t = d(g);
  std::vector<float> hidden0(size_t(T * H));
  model.embed(tokens, hidden0.data());

  CudaModel gpu(model, test::ctx());
  GpuBlockWeights scratch;
  const GpuBlockWeights& gw = gpu.block(layer, scratch);

  std::vector<std::optional<InputSite>> stops = {std::nullopt};
  for (InputSite s : kAllInputSites) stops.push_back(s);
  for (auto stop : stops) {
    const std::string what = stop ? input_site_name(*stop) : "no stop";
    // The CPU: every linear of a site is visited; keep the first's input per site.
    std::vector<LinearKind> cpu_visits;
    std::map<InputSite, std::vector<float>> cpu_in;
    BlockHooks hooks;
    hooks.stop_after = stop;
    hooks.on_input = [&](int64_t, LinearKind k, float* x, int64_t rows, int64_t cols) {
      if (site_linears(input_site(k)).front() != k) return;
      cpu_visits.push_back(k);
      cpu_in[input_site(k)].assign(x, x + rows * cols);
    };
    std::vector<float> cpu_h = hidden0;
    model.run_block(layer, cpu_h.data(), 1, T, 0, &hooks);

    // The GPU: each site once, by its first linear.
    std::vector<LinearKind> gpu_visits;
    std::map<InputSite, std::vector<float>> gpu_in;
    const CudaModel::SiteInput site = [&](LinearKind first, const bf16* x, int64_t rows, int64_t cols, int64_t ld) {
      gpu_visits.push_back(first);
      std::vector<uint16_t> raw(size_t(rows * ld));
      cuda::download(reinterpret_cast<bf16*>(raw.data()), x, raw.size(), test::ctx().stream());
      std::vector<float>& v = gpu_in[input_site(first)];
      v.resize(size_t(rows * cols));
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t j = 0; j < cols; ++j) v[size_t(r * cols + j)] = bf16_to_f32(raw[size_t(r * ld + j)]);
    };
    auto dh = test::up(hidden0);
    gpu.run_block(layer, gw, dh.get(), 1, T, nullptr, &site, stop);
    const std::vector<float> gpu_h = test::down(dh, hidden0.size());

    std::vector<LinearKind> want;
    for (InputSite s : visited_sites(block_steps(), stop)) want.push_back(site_linears(s).front());
    EXPECT_EQ(gpu_visits, want) << what;
    EXPECT_EQ(cpu_visits, want) << what;
    // bf16 inputs and weights (2^-9 relative rounding each) through at most three products:
    // a site's input and the block's change to the residual stream within 2% of the CPU's.
    for (const auto& [s, v] : cpu_in) {
      ASSERT_TRUE(gpu_in.count(s)) << what << " " << input_site_name(s);
      const double e = frob_rel(gpu_in.at(s), v);
      std::printf("stop %-8s site %-8s input rel err %.2e\n", what.c_str(), input_site_name(s), e);
      EXPECT_LT(e, 2e-2) << what << " " << input_site_name(s);
    }
    const bool in_attention = stop == InputSite::AttnIn || stop == InputSite::AttnOut;
    if (in_attention) {
      // Stopped within the attention half: the residual stream untouched on both.
      EXPECT_EQ(0, std::memcmp(gpu_h.data(), hidden0.data(), hidden0.size() * sizeof(float))) << what;
      EXPECT_EQ(0, std::memcmp(cpu_h.data(), hidden0.data(), hidden0.size() * sizeof(float))) << what;
    } else {
      const double e = frob_rel(minus(gpu_h, hidden0), minus(cpu_h, hidden0));
      std::printf("stop %-8s residual change rel err %.2e\n", what.c_str(), e);
      EXPECT_LT(e, 2e-2) << what;
    }
  }
}

}  // namespace
}  // namespace lowbit
