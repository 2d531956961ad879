// The W4A16 GEMM (backend/cuda/w4a16.cuh) against the CPU reference: the fake-quant weight
// (QuantizedLinear::dequantize, bf16) times the bf16 activations, summed in double. Both
// tensor-core kernels (Mma and Staged; single- and multi-split epilogues, in-place and gathered
// activations), the plain CUDA-core kernel and the dequantize + cuBLAS path, over N and K on
// both sides of the 64-column chunk and the 16-slot step, group sizes that are and are not
// multiples of 16, act_order and uneven groups, 1-4 bit codes, batch M across the 16-row
// m-tile, Mma's 64-row block and Staged's 16- to 128-row blocks (1, 2, 3, 8, 16, 17, 33, 64,
// 100, 256), and row strides wider than the matrices. Then CudaModel with packed linears
// (--packed on a CUDA device) against the same model's fake-quant GPU forward. Skipped without
// a GPU.
//
// Two kinds of numbers:
//  - exact: power-of-two scales and activations in {-8..8} / 8, so every product and every fp32
//    partial sum is exact whatever the summation order; the GPU must then equal the reference
//    rounded once to bf16, bit for bit: any misplaced code, scale or zero-point shows.
//  - random: bf16 scales, normal activations with an outlier column. Products are still exact
//    (bf16 x bf16 fits fp32), so the error is the fp32 summation's: at most about one rounding
//    (2^-23 relative, tensor-core accumulation truncates) per sum along the chain, whose length
//    is bounded by K / 16 mma steps + 16 within a step + the split sums, times sum |x w|; plus
//    the output's rounding to bf16 (2^-9 relative, 2^-8 allowed).
#include "backend/cuda/w4a16.cuh"
#include "core/dtype.h"
#include "core/error.h"
#include "eval/cuda_eval.h"
#include "formats/checkpoint.h"
#include "model/cuda_model.h"
#include "pack/gpu_packed_cuda.h"
#include "pack/w4_tiles.h"
#include "pack/w4_tiles_cuda.h"
#include "quant/method.h"
#include "quant/quantize.h"
#include "quant/quantized_in_memory.h"
#include "packed_forward.h"
#include "product_reference.h"
#include "test_util.h"
#include "w4_test_linear.h"
#include "cuda_test_util.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

