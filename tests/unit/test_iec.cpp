// IR-QLoRA's IEC forward and backward against the official module (utils.IRQLoraLinear4bit, run by
// scripts/iec_reference.py on the CPU: tests/fixtures/train/iec.safetensors): the base is ICQ's
// NF4 weight (quant/icq.h, whose decisions test_icq checks against the reference's search()),
// the LoRA path with both IEC scalars set: the path equal to 1e-5, the base to ~1e-3 (below).
#include "core/error.h"
#include "formats/safetensors.h"
#include "quant/icq.h"
#include "test_util.h"
#include "train/iec.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

namespace lowbit {
namespace {

std::vector<float> floats(const SafetensorsFile& f, const std::string& name) {
  Tensor t = f.tensor(name);
  std::vector<float> v(size_t(t.numel()));
  std::memcpy(v.data(), t.data(), size_t(t.nbytes()));
  return v;
}

TEST(Iec, ForwardMatchesTheReferenceModule) {
  auto f = SafetensorsFile::open(test::fixtures_dir() + "/train/iec.safetensors");
  const Tensor w = f->tensor("w");
  const int64_t out = w.dim(0), in = w.dim(1);
  const std::vector<float> x = floats(*f, "x"), a = floats(*f, "lora_a"), b = floats(*f, "lora_b");
  const std::vector<float> want = floats(*f, "y"), want_base = floats(*f, "y_base");
  const int64_t n = int64_t(x.size()) / in, r = f->tensor("lora_a").dim(0);
  // The base: x W^T with W the ICQ weight dequantized (fp32). Its double-quantized absmax can sit
  // one 8-bit step from bitsandbytes' in a few blocks (their mean offset is torch's fp32 sum,
  // lowbit's fp64: test_icq), so the base agrees to about 1e-3 and the IEC path, which does not
  // read the base, is compared on its own to 1e-5.
  const IcqResult q = icq_quantize(w.data_as<float>(), out, in, IcqOptions{}, DType::F32);
  std::vector<float> wq(size_t(out * in)), y(size_t(n * out));
  q.q.dequantize(wq.data());
  for (int64_t t = 0; t < n; ++t)
    for (int64_t o = 0; o < out; ++o) {
      double s = 0;
      for (int64_t i = 0; i < in; ++i) s += double(x[size_t(t * in + i)]) * double(wq[size_t(o * in + i)]);
      y[size_t(t * out + o)] = float(s);
    }
  for (size_t i = 0; i < y.size(); ++i) ASSERT_NEAR(y[i], want_base[i], 1e-3) << "base " << i;
  train::IecLora l;
  l.a = a.data();
  l.b = b.data();
  l.r = r;
  l.in = in;
  l.out = out;
  l.a_scale = floats(*f, "a_scale")[0];
  l.b_scale = floats(*f, "b_scale")[0];
  l.scaling = float(f->tensor("scaling").data_as<double>()[0]);
  EXPECT_EQ(l.scaling, 16.0f / 64.0f);
  std::vector<float> path(size_t(n * out), 0.0f);
  train::iec_lora_forward(l, x.data(), n, path.data());
  double moved = 0;
  for (size_t i = 0; i < path.size(); ++i) {
    const double want_path = double(want[i]) - double(want_base[i]);
    EXPECT_NEAR(path[i], want_path, 1e-5) << i;
    moved = std::max(moved, std::fabs(want_path));
  }
  EXPECT_GT(moved, 0.05) << "the LoRA path must move the outputs for the comparison to mean anything";
  // Without the IEC scalars the path is plain LoRA: B A x * scaling.
  train::IecLora plain = l;
  plain.a_scale = plain.b_scale = 0;
  std::vector<float> y0(size_t(n * out), 0.0f);
  train::iec_lora_forward(plain, x.data(), 1, y0.data());
  double s = 0;
  for (int64_t k = 0; k < r; ++k) {
    double h = 0;
    for (int64_t i = 0; i < in; ++i) h += double(a[size_t(k * in + i)]) * x[size_t(i)];
    s += double(b[size_t(k)]) * h;
  }
  EXPECT_NEAR(y0[0], s * 0.25, 1e-5);
  l.r = 48;
  std::vector<float> bad(static_cast<size_t>(out));
  try {
    train::iec_lora_forward(l, x.data(), 1, bad.data());
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("rank 48 must divide the linear's input (256) and output (128) sizes"),
              std::string::npos) << e.what();
  }
}

// Gradients of the path against autograd through the official module, for a fixed upstream
// gradient: A, B, both scalars and the path's share of the input gradient.
TEST(Iec, BackwardMatchesAutogradThroughTheReferenceModule) {
  auto f = SafetensorsFile::open(test::fixtures_dir() + "/train/iec.safetensors");
  const Tensor w = f->tensor("w");
  const int64_t out = w.dim(0), in = w.dim(1), r = f->tensor("lora_a").dim(0);
  const std::vector<float> x = floats(*f, "x"), a = floats(*f, "lora_a"), b = floats(*f, "lora_b"),
                           dy = floats(*f, "dy");
  const int64_t n = int64_t(x.size()) / in;
  train::IecLora l;
  l.a = a.data();
  l.b = b.data();
  l.r = r;
  l.in = in;
  l.out = out;
  l.a_scale = floats(*f, "a_scale")[0];
  l.b_scale = floats(*f, "b_scale")[0];
  l.scaling = float(f->tensor("scaling").data_as<double>()[0]);
  std::vector<float> dx(x.size(), 0.0f), da(a.size(), 0.0f), db(b.size(), 0.0f);
  float da_s = 0, db_s = 0;
  train::iec_lora_backward(l, x.data(), dy.data(), n, {dx.data(), da.data(), db.data(), &da_s, &db_s});
  auto expect_close = [](const std::vector<float>& got, const std::vector<float>& want, const char* what) {
    ASSERT_EQ(got.size(), want.size()) << what;
    double scale = 0;
    for (float v : want) scale = std::max(scale, std::fabs(double(v)));
    ASSERT_GT(scale, 0.0) << what;
    for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], 1e-5 * scale) << what << " " << i;
  };
  expect_close(da, floats(*f, "grad.lora_a"), "dA");
  expect_close(db, floats(*f, "grad.lora_b"), "dB");
  expect_close(dx, floats(*f, "grad.x_lora"), "dx (LoRA path)");
  const float want_as = floats(*f, "grad.a_scale")[0], want_bs = floats(*f, "grad.b_scale")[0];
  EXPECT_NEAR(da_s, want_as, 1e-5 * std::fabs(want_as));
  EXPECT_NEAR(db_s, want_bs, 1e-5 * std::fabs(want_bs));
}

}  // namespace
}  // namespace lowbit
