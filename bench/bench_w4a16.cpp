// The W4A16 GEMM (backend/cuda/w4a16.cuh) against cuBLAS's bf16 GEMM (cublasGemmEx, fp32
// accumulation, cuda::linear) at LLaMA-3-8B's linear shapes, batch M = 1, 4, 16, 32, 64, 128,
// 256 by default. Every kernel runs side by side on the same weights and activations: the
// register-streaming tensor-core kernel (mma), the shared-memory pipelined one (staged), the
// weight dequantized to bf16 then cuBLAS (dequant), and what w4a16_linear's Auto picks for that
// M (auto; LOWBIT_W4A16_KERNEL changes it), each with its speed-up over cuBLAS: the table from
// which Auto's row thresholds (w4a16.cu: kMaxMmaRows, kMaxStagedRows) are set.
//
//   build/bench/bench_w4a16 [--m 1,4,16,32,64,128,256] [--kernels mma,staged,dequant,auto]
//                           [--splits 0] [--rows 0] [--samples 41] [--calls 10] [--lm-head] [--peak-gbs 4800]
//
// Per point: the median over `samples` CUDA-event timings of `calls` back-to-back calls, divided
// by `calls`. Both sides rotate through enough copies of their weights (at least 256 MiB in all)
// that every call reads its weights from HBM, not from the 50 MiB L2. The table gives the time of
// each and its speed-up over cuBLAS, and for Auto the bytes each call must read (4-bit codes +
// scales; activations and outputs are small) per second, against the peak given by --peak-gbs
// (default 4800 GB/s, the H200's; the H100 SXM's is 3350). --splits forces the K splits of mma
// and staged (0: their own choice), --rows the staged kernel's rows per block (16, 32, 64, 128;
// 0: its cost model's choice): the numbers that calibrate w4a16_staged_plan.h. Before timing,
// each shape's tensor-core outputs (mma and staged) at the largest M are checked against the
// plain kernel's (the largest relative difference is printed; it is fp32 summation order only:
// a layout or indexing fault shows as a difference of order 1, flagged MISMATCH, and the exit
// status is then 3).
#include "backend/cuda/ops.cuh"
#include "backend/cuda/w4a16.cuh"
#include "core/dtype.h"
#include "pack/w4_tiles.h"
#include "pack/w4_tiles_cuda.h"

#include "cuda_bench_util.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

using namespace lowbit;
using cuda::bf16;
using cuda::DeviceBuffer;
using bench::median_ms;
using bench::next;
using bench::parse_list;
using bench::random_bf16;

