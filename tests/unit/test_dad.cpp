// DB-LLM's training pieces against PyTorch autograd (scripts/dad_reference.py ->
// tests/fixtures/train/dad.safetensors): the DAD loss and its gradient at the student's logits
// for each weighting and gamma, and the gradient of an fdb linear's group parameters from
// dL/dW (the engine's linear backward, then fdb_group_grad).
#include "backend/ops_backward.h"
#include "core/error.h"
#include "formats/safetensors.h"
#include "quant/formats/bit_plane.h"
#include "quant/formats/fdb_format.h"
#include "test_util.h"
#include "train/dad.h"
#include "train/fdb_train.h"
#include "zst_fixture.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

namespace lowbit {
namespace {

const SafetensorsFile& fixture() {
  static auto f = SafetensorsFile::open(test::fixtures_dir() + "/train/dad.safetensors");
  return *f;
}
template <typename T> std::vector<T> values(const std::string& name) { return test::tensor_values<T>(fixture(), name); }

// Gradients and losses are computed in double on both sides and stored in fp32: 1e-6 of the
// largest gradient bounds fp32 rounding of the results.
TEST(Dad, LossAndGradientMatchAutograd) {
  const auto zt = values<float>("dad.teacher");
  const int64_t N = 6, V = int64_t(zt.size()) / N;
  for (const char* w : {"none", "teacher", "cross"})
    for (int gamma : {1, 2}) {
      SCOPED_TRACE(fmt::format("{} gamma {}", w, gamma));
      auto zs = values<float>("dad.student");
      train::DadOptions opt;
      opt.weight = train::parse_dad_weight(w);
      opt.gamma = gamma;
      const train::DadSums s = train::dad_loss_backward(zt.data(), zs.data(), N, V, opt, 1.0 / double(N));
      const double ref_loss = values<double>(fmt::format("dad.{}.g{}.loss", w, gamma))[0];
      EXPECT_NEAR(s.loss, ref_loss, 1e-9 * std::fabs(ref_loss));
      const auto ref = values<float>(fmt::format("dad.{}.g{}.grad", w, gamma));
      float mx = 0;
      for (float g : ref) mx = std::max(mx, std::fabs(g));
      for (size_t i = 0; i < ref.size(); ++i) EXPECT_NEAR(zs[i], ref[i], 1e-6f * mx) << i;
    }
  EXPECT_THROW(train::parse_dad_weight("entropy"), Error);
}

TEST(Dad, FdbGroupGradientMatchesAutograd) {
  const int64_t rows = 8, cols = 256, g = 64, nx = 5;
  QuantizedLinear q;
  q.rows = rows;
  q.cols = cols;
  q.format = &kFdbFormat;
  q.bits = 2;
  q.group_size = g;
  q.params["has_beta"] = true;
  q.extras["fdb.b1"] = pack_plane(values<uint8_t>("fdb.b1"), rows, cols);
  q.extras["fdb.b2"] = pack_plane(values<uint8_t>("fdb.b2"), rows, cols);
  const auto alpha = values<float>("fdb.alpha");
  Tensor a = Tensor::empty(DType::F32, {rows * cols / g, 3});
  std::copy(alpha.begin(), alpha.end(), a.mutable_data_as<float>());
  q.extras["fdb.alpha"] = a;
  q.validate("fixture");
  // The format's dequantization is the reference's W (one rounding each way: 1 ulp).
  const Tensor w = q.dequantize_f32();
  const auto wref = values<float>("fdb.w");
  for (int64_t i = 0; i < w.numel(); ++i) EXPECT_NEAR(w.data_as<float>()[i], wref[size_t(i)], 1e-7f);
  const auto x = values<float>("fdb.x"), dy = values<float>("fdb.dy");
  std::vector<float> dw(size_t(rows * cols), 0.0f), dalpha(size_t(a.numel()));
  ops::linear_backward(x.data(), w.data_as<float>(), dy.data(), nullptr, dw.data(), nx, cols, rows);
  train::fdb_group_grad(q, dw.data(), dalpha.data());
  const auto ref = values<float>("fdb.dalpha");
  float mx = 0;
  for (float v : ref) mx = std::max(mx, std::fabs(v));
  for (size_t i = 0; i < ref.size(); ++i) EXPECT_NEAR(dalpha[i], ref[i], 1e-5f * mx) << i;
}

// Re-binarization with the init's parameters recovers the init's planes from the dequantized
// weight (the paper's rule is nearest-level rounding on the dual-binary grid).
TEST(Dad, RebinarizeKeepsInitPlanes) {
  const int64_t rows = 4, cols = 128;
  QuantizedLinear q2;
  q2.rows = rows;
  q2.cols = cols;
  q2.bits = 2;
  q2.group_size = 128;
  q2.codes.resize(size_t(rows * cols));
  q2.scales.assign(size_t(rows), 0.01f);
  q2.zeros.assign(size_t(rows), 2.0f);
  for (size_t i = 0; i < q2.codes.size(); ++i) q2.codes[i] = uint8_t((i * 7 + i / 128) % 4);
  QuantizedLinear q = fdb_from_int2(q2, true);
  const Tensor d = q.dequantize_f32();
  QuantizedLinear r = q;
  train::fdb_rebinarize(r, d.data_as<float>());
  for (const char* p : {"fdb.b1", "fdb.b2"})
    EXPECT_EQ(std::memcmp(r.extras.at(p).data(), q.extras.at(p).data(), size_t(q.extras.at(p).nbytes())), 0) << p;
}

}  // namespace
}  // namespace lowbit