namespace lowbit {
namespace {

using cuda::bf16;
using cuda::DeviceBuffer;
using test::PackedForward;
using test::random_w4_linear;
using test::run_forward;
using test::W4Order;
using test::W4Scales;

cuda::Context& w4_ctx() {
  static cuda::Context c(0);
  return c;
}

struct Case {
  int64_t n, k, group;
  int bits;
  W4Order order;
};

const Case kCases[] = {
    {64, 128, 128, 4, W4Order::Plain},     // one chunk, one group
    {72, 256, 128, 4, W4Order::Plain},     // N just past a chunk
    {130, 200, 128, 4, W4Order::Plain},    // K not a multiple of 16: gathered, partial last group
    {200, 384, 128, 4, W4Order::Plain},    // several column blocks... of one partial chunk
    {96, 4096, 128, 4, W4Order::Plain},    // long K: many splits
    {65, 320, 64, 4, W4Order::ActOrder},   // act_order: gathered
    {100, 100, 100, 4, W4Order::Plain},    // a group of 100 (112 slots)
    {256, 512, 32, 4, W4Order::Plain},     // groups of 2 steps
    {128, 300, 48, 3, W4Order::Plain},     // groups of 3 steps, 3-bit codes, K % 16 = 12
    {576, 1024, 128, 4, W4Order::ActOrder},
    {70, 192, 40, 2, W4Order::Uneven},     // groups of unequal sizes, 2-bit codes
    {1000, 1024, 128, 4, W4Order::Plain},  // 16 chunks: 4 column blocks
};
const int64_t kBatches[] = {1, 2, 3, 8, 16, 17, 33, 64, 100, 256};

std::vector<uint16_t> to_bf16_bits(const std::vector<float>& v) {
  std::vector<uint16_t> h(v.size());
  for (size_t i = 0; i < v.size(); ++i) h[i] = f32_to_bf16(v[i]);
  return h;
}

// x [M, lda] (columns from K on are garbage the kernels must not read into the result).
std::vector<float> make_x(int64_t M, int64_t K, int64_t lda, bool exact, std::mt19937& rng) {
  std::vector<float> x(size_t(M * lda), 0.0f);
  std::uniform_int_distribution<int> small(-8, 8);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t c = 0; c < lda; ++c) {
      float v = c >= K ? 1.0e4f : exact ? float(small(rng)) / 8.0f : normal(rng);
      if (!exact && c == 5) v *= 20.0f;  // an outlier column
      x[size_t(m * lda + c)] = bf16_to_f32(f32_to_bf16(v));
    }
  return x;
}

DeviceBuffer<float> to_device_f32(const std::vector<float>& v) {
  DeviceBuffer<float> d(v.size());
  cuda::upload(d.get(), v.data(), v.size(), w4_ctx().stream());
  return d;
}

using test::Reference;
using test::reference;

// Runs the kernel into C [M, ldc] prefilled with a sentinel and checks every output against the
// reference and every gap column for the sentinel. Returns the outputs.
std::vector<uint16_t> run_and_check(const cuda::W4A16Weight& w, const DeviceBuffer<bf16>& dx, int64_t M, int64_t lda,
                                    int64_t ldc, const Reference& ref, bool exact, cuda::W4A16Kernel kernel,
                                    int splits, cuda::W4A16Workspace& ws, const std::string& what,
                                    double extra_sumabs = 0.0, int block_rows = 0) {
  const int64_t N = w.n, K = w.k;
  const uint16_t sentinel = f32_to_bf16(-777.0f);
  std::vector<uint16_t> h(size_t(M * ldc), sentinel);
  DeviceBuffer<bf16> dc(h.size());
  cuda::upload(dc.get(), reinterpret_cast<const bf16*>(h.data()), h.size(), w4_ctx().stream());
  cuda::w4a16_linear(w, dx.get(), dc.get(), M, ws, w4_ctx().stream(), lda, ldc, kernel, splits, block_rows);
  cuda::download(reinterpret_cast<bf16*>(h.data()), dc.get(), h.size(), w4_ctx().stream());
  const double chain = double(K / 16 + 16 + 64) * std::ldexp(1.0, -23) + extra_sumabs;
  int bad = 0;
  for (int64_t m = 0; m < M && bad < 5; ++m) {
    for (int64_t n = 0; n < ldc && bad < 5; ++n) {
      const uint16_t got = h[size_t(m * ldc + n)];
      if (n >= N) {
        if (got != sentinel) {
          ADD_FAILURE() << what << ": wrote past N at row " << m << " column " << n;
          ++bad;
        }
        continue;
      }
      const double r = ref.y[size_t(m * N + n)];
      if (exact) {
        const uint16_t want = f32_to_bf16(float(r));
        if (got != want) {
          ADD_FAILURE() << what << ": y[" << m << ", " << n << "] = " << bf16_to_f32(got) << ", exact "
                        << bf16_to_f32(want) << " (" << r << ")";
          ++bad;
        }
      } else {
        const double tol = std::ldexp(std::fabs(r), -8) + chain * ref.sumabs[size_t(m * N + n)];
        if (!(std::fabs(double(bf16_to_f32(got)) - r) <= tol)) {
          ADD_FAILURE() << what << ": y[" << m << ", " << n << "] = " << bf16_to_f32(got) << ", reference " << r
                        << " (tolerance " << tol << ")";
          ++bad;
        }
      }
    }
  }
  return h;
}

void sweep(bool exact) {
  std::mt19937 rng(exact ? 101 : 202);
  cuda::W4A16Workspace ws;
  for (const Case& c : kCases) {
    const QuantizedLinear q =
        random_w4_linear(c.n, c.k, c.group, c.bits, c.order, exact ? W4Scales::PowerOfTwo : W4Scales::Bf16, rng);
    const pack::W4Tiles tiles = pack::pack_w4_tiles(q, "test");
    const cuda::W4A16Weight w = pack::upload_w4_tiles(tiles, "test", w4_ctx().stream());
    const Tensor wt = q.dequantize_f32();
    const std::vector<float> wref(wt.data_as<float>(), wt.data_as<float>() + c.n * c.k);
    for (int64_t M : kBatches) {
      // Row strides: tight; wider and even (x read in place when the slots allow); odd (gathered).
      const int64_t lda = M % 3 == 0 ? c.k : M % 3 == 1 ? c.k + 8 : c.k + 1;
      const int64_t ldc = M % 2 == 0 ? c.n : c.n + 3;
      const std::vector<float> x = make_x(M, c.k, lda, exact, rng);
      const std::vector<uint16_t> xb = to_bf16_bits(x);
      DeviceBuffer<bf16> dx(xb.size());
      cuda::upload(dx.get(), reinterpret_cast<const bf16*>(xb.data()), xb.size(), w4_ctx().stream());
      const Reference ref = reference(wref, c.n, c.k, x, M, lda);
      const std::string what = "N " + std::to_string(c.n) + " K " + std::to_string(c.k) + " group " +
                               std::to_string(c.group) + " order " + std::to_string(int(c.order)) + " M " +
                               std::to_string(M) + " lda " + std::to_string(lda) + " ldc " + std::to_string(ldc);
      run_and_check(w, dx, M, lda, ldc, ref, exact, cuda::W4A16Kernel::Simple, 0, ws, what + " simple");
      run_and_check(w, dx, M, lda, ldc, ref, exact, cuda::W4A16Kernel::DequantGemm, 0, ws, what + " dequant+gemm");
      for (int splits : {0, 1, 3}) {
        run_and_check(w, dx, M, lda, ldc, ref, exact, cuda::W4A16Kernel::Mma, splits, ws,
                      what + " mma splits " + std::to_string(splits));
        run_and_check(w, dx, M, lda, ldc, ref, exact, cuda::W4A16Kernel::Staged, splits, ws,
                      what + " staged splits " + std::to_string(splits));
      }
      // Every compiled row block of the staged kernel, whatever M (more or fewer rows than M).
      for (int rows : {16, 32, 64, 128})
        for (int splits : {0, 2})
          run_and_check(w, dx, M, lda, ldc, ref, exact, cuda::W4A16Kernel::Staged, splits, ws,
                        what + " staged rows " + std::to_string(rows) + " splits " + std::to_string(splits), 0.0,
                        rows);
      if (::testing::Test::HasFailure()) return;
    }
  }
}

TEST(CudaW4A16, ExactSumsEqualTheReferenceBitForBit) {
  REQUIRE_GPU();
  sweep(true);
}

TEST(CudaW4A16, RandomWeightsMatchTheReference) {
  REQUIRE_GPU();
  sweep(false);
}

TEST(CudaW4A16, AccumulateAddsExactSumsIntoFp32) {
  // C += x W^T (the residual add of o_proj and down_proj): exact numbers, C starting at multiples
  // of 2^-9 like the products' sums, so C + y is exact in fp32 and must match bit for bit; the
  // columns past N keep their values.
  REQUIRE_GPU();
  std::mt19937 rng(606);
  cuda::W4A16Workspace ws;
  std::uniform_int_distribution<int> start(-64, 64);
  for (const Case& c : kCases) {
    const QuantizedLinear q = random_w4_linear(c.n, c.k, c.group, c.bits, c.order, W4Scales::PowerOfTwo, rng);
    const cuda::W4A16Weight w = pack::upload_w4_tiles(pack::pack_w4_tiles(q, "test"), "test", w4_ctx().stream());
    const Tensor wt = q.dequantize_f32();
    const std::vector<float> wref(wt.data_as<float>(), wt.data_as<float>() + c.n * c.k);
    for (int64_t M : {1, 17, 33, 64, 100, 256}) {
      const int64_t lda = c.k + (M == 17 || M == 100 ? 1 : 0), ldc = c.n + (M == 1 ? 0 : 5);
      const std::vector<float> x = make_x(M, c.k, lda, true, rng);
      const std::vector<uint16_t> xb = to_bf16_bits(x);
      DeviceBuffer<bf16> dx(xb.size());
      cuda::upload(dx.get(), reinterpret_cast<const bf16*>(xb.data()), xb.size(), w4_ctx().stream());
      const Reference ref = reference(wref, c.n, c.k, x, M, lda);
      std::vector<float> c0(size_t(M * ldc));
      for (auto& v : c0) v = float(start(rng)) / 512.0f;
      // 0 simple, 1-3 Mma (splits 0, 1, 3), 4 dequant + cuBLAS, 5-7 Staged (splits 0, 1, 3),
      // 8-11 Staged with 16, 32, 64, 128 rows per block and 2 splits.
      for (int variant = 0; variant < 12; ++variant) {
        const auto kernel = variant == 0   ? cuda::W4A16Kernel::Simple
                            : variant == 4 ? cuda::W4A16Kernel::DequantGemm
                            : variant >= 5 ? cuda::W4A16Kernel::Staged
                                           : cuda::W4A16Kernel::Mma;
        const int splits = variant >= 8 ? 2 : variant == 3 || variant == 7 ? 3 : variant == 2 || variant == 6 ? 1 : 0;
        const int rows = variant >= 8 ? 16 << (variant - 8) : 0;
        DeviceBuffer<float> dc = to_device_f32(c0);
        cuda::w4a16_linear_accumulate(w, dx.get(), dc.get(), M, ws, w4_ctx().stream(), lda, ldc, kernel, splits,
                                      rows);
        std::vector<float> got(c0.size());
        cuda::download(got.data(), dc.get(), got.size(), w4_ctx().stream());
        int bad = 0;
        for (int64_t m = 0; m < M && bad < 5; ++m)
          for (int64_t n = 0; n < ldc && bad < 5; ++n) {
            const size_t i = size_t(m * ldc + n);
            const float want = n < c.n ? float(double(c0[i]) + ref.y[size_t(m * c.n + n)]) : c0[i];
            if (got[i] != want) {
              ADD_FAILURE() << "N " << c.n << " K " << c.k << " M " << M << " variant " << variant << ": C[" << m
                            << ", " << n << "] = " << got[i] << ", expected " << want;
              ++bad;
            }
          }
        if (bad) return;
      }
    }
  }
}

TEST(CudaW4A16, Fp32ScalesStayWithinTheirBf16Rounding) {
  // Scales that are not bf16 values are rounded once when packed: each weight moves by at most
  // 2^-9 of itself beyond the fake-quant weight's own rounding, so y by at most 2^-8 sum |x w|.
  REQUIRE_GPU();
  std::mt19937 rng(303);
  cuda::W4A16Workspace ws;
  const QuantizedLinear q = random_w4_linear(300, 1024, 128, 4, W4Order::ActOrder, W4Scales::F32, rng);
  const cuda::W4A16Weight w = pack::upload_w4_tiles(pack::pack_w4_tiles(q, "test"), "test", w4_ctx().stream());
  const Tensor wt = q.dequantize_f32();
  const std::vector<float> wref(wt.data_as<float>(), wt.data_as<float>() + q.rows * q.cols);
  for (int64_t M : {1, 16, 64, 130}) {
    const std::vector<float> x = make_x(M, q.cols, q.cols, false, rng);
    const std::vector<uint16_t> xb = to_bf16_bits(x);
    DeviceBuffer<bf16> dx(xb.size());
    cuda::upload(dx.get(), reinterpret_cast<const bf16*>(xb.data()), xb.size(), w4_ctx().stream());
    const Reference ref = reference(wref, q.rows, q.cols, x, M, q.cols);
    run_and_check(w, dx, M, q.cols, q.rows, ref, false, cuda::W4A16Kernel::Mma, 0, ws,
                  "fp32 scales mma M " + std::to_string(M), std::ldexp(1.0, -8));
    run_and_check(w, dx, M, q.cols, q.rows, ref, false, cuda::W4A16Kernel::Staged, 0, ws,
                  "fp32 scales staged M " + std::to_string(M), std::ldexp(1.0, -8));
  }
}

TEST(CudaW4A16, SplitSumsAreDeterministic) {
  // The last block adds the splits in split order, so repeated calls give identical bits.
  REQUIRE_GPU();
  std::mt19937 rng(404);
  cuda::W4A16Workspace ws;
  const QuantizedLinear q = random_w4_linear(512, 4096, 128, 4, W4Order::Plain, W4Scales::Bf16, rng);
  const cuda::W4A16Weight w = pack::upload_w4_tiles(pack::pack_w4_tiles(q, "test"), "test", w4_ctx().stream());
  for (const auto kernel : {cuda::W4A16Kernel::Mma, cuda::W4A16Kernel::Staged}) {
    const int64_t M = kernel == cuda::W4A16Kernel::Mma ? 5 : 100;
    const std::vector<float> x = make_x(M, q.cols, q.cols, false, rng);
    const std::vector<uint16_t> xb = to_bf16_bits(x);
    DeviceBuffer<bf16> dx(xb.size()), dc(size_t(M * q.rows));
    cuda::upload(dx.get(), reinterpret_cast<const bf16*>(xb.data()), xb.size(), w4_ctx().stream());
    std::vector<uint16_t> first(size_t(M * q.rows)), again(first.size());
    for (int rep = 0; rep < 20; ++rep) {
      cuda::w4a16_linear(w, dx.get(), dc.get(), M, ws, w4_ctx().stream(), 0, 0, kernel, 17,
                         kernel == cuda::W4A16Kernel::Staged ? 128 : 0);
      cuda::download(reinterpret_cast<bf16*>((rep == 0 ? first : again).data()), dc.get(), first.size(),
                     w4_ctx().stream());
      if (rep > 0) {
        ASSERT_EQ(first, again) << cuda::w4a16_kernel_name(kernel) << " call " << rep;
      }
    }
  }
}

TEST(CudaW4A16, KernelNamesAndAutoChoice) {
  // No device needed: the kernel names (LOWBIT_W4A16_KERNEL, bench_w4a16 --kernels), and Auto's
  // rows thresholds.
  EXPECT_EQ(cuda::parse_w4a16_kernel("mma", "LOWBIT_W4A16_KERNEL"), cuda::W4A16Kernel::Mma);
  EXPECT_EQ(cuda::parse_w4a16_kernel("new", "LOWBIT_W4A16_KERNEL"), cuda::W4A16Kernel::Staged);
  EXPECT_EQ(cuda::parse_w4a16_kernel("staged", "LOWBIT_W4A16_KERNEL"), cuda::W4A16Kernel::Staged);
  EXPECT_EQ(cuda::parse_w4a16_kernel("dequant", "LOWBIT_W4A16_KERNEL"), cuda::W4A16Kernel::DequantGemm);
  EXPECT_EQ(cuda::parse_w4a16_kernel("simple", "LOWBIT_W4A16_KERNEL"), cuda::W4A16Kernel::Simple);
  EXPECT_EQ(cuda::parse_w4a16_kernel("auto", "LOWBIT_W4A16_KERNEL"), cuda::W4A16Kernel::Auto);
  try {
    cuda::parse_w4a16_kernel("marlin", "LOWBIT_W4A16_KERNEL");
    FAIL() << "no error for an unknown kernel name";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("LOWBIT_W4A16_KERNEL"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("marlin"), std::string::npos) << e.what();
  }
  if (std::getenv("LOWBIT_W4A16_KERNEL") != nullptr) GTEST_SKIP() << "LOWBIT_W4A16_KERNEL is set";
  EXPECT_EQ(cuda::w4a16_auto_kernel(1), cuda::W4A16Kernel::Mma);
  EXPECT_EQ(cuda::w4a16_auto_kernel(16), cuda::W4A16Kernel::Mma);
  EXPECT_EQ(cuda::w4a16_auto_kernel(17), cuda::W4A16Kernel::Staged);
  EXPECT_EQ(cuda::w4a16_auto_kernel(128), cuda::W4A16Kernel::Staged);
  EXPECT_EQ(cuda::w4a16_auto_kernel(129), cuda::W4A16Kernel::DequantGemm);
}

TEST(CudaW4A16, BadArgumentsAreErrors) {
  REQUIRE_GPU();
  cuda::W4A16Workspace ws;
  std::mt19937 rng(505);
  const QuantizedLinear q = random_w4_linear(64, 128, 128, 4, W4Order::Plain, W4Scales::Bf16, rng);
  const pack::W4Tiles t = pack::pack_w4_tiles(q, "test");
  const cuda::W4A16Weight w = pack::upload_w4_tiles(t, "test", w4_ctx().stream());
  DeviceBuffer<bf16> dx(128), dc(64);
  EXPECT_THROW(cuda::w4a16_linear(w, dx.get(), dc.get(), 1, ws, w4_ctx().stream(), 100), Error);  // lda < K
  EXPECT_THROW(cuda::w4a16_linear(w, dx.get(), dc.get(), 1, ws, w4_ctx().stream(), 0, 10), Error);  // ldc < N
  EXPECT_THROW(cuda::w4a16_linear(w, dx.get(), dc.get(), 1, ws, w4_ctx().stream(), 0, 0, cuda::W4A16Kernel::Staged,
                                  0, 48),
               Error);  // no such row block
  const cuda::W4A16Weight empty;
  EXPECT_THROW(cuda::w4a16_linear(empty, dx.get(), dc.get(), 1, ws, w4_ctx().stream()), Error);
  std::vector<uint32_t> short_codes(t.codes.begin(), t.codes.end() - 1);
  try {
    cuda::upload_w4a16(t.n, t.k, t.group_slots, t.groups, short_codes, t.scales, t.source_col, "blk.0.attn_q",
                       w4_ctx().stream());
    FAIL() << "no error for a short code array";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("blk.0.attn_q"), std::string::npos) << e.what();
  }
}