namespace {

struct Shape {
  const char* name;
  int64_t k, n;
};

// A random 4-bit weight with groups of 128 and bf16 scales.
QuantizedLinear random_int4(int64_t n, int64_t k, uint64_t seed) {
  QuantizedLinear q;
  q.rows = n;
  q.cols = k;
  q.bits = 4;
  q.group_size = 128;
  q.dequant_dtype = DType::BF16;
  q.codes.resize(size_t(n * k));
  for (auto& c : q.codes) c = uint8_t(next(seed) & 15u);
  q.scales.resize(size_t(q.num_scale_groups()));
  q.zeros.resize(q.scales.size());
  for (size_t i = 0; i < q.scales.size(); ++i) {
    q.scales[i] = bf16_to_f32(f32_to_bf16(0.002f + float(next(seed) % 1000) * 1e-5f));
    q.zeros[i] = float(next(seed) % 16);
  }
  return q;
}

std::vector<cuda::W4A16Kernel> parse_kernels(const std::string& s) {
  std::vector<cuda::W4A16Kernel> v;
  size_t p = 0;
  while (p <= s.size()) {
    const size_t q = s.find(',', p);
    const std::string name = s.substr(p, q == std::string::npos ? std::string::npos : q - p);
    const cuda::W4A16Kernel k = cuda::parse_w4a16_kernel(name, "--kernels");
    if (k == cuda::W4A16Kernel::Simple) throw std::invalid_argument("--kernels: simple is not timed");
    v.push_back(k);
    if (q == std::string::npos) break;
    p = q + 1;
  }
  return v;
}

int run_bench(int argc, char** argv) {
  std::vector<int64_t> ms = {1, 4, 16, 32, 64, 128, 256};
  std::vector<cuda::W4A16Kernel> kernels = {cuda::W4A16Kernel::Mma, cuda::W4A16Kernel::Staged,
                                            cuda::W4A16Kernel::DequantGemm, cuda::W4A16Kernel::Auto};
  int samples = 41, calls = 10, splits = 0, rows = 0;
  bool lm_head = false;
  double peak_gbs = 4800.0;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--m" && i + 1 < argc) ms = parse_list(argv[++i]);
    else if (a == "--kernels" && i + 1 < argc) kernels = parse_kernels(argv[++i]);
    else if (a == "--splits" && i + 1 < argc) splits = std::stoi(argv[++i]);
    else if (a == "--rows" && i + 1 < argc) rows = std::stoi(argv[++i]);
    else if (a == "--samples" && i + 1 < argc) samples = std::stoi(argv[++i]);
    else if (a == "--calls" && i + 1 < argc) calls = std::stoi(argv[++i]);
    else if (a == "--lm-head") lm_head = true;
    else if (a == "--peak-gbs" && i + 1 < argc) peak_gbs = std::stod(argv[++i]);
    else {
      fmt::print(stderr,
                 "usage: bench_w4a16 [--m 1,4,16,32,64,128,256] [--kernels mma,staged,dequant,auto] [--splits 0] "
                 "[--rows 0] [--samples 41] [--calls 10] [--lm-head] [--peak-gbs 4800]\n");
      return 2;
    }
  }
  if (ms.empty() || kernels.empty() || *std::min_element(ms.begin(), ms.end()) < 1 || samples < 1 || calls < 1) {
    fmt::print(stderr, "bench_w4a16: --m needs rows >= 1, --kernels a kernel, --samples and --calls >= 1\n");
    return 2;
  }
  if (cuda::device_count() == 0) {
    fmt::print(stderr, "bench_w4a16: no CUDA device\n");
    return 1;
  }
  cuda::Context ctx(0);
  const cudaStream_t s = ctx.stream();
  fmt::print("device: {}\n", cuda::device_name(0));
  fmt::print("median of {} samples x {} calls; weights rotated through >= 256 MiB of copies\n\n", samples, calls);

  std::vector<Shape> shapes = {{"q/o_proj", 4096, 4096},
                               {"qkv_proj", 4096, 6144},
                               {"gate/up_proj", 4096, 14336},
                               {"down_proj", 14336, 4096}};
  if (lm_head) shapes.push_back({"lm_head", 4096, 128256});
  const int64_t max_m = *std::max_element(ms.begin(), ms.end());

