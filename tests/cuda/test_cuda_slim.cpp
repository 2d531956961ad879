// SliM-LLM's bit-allocation search (quant/slim.h, step 1b) on the GPU block context against the
// host evaluation. Skipped when no GPU is present.
//
// SearchErrorsMatchHost judges the GPU path alone: the host evaluation (SlimSearch::errors, the
// code the CPU context runs) is given the very inputs the GPU context searches on (the GPU
// forward's bf16 activations, captured and widened to fp32 exactly), so both evaluate the same
// fp32 products of the same values and differ only in the order of the fp32 sums inside the
// products (cuBLAS against OpenBLAS), about 1e-7 of |Y| per output. The KL errors weigh the
// outputs' differences between the quantized and the fp32 weights, which at 1-3 bits are
// tenths of |Y|, so the errors agree to about 1e-6; the bound is 1e-4.
//
// QuantizedAllocationMatchesCpu runs slim:w=2,g=16 through the CPU and the GPU drivers. There
// the searches see different inputs (the GPU forward is bf16, the CPU's fp32: Hessians and
// inputs differ by ~1e-2, CudaBlockContext.ForwardsMatchCpu), so a group whose salience, or a
// count whose mean KL error, is within that of its neighbour's can go the other way; the test
// prints both allocations and counts, checks that every GPU allocation is one SliM-LLM makes
// (counts in range, #W = N), and bounds how many linears may differ.
#include "backend/cuda/cuda_util.h"
#include "calib/block_driver_cuda.h"
#include "formats/checkpoint.h"
#include "model/cuda_model.h"
#include "quant/formats/slim_format.h"
#include "quant/method.h"
#include "quant/quantize.h"
#include "quant/quantize_device.h"
#include "quant/slim.h"
#include "random_calibration.h"
#include "test_util.h"
#include "cuda_test_util.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <regex>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>

