// The low-bit GEMV kernels (backend/cuda/gemv_lowbit.cuh) against cuBLAS's bf16 GEMM
// (cublasGemmEx, fp32 accumulation, cuda::linear) at LLaMA-3-8B's linear shapes (N x K: q/o_proj
// 4096 x 4096, gate/up_proj 14336 x 4096, down_proj 4096 x 14336, LM head 128256 x 4096), batch
// M = 1, 4, 16 by default, for each format: int2, int3, int4 and int8 with groups of 128, NF4
// (blocks of 64, double-quantized absmax decoded to fp32 at packing), and the W4A16 GEMM on int4
// groups of 128 (its Auto kernel): int4 and w4a16 are the same weight in the two layouts a 4-bit
// linear can run in (LOWBIT_PACKED_INT4 in src/pack/gpu_packed_layout.cpp picks).
//
//   build/bench/bench_gemv_lowbit [--m 1,4,16] [--formats int2,int3,int4,int8,nf4,w4a16] [--dequant]
//                                 [--samples 41] [--calls 10] [--no-lm-head] [--peak-gbs 4800]
//
// Per point: the median over `samples` CUDA-event timings of `calls` back-to-back calls, divided
// by `calls`; both sides rotate through enough copies of their weights (at least 256 MiB in all)
// that every call reads its weights from HBM, not from the 50 MiB L2. The table gives each time
// in microseconds, the speed-up over cuBLAS, and the bytes each call must move (packed codes +
// scale words, or the bf16 weight, plus the activations read and the outputs written) per second,
// against the peak given by --peak-gbs (the H200's 4800 GB/s by default; the H100 SXM's is 3350).
// --dequant adds the dequantize + cuBLAS path at the same M. Before timing, each shape and
// format's GEMV output at the largest M is checked against its dequantize + cuBLAS output (the
// largest difference relative to the largest output is printed; fp32 summation order only, so a
// layout or indexing fault shows as a difference of order 1, flagged MISMATCH, exit status 3).
#include "backend/cuda/gemv_lowbit.cuh"
#include "backend/cuda/ops.cuh"
#include "backend/cuda/w4a16.cuh"
#include "core/dtype.h"
#include "pack/gemv_cuda.h"
#include "pack/gemv_pack.h"
#include "pack/w4_tiles.h"
#include "pack/w4_tiles_cuda.h"
#include "quant/nf4.h"

#include "cuda_bench_util.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

using namespace lowbit;
using bench::median_ms;
using bench::next;
using bench::parse_list;
using bench::random_bf16;
using cuda::bf16;
using cuda::DeviceBuffer;