  std::string head = "| shape | K x N | M | cuBLAS bf16 us |", rule = "|---|---|---:|---:|";
  for (const cuda::W4A16Kernel k : kernels) {
    head += fmt::format(" {} us | {} speed-up |", cuda::w4a16_kernel_name(k), cuda::w4a16_kernel_name(k));
    rule += "---:|---:|";
  }
  head += fmt::format(" auto runs | auto GB/s | % of {:.0f} GB/s |", peak_gbs);
  rule += "---|---:|---:|";
  fmt::print("{}\n{}\n", head, rule);
  std::vector<std::string> checks;
  bool mismatch = false;
  for (const Shape& sh : shapes) {
    const pack::W4Tiles tiles = pack::pack_w4_tiles(random_int4(sh.n, sh.k, uint64_t(sh.n * 31 + sh.k)), sh.name);
    const double w4_bytes = double(tiles.codes.size() + tiles.scales.size()) * 4.0;
    const double bf16_bytes = double(sh.n) * double(sh.k) * 2.0;
    const double rotate = 256.0 * 1024 * 1024;
    const int w4_copies = int(std::clamp(std::ceil(rotate / w4_bytes), 1.0, 64.0));
    const int bf_copies = int(std::clamp(std::ceil(rotate / bf16_bytes), 1.0, 64.0));
    std::vector<cuda::W4A16Weight> w4;
    for (int c = 0; c < w4_copies; ++c) w4.push_back(pack::upload_w4_tiles(tiles, sh.name, s));
    std::vector<DeviceBuffer<bf16>> wb;
    for (int c = 0; c < bf_copies; ++c) wb.push_back(random_bf16(size_t(sh.n * sh.k), uint64_t(c + 1), s));
    DeviceBuffer<bf16> x = random_bf16(size_t(max_m * sh.k), 99, s);
    DeviceBuffer<bf16> y(size_t(max_m * sh.n)), y_ref(size_t(max_m * sh.n));
    cuda::W4A16Workspace ws;

    // The tensor-core kernels against the plain one at the largest M.
    cuda::w4a16_linear(w4[0], x.get(), y_ref.get(), max_m, ws, s, 0, 0, cuda::W4A16Kernel::Simple);
    std::vector<uint16_t> b(size_t(max_m * sh.n)), a(b.size());
    cuda::download(reinterpret_cast<bf16*>(b.data()), y_ref.get(), b.size(), s);
    double scale = 0;
    for (size_t i = 0; i < b.size(); ++i) scale = std::max(scale, double(std::fabs(bf16_to_f32(b[i]))));
    for (const cuda::W4A16Kernel k : {cuda::W4A16Kernel::Mma, cuda::W4A16Kernel::Staged}) {
      cuda::w4a16_linear(w4[0], x.get(), y.get(), max_m, ws, s, 0, 0, k, splits,
                         k == cuda::W4A16Kernel::Staged ? rows : 0);
      cuda::download(reinterpret_cast<bf16*>(a.data()), y.get(), a.size(), s);
      double worst = 0;
      for (size_t i = 0; i < a.size(); ++i)
        worst = std::max(worst, double(std::fabs(bf16_to_f32(a[i]) - bf16_to_f32(b[i]))) / std::max(scale, 1e-30));
      // bf16 outputs of fp32 sums in another order: a few bf16 ulps of the largest output at most.
      const bool bad = !(worst <= 1e-2);
      mismatch = mismatch || bad;
      checks.push_back(fmt::format("{} M={}: max |{} - plain| / max |plain| = {:.2e}{}", sh.name, max_m,
                                   cuda::w4a16_kernel_name(k), worst, bad ? "  MISMATCH" : ""));
    }

    for (int64_t M : ms) {
      const double t_blas = median_ms(
          ctx, [&](int i) { cuda::linear(ctx, x.get(), wb[size_t(i % bf_copies)].get(), y.get(), M, sh.n, sh.k); },
          samples, calls);
      std::string row = fmt::format("| {} | {}x{} | {} | {:.2f} |", sh.name, sh.k, sh.n, M, t_blas * 1e3);
      double t_auto = 0;
      for (const cuda::W4A16Kernel k : kernels) {
        const int sp = k == cuda::W4A16Kernel::Mma || k == cuda::W4A16Kernel::Staged ? splits : 0;
        const int br = k == cuda::W4A16Kernel::Staged ? rows : 0;
        const double t = median_ms(
            ctx,
            [&](int i) { cuda::w4a16_linear(w4[size_t(i % w4_copies)], x.get(), y.get(), M, ws, s, 0, 0, k, sp, br); },
            samples, calls);
        if (k == cuda::W4A16Kernel::Auto) t_auto = t;
        row += fmt::format(" {:.2f} | {:.2f}x |", t * 1e3, t_blas / t);
      }
      if (t_auto > 0) {
        const double gbs = w4_bytes / (t_auto * 1e-3) / 1e9;
        row += fmt::format(" {} | {:.0f} | {:.0f}% |", cuda::w4a16_kernel_name(cuda::w4a16_auto_kernel(M)), gbs,
                           100.0 * gbs / peak_gbs);
      } else {
        row += fmt::format(" {} | - | - |", cuda::w4a16_kernel_name(cuda::w4a16_auto_kernel(M)));
      }
      fmt::print("{}\n", row);
      std::fflush(stdout);
    }
  }
  fmt::print("\n");
  for (const auto& c : checks) fmt::print("{}\n", c);
  return mismatch ? 3 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run_bench(argc, argv);
  } catch (const std::exception& e) {
    fmt::print(stderr, "bench_w4a16: {}\n", e.what());
    return 1;
  }
}