// A quantized model's forward with packed linears against its fake-quant GPU forward (bf16
// weights dequantized from the same codes). The method's scales are rounded to bf16 first (the
// tiles' precision), so both forwards hold the same bf16 weights and differ only in the fp32
// summation order of their products (and the bf16 roundings that order flips): the logits agree
// to well under 1% (relative L2), where a misplaced code or scale would move them by their own
// size; perplexities agree within 1%. With the method's fp32 scales the weights themselves
// differ by up to 2^-9 relative, which on these random-weight models moves the logits by about
// 1% (seen on an H100), so that check allows 3%.
void expect_packed_matches_fake_quant(const std::string& path, const char* spec, bool bf16_scales) {
  SCOPED_TRACE(path + " " + spec + (bf16_scales ? " bf16 scales" : " fp32 scales"));
  const Checkpoint source = open_checkpoint(path);
  LlamaModel work(source);
  auto method = make_method(spec);
  QuantizedModel qm = quantize_model(work, *method, nullptr, {});
  if (bf16_scales)
    for (QuantizedBlock& b : qm.blocks)
      for (auto& l : b.linear)
        if (l)
          for (float& sc : l->scales) sc = bf16_to_f32(f32_to_bf16(sc));
  LlamaModel q(quantized_checkpoint_in_memory(source, std::move(qm), {{"path", path}}));
  install_quantized_forward(q);
  const int64_t V = q.config().vocab_size;
  std::mt19937 g(77);
  std::vector<int32_t> ids(40);
  for (auto& x : ids) x = int32_t(g() % uint32_t(std::min<int64_t>(V, 512)));
  std::vector<std::vector<int32_t>> windows(3, std::vector<int32_t>(64));
  for (auto& w : windows)
    for (auto& x : w) x = int32_t(g() % uint32_t(std::min<int64_t>(V, 512)));

  CudaModel dense(q, w4_ctx());
  CudaModel packed(q, w4_ctx(), std::nullopt, pack::gpu_packed_linears_of(q, w4_ctx().stream()));
  ASSERT_TRUE(packed.packed());
  ASSERT_TRUE(packed.resident());
  GpuBlockWeights scratch;
  for (int64_t i = 0; i < q.config().num_hidden_layers; ++i) {
    const GpuBlockWeights& b = packed.block(i, scratch);
    for (LinearKind k : kAllLinears) {
      ASSERT_NE(b.packed_linear(k), nullptr) << "block " << i;
      EXPECT_EQ(b.packed_linear(k)->layout(), "w4a16") << "block " << i;
      EXPECT_EQ(b[k], nullptr) << "block " << i;  // no bf16 copy of a packed linear
    }
    EXPECT_EQ(b.qkv.size() + b.o.size() + b.gate_up.size() + b.down.size(), 0u);
  }
  const PackedForward a = run_forward(packed, ids, windows);
  const PackedForward b = run_forward(dense, ids, windows);
  double num = 0, den = 0;
  for (size_t i = 0; i < a.logits.size(); ++i) {
    ASSERT_TRUE(std::isfinite(a.logits[i])) << i;
    num += (double(a.logits[i]) - b.logits[i]) * (double(a.logits[i]) - b.logits[i]);
    den += double(b.logits[i]) * b.logits[i];
  }
  const double rel = std::sqrt(num / den);
  std::printf("%s %s (%s scales): packed vs fake-quant GPU logits rel. L2 %.2e; ppl %.4f vs %.4f\n", path.c_str(),
              spec, bf16_scales ? "bf16" : "fp32", rel, a.ppl, b.ppl);
  EXPECT_LT(rel, bf16_scales ? 1e-2 : 3e-2);
  EXPECT_NEAR(a.ppl, b.ppl, 0.01 * b.ppl);
}