namespace {

struct Shape {
  const char* name;
  int64_t n, k;
};

// A random int linear of `bits` with groups of 128 and bf16 scales, or (bits 0) NF4 codes with
// random absmax values in blocks of 64.
QuantizedLinear random_linear(int bits, int64_t n, int64_t k, uint64_t seed) {
  QuantizedLinear q;
  q.rows = n;
  q.cols = k;
  q.dequant_dtype = DType::BF16;
  const int code_bits = bits == 0 ? 4 : bits;
  q.bits = code_bits;
  q.codes.resize(size_t(n * k));
  const uint32_t mask = (1u << code_bits) - 1u;
  for (auto& c : q.codes) c = uint8_t(next(seed) & mask);
  if (bits == 0) {
    q.format = &kCodebookFormat;
    q.group_size = 64;
    q.flat_groups = true;
    q.codebook.assign(nf4_values().begin(), nf4_values().end());
    q.scales.resize(size_t(q.num_scale_groups()));
    for (auto& s : q.scales) s = 0.01f + float(next(seed) % 1000) * 1e-5f;
    return q;
  }
  q.group_size = 128;
  q.scales.resize(size_t(q.num_scale_groups()));
  q.zeros.resize(q.scales.size());
  for (size_t i = 0; i < q.scales.size(); ++i) {
    q.scales[i] = bf16_to_f32(f32_to_bf16(0.002f + float(next(seed) % 1000) * 1e-5f));
    q.zeros[i] = float(next(seed) & mask);
  }
  return q;
}

struct Format {
  std::string name;
  int bits;  // int code width; 0: NF4
  bool w4a16;
};

std::vector<Format> parse_formats(const std::string& s) {
  std::vector<Format> v;
  size_t p = 0;
  while (p <= s.size()) {
    const size_t q = s.find(',', p);
    const std::string name = s.substr(p, q == std::string::npos ? std::string::npos : q - p);
    if (name == "int2") v.push_back({name, 2, false});
    else if (name == "int3") v.push_back({name, 3, false});
    else if (name == "int4") v.push_back({name, 4, false});
    else if (name == "int8") v.push_back({name, 8, false});
    else if (name == "nf4") v.push_back({name, 0, false});
    else if (name == "w4a16") v.push_back({name, 4, true});
    else throw std::invalid_argument("--formats: unknown format '" + name + "' (int2, int3, int4, int8, nf4, w4a16)");
    if (q == std::string::npos) break;
    p = q + 1;
  }
  return v;
}

int run_bench(int argc, char** argv) {
  std::vector<int64_t> ms = {1, 4, 16};
  std::vector<Format> formats = parse_formats("int2,int3,int4,int8,nf4,w4a16");
  int samples = 41, calls = 10;
  bool lm_head = true, dequant = false;
  double peak_gbs = 4800.0;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--m" && i + 1 < argc) ms = parse_list(argv[++i]);
    else if (a == "--formats" && i + 1 < argc) formats = parse_formats(argv[++i]);
    else if (a == "--samples" && i + 1 < argc) samples = std::stoi(argv[++i]);
    else if (a == "--calls" && i + 1 < argc) calls = std::stoi(argv[++i]);
    else if (a == "--no-lm-head") lm_head = false;
    else if (a == "--dequant") dequant = true;
    else if (a == "--peak-gbs" && i + 1 < argc) peak_gbs = std::stod(argv[++i]);
    else {
      fmt::print(stderr,
                 "usage: bench_gemv_lowbit [--m 1,4,16] [--formats int2,int3,int4,int8,nf4,w4a16] [--dequant] "
                 "[--samples 41] [--calls 10] [--no-lm-head] [--peak-gbs 4800]\n");
      return 2;
    }
  }
  if (ms.empty() || formats.empty() || *std::min_element(ms.begin(), ms.end()) < 1 || samples < 1 || calls < 1) {
    fmt::print(stderr, "bench_gemv_lowbit: --m needs rows >= 1, --formats a format, --samples and --calls >= 1\n");
    return 2;
  }
  if (cuda::device_count() == 0) {
    fmt::print(stderr, "bench_gemv_lowbit: no CUDA device\n");
    return 1;
  }
  cuda::Context ctx(0);
  const cudaStream_t s = ctx.stream();
  fmt::print("device: {}\n", cuda::device_name(0));
  fmt::print("median of {} samples x {} calls; weights rotated through >= 256 MiB of copies\n\n", samples, calls);

  std::vector<Shape> shapes = {{"q/o_proj", 4096, 4096}, {"gate/up_proj", 14336, 4096}, {"down_proj", 4096, 14336}};
  if (lm_head) shapes.push_back({"lm_head", 128256, 4096});
  const int64_t max_m = *std::max_element(ms.begin(), ms.end());
  const double rotate = 256.0 * 1024 * 1024;