namespace lowbit {
namespace {

std::string mini() { return test::fixtures_dir() + "/models/llama3-mini-bf16"; }

// mean over windows of error_i, i = 1 .. R.
std::vector<double> mean_errors(const std::vector<std::vector<double>>& e) {
  std::vector<double> m(e.empty() ? 0 : e[0].size(), 0.0);
  for (const auto& w : e)
    for (size_t i = 0; i < m.size(); ++i) m[i] += w[i] / double(e.size());
  return m;
}

TEST(CudaSlim, SearchErrorsMatchHost) {
  REQUIRE_GPU();
  LOWBIT_REQUIRE_PATH(mini() + "/config.json");
  LlamaModel model(open_checkpoint(mini()));
  const Calibration calib = test::random_calibration(model.config().vocab_size, 5, 96);
  const int64_t H = model.config().hidden_size, T = calib.seqlen, n = calib.nsamples;
  // Block 1's inputs: block 0 run on the host, then uploaded.
  std::vector<float> hidden(size_t(n * T * H));
  for (int64_t s = 0; s < n; ++s) {
    model.embed(calib.windows[size_t(s)], hidden.data() + s * T * H);
    model.run_block(0, hidden.data() + s * T * H, 1, T);
  }
  cuda::Context ctx(0);
  CudaModel gpu(model, ctx, false);
  cuda::DeviceBuffer<float> hidden_dev(hidden.size());
  cuda::upload(hidden_dev.get(), hidden.data(), hidden.size(), ctx.stream());
  BlockWeights w = clone_block_weights(*model.block_weights(1));
  CudaBlockContext bctx(gpu, 1, w, hidden_dev.get(), n, T, nullptr, nullptr);

  // Groups of 16 columns (hidden 128: 8 groups, 3 candidates; down's 448: 28 groups, 13), at
  // w = 2 and 3, ordered by their salience with an identity Hinv (any order will do here).
  const int64_t g = 16;
  std::vector<std::unique_ptr<SlimSearch>> searches;
  std::vector<BlockContext::KlSearchJob> jobs;
  for (int bits : {2, 3})
    for (LinearKind k : kAllLinears) {
      const Tensor& wk = w[k];
      const int64_t rows = wk.dim(0), cols = wk.dim(1);
      std::vector<float> eye(size_t(cols * cols), 0.0f);
      for (int64_t c = 0; c < cols; ++c) eye[size_t(c * cols + c)] = 1.0f;
      const auto sal = slim_group_salience(wk.data_as<float>(), rows, cols, eye.data(), g, DType::F32);
      searches.push_back(std::make_unique<SlimSearch>(wk.data_as<float>(), rows, cols, g, bits, sal));
      ASSERT_GT(searches.back()->candidates(), 0);
      jobs.push_back({k, &searches.back()->kl_search()});
    }
  const BlockContext::KlErrors got = bctx.kl_errors(jobs);
  ASSERT_EQ(got.size(), jobs.size());
  const BlockContext::Inputs in = bctx.capture_inputs(kAllLinears);
  double worst = 0;
  for (size_t j = 0; j < jobs.size(); ++j) {
    const LinearKind k = jobs[j].linear;
    const int64_t cols = w[k].dim(1), R = searches[j]->candidates();
    ASSERT_EQ(int64_t(got[j].size()), n) << linear_name(k);
    std::vector<std::vector<double>> want;
    for (int64_t s = 0; s < n; ++s) {
      want.push_back(searches[j]->errors(in.at(k)->data() + s * T * cols, T));
      ASSERT_EQ(int64_t(got[j][size_t(s)].size()), R) << linear_name(k);
      for (int64_t i = 0; i < R; ++i) {
        const double a = got[j][size_t(s)][size_t(i)], b = want.back()[size_t(i)];
        ASSERT_GT(b, 0.0) << linear_name(k);
        worst = std::max(worst, std::fabs(a - b) / b);
        EXPECT_NEAR(a, b, 1e-4 * b) << linear_name(k) << " job " << j << " window " << s << " count " << i + 1;
      }
    }
    // The same count, unless the host's best two means are closer than the bound allows telling apart.
    std::vector<double> m = mean_errors(want);
    const int64_t c_host = slim_pick_count(want), c_gpu = slim_pick_count(got[j]);
    std::sort(m.begin(), m.end());
    const bool clear = m.size() < 2 || m[1] - m[0] > 1e-3 * m[0];
    std::printf("kl_errors job %zu (%s, R %lld): count GPU %lld host %lld%s\n", j, linear_name(k),
                static_cast<long long>(R), static_cast<long long>(c_gpu), static_cast<long long>(c_host),
                clear ? "" : " (near tie)");
    if (clear) {
      EXPECT_EQ(c_gpu, c_host) << linear_name(k) << " job " << j;
    }
  }
  std::printf("kl_errors: worst relative difference GPU vs host %.3e\n", worst);
}

// The allocation and search count of every linear from the drivers' per-linear notes and the
// quantized model.
struct Allocation {
  std::vector<int> bits;
  int64_t count = -1;
};

std::map<std::string, Allocation> allocations(const QuantizedModel& q, const std::vector<std::string>& notes_by_linear) {
  std::map<std::string, Allocation> out;
  size_t idx = 0;
  for (size_t l = 0; l < q.blocks.size(); ++l)
    for (LinearKind k : kAllLinears) {
      Allocation a;
      a.bits = slim_group_bits(*q.blocks[l].linear[size_t(k)]);
      std::smatch m;
      if (idx < notes_by_linear.size() && std::regex_search(notes_by_linear[idx], m, std::regex("search count (\\d+)")))
        a.count = std::stoll(m[1].str());
      ++idx;
      out[fmt::format("{}.{}", l, linear_name(k))] = a;
    }
  return out;
}

TEST(CudaSlim, QuantizedAllocationMatchesCpu) {
  REQUIRE_GPU();
  LOWBIT_REQUIRE_PATH(mini() + "/config.json");
  const std::string spec = "slim:w=2,g=16";
  LlamaModel model_a(open_checkpoint(mini())), model_b(open_checkpoint(mini()));
  const Calibration calib = test::random_calibration(model_a.config().vocab_size, 8, 128);
  std::vector<std::string> notes_a, notes_b;
  DriverCallbacks cb_a, cb_b;
  cb_a.on_linear = [&](int64_t, const LinearReport& r) { notes_a.push_back(r.note); };
  cb_b.on_linear = [&](int64_t, const LinearReport& r) { notes_b.push_back(r.note); };
  auto m_a = make_method(spec), m_b = make_method(spec);
  const QuantizedModel a = quantize_model(model_a, *m_a, &calib, cb_a);
  QuantizeRun run;
  const QuantizedModel b = quantize_model_on(parse_device("cuda:0"), model_b, *m_b, &calib, cb_b, &run);
  EXPECT_NE(run.device_name, "cpu");
  const auto aa = allocations(a, notes_a), ab = allocations(b, notes_b);
  ASSERT_EQ(aa.size(), ab.size());
  int same_bits = 0, same_count = 0;
  for (const auto& [name, x] : aa) {
    const Allocation& y = ab.at(name);
    ASSERT_EQ(x.bits.size(), y.bits.size()) << name;
    const int64_t ng = int64_t(y.bits.size());
    // A SliM-LLM allocation: count groups at 1 bit, count at 3, the rest at 2.
    EXPECT_GE(y.count, 1) << name;
    EXPECT_LE(y.count, ng / 2 - 1) << name;
    EXPECT_EQ(std::count(y.bits.begin(), y.bits.end(), 1), y.count) << name;
    EXPECT_EQ(std::count(y.bits.begin(), y.bits.end(), 3), y.count) << name;
    same_bits += x.bits == y.bits;
    same_count += x.count == y.count;
    std::printf("%-8s count CPU %lld GPU %lld  CPU %s  GPU %s\n", name.c_str(), static_cast<long long>(x.count),
                static_cast<long long>(y.count), fmt::format("{}", fmt::join(x.bits, "")).c_str(),
                fmt::format("{}", fmt::join(y.bits, "")).c_str());
  }
  std::printf("%s: %d of %zu linears with the same allocation, %d with the same search count\n", spec.c_str(),
              same_bits, aa.size(), same_count);
  // Most decisions are clear of the bf16 forward's perturbation; a few near ties may flip.
  EXPECT_GE(2 * same_count, int(aa.size()));
}

}  // namespace
}  // namespace lowbit