TEST(CudaModelPacked, LogitsMatchTheFakeQuantGpuForward) {
  REQUIRE_GPU();
  // llama3-mini: H 128, F 448 (down_proj's last group of 128 holds 64 columns), k/v 64 rows.
  const std::string mini = test::fixtures_dir() + "/models/llama3-mini-bf16";
  for (bool bf16_scales : {true, false}) {
    expect_packed_matches_fake_quant(mini, "rtn:w=4,g=128", bf16_scales);
    // 3-bit codes in groups of 48 (not a multiple of 32): the tiles, not the low-bit GEMV.
    expect_packed_matches_fake_quant(mini, "rtn:w=3,g=48", bf16_scales);
  }
  const std::string stories = test::models_dir() + "/stories260K/stories260K.bin";
  LOWBIT_REQUIRE_PATH(stories);
  expect_packed_matches_fake_quant(stories, "rtn:w=4,g=32", true);
  expect_packed_matches_fake_quant(stories, "rtn:w=4,g=32", false);
  // An untied model (its LM head a matrix of its own): the packed model looks tokens up in a
  // host-held embedding table; the logits must not change.
  const std::string untied = test::fixtures_dir() + "/models/llama2-mini-f32";
  expect_packed_matches_fake_quant(untied, "rtn:w=4,g=128", true);
  {
    const Checkpoint source = open_checkpoint(untied);
    LlamaModel work(source);
    auto method = make_method("rtn:w=4,g=128");
    LlamaModel q(quantized_checkpoint_in_memory(source, quantize_model(work, *method, nullptr, {}), {{"path", untied}}));
    const CudaModel packed(q, w4_ctx(), std::nullopt, pack::gpu_packed_linears_of(q, w4_ctx().stream()));
    EXPECT_TRUE(packed.embedding_on_host());
    const CudaModel plain(q, w4_ctx());
    EXPECT_FALSE(plain.embedding_on_host());
  }
}