  fmt::print("| shape | N x K | format | bits/weight | M | cuBLAS bf16 us | cuBLAS GB/s | packed us | speed-up | "
             "packed GB/s | % of {:.0f} GB/s |{}\n",
             peak_gbs, dequant ? " dequant+cuBLAS us |" : "");
  fmt::print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|{}\n", dequant ? "---:|" : "");
  std::vector<std::string> checks;
  bool mismatch = false;
  for (const Shape& sh : shapes) {
    const double bf16_bytes = double(sh.n) * double(sh.k) * 2.0;
    const int bf_copies = int(std::clamp(std::ceil(rotate / bf16_bytes), 1.0, 64.0));
    std::vector<DeviceBuffer<bf16>> wb;
    for (int c = 0; c < bf_copies; ++c) wb.push_back(random_bf16(size_t(sh.n * sh.k), uint64_t(c + 1), s));
    DeviceBuffer<bf16> x = random_bf16(size_t(max_m * sh.k), 99, s);
    DeviceBuffer<bf16> y(size_t(max_m * sh.n)), y_ref(size_t(max_m * sh.n));
    cuda::W4A16Workspace ws;
    std::vector<double> t_blas(ms.size());
    for (size_t mi = 0; mi < ms.size(); ++mi)
      t_blas[mi] = median_ms(
          ctx, [&](int i) { cuda::linear(ctx, x.get(), wb[size_t(i % bf_copies)].get(), y.get(), ms[mi], sh.n, sh.k); },
          samples, calls);
    wb.clear();

    for (const Format& f : formats) {
      const QuantizedLinear q = random_linear(f.bits, sh.n, sh.k, uint64_t(sh.n * 31 + sh.k + f.bits));
      std::vector<cuda::GemvWeight> gw;
      std::vector<cuda::W4A16Weight> tw;
      double bytes = 0;
      int copies = 1;
      if (f.w4a16) {
        const pack::W4Tiles t = pack::pack_w4_tiles(q, sh.name);
        bytes = double(t.nbytes());
        copies = int(std::clamp(std::ceil(rotate / bytes), 1.0, 64.0));
        for (int c = 0; c < copies; ++c) tw.push_back(pack::upload_w4_tiles(t, sh.name, s));
      } else {
        const pack::GemvPacked p = pack::pack_gemv(q, sh.name);
        bytes = double(p.nbytes());
        copies = int(std::clamp(std::ceil(rotate / bytes), 1.0, 64.0));
        for (int c = 0; c < copies; ++c) gw.push_back(pack::upload_gemv_packed(p, sh.name, s));
      }
      auto product = [&](int i, int64_t M) {
        if (f.w4a16) cuda::w4a16_linear(tw[size_t(i % copies)], x.get(), y.get(), M, ws, s);
        else cuda::gemv_linear(gw[size_t(i % copies)], x.get(), y.get(), M, ws, s);
      };

      if (!f.w4a16) {
        // The GEMV at the largest M (up to 16) against dequantize + cuBLAS on the same weight.
        const int64_t mc = std::min<int64_t>(max_m, cuda::kGemvMaxRows);
        cuda::gemv_linear(gw[0], x.get(), y.get(), mc, ws, s, 0, 0, cuda::GemvKernel::Gemv);
        cuda::gemv_linear(gw[0], x.get(), y_ref.get(), mc, ws, s, 0, 0, cuda::GemvKernel::DequantGemm);
        std::vector<uint16_t> a(size_t(mc * sh.n)), b(a.size());
        cuda::download(reinterpret_cast<bf16*>(a.data()), y.get(), a.size(), s);
        cuda::download(reinterpret_cast<bf16*>(b.data()), y_ref.get(), b.size(), s);
        double scale = 0, worst = 0;
        for (size_t i = 0; i < b.size(); ++i) scale = std::max(scale, double(std::fabs(bf16_to_f32(b[i]))));
        for (size_t i = 0; i < a.size(); ++i)
          worst = std::max(worst, double(std::fabs(bf16_to_f32(a[i]) - bf16_to_f32(b[i]))) / std::max(scale, 1e-30));
        const bool bad = !(worst <= 1e-2);
        mismatch = mismatch || bad;
        checks.push_back(fmt::format("{} {} M={}: max |gemv - dequant+cuBLAS| / max |dequant+cuBLAS| = {:.2e}{}",
                                     sh.name, f.name, mc, worst, bad ? "  MISMATCH" : ""));
      }

      for (size_t mi = 0; mi < ms.size(); ++mi) {
        const int64_t M = ms[mi];
        const double io = double(M) * double(sh.k + sh.n) * 2.0;  // activations in, outputs out
        const double t = median_ms(ctx, [&](int i) { product(i, M); }, samples, calls);
        const double gbs = (bytes + io) / (t * 1e-3) / 1e9, blas_gbs = (bf16_bytes + io) / (t_blas[mi] * 1e-3) / 1e9;
        std::string row = fmt::format("| {} | {}x{} | {} | {:.2f} | {} | {:.2f} | {:.0f} | {:.2f} | {:.2f}x | {:.0f} | "
                                      "{:.0f}% |",
                                      sh.name, sh.n, sh.k, f.name, 8.0 * bytes / (double(sh.n) * double(sh.k)), M,
                                      t_blas[mi] * 1e3, blas_gbs, t * 1e3, t_blas[mi] / t, gbs, 100.0 * gbs / peak_gbs);
        if (dequant) {
          if (f.w4a16) {
            row += " - |";
          } else {
            const double td = median_ms(
                ctx,
                [&](int i) {
                  cuda::gemv_linear(gw[size_t(i % copies)], x.get(), y.get(), M, ws, s, 0, 0,
                                    cuda::GemvKernel::DequantGemm);
                },
                samples, calls);
            row += fmt::format(" {:.2f} |", td * 1e3);
          }
        }
        fmt::print("{}\n", row);
        std::fflush(stdout);
      }
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
    fmt::print(stderr, "bench_gemv_lowbit: {}\n", e.what());
    return 1;
  }
}