TEST(CudaModelPacked, RefusesPartlyPackedGroupsAndUnquantizedModels) {
  REQUIRE_GPU();
  const std::string mini = test::fixtures_dir() + "/models/llama3-mini-bf16";
  const Checkpoint source = open_checkpoint(mini);
  LlamaModel work(source);
  auto method = make_method("rtn:w=4,g=128");
  LlamaModel q(quantized_checkpoint_in_memory(source, quantize_model(work, *method, nullptr, {}), {{"path", mini}}));
  const GpuPackedLinears all = pack::gpu_packed_linears_of(q, w4_ctx().stream());
  // Only q_proj packed: its group (q, k, v) would run two ways.
  const GpuPackedLinears only_q = [&](int64_t layer, LinearKind k) -> std::shared_ptr<const cuda::PackedWeight> {
    return k == LinearKind::Q ? all(layer, k) : nullptr;
  };
  try {
    CudaModel m(q, w4_ctx(), std::nullopt, only_q);
    FAIL() << "no error for a partly packed q/k/v group";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("q_proj, k_proj and v_proj"), std::string::npos) << e.what();
  }
  LlamaModel plain(open_checkpoint(mini));
  EXPECT_THROW(pack::gpu_packed_linears_of(plain, w4_ctx().stream()), Error);
}

}  // namespace
}  // namespace lowbit
