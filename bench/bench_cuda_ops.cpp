// The GPU ops of one LLaMA block at a model's shapes, timed with CUDA events: milliseconds per
// call, TFLOP/s (matrix products, attention) or GB/s (element-wise ops), and the share of one
// perplexity window's time each takes (the calls a window makes: every block, the LM head and
// the NLL). Shows where a forward's time goes.
//
//   bench_cuda_ops [CONFIG.json] [--batch 4] [--seqlen 2048]     (default: bench/configs/llama3-8b.json)
#include "backend/cuda/ops.cuh"
#include "formats/llama_config.h"

#include <fmt/format.h>

#include <cstring>
#include <functional>
#include <string>
#include <vector>

using namespace lowbit;
using cuda::bf16;
using cuda::DeviceBuffer;

namespace {

double time_ms(cuda::Context& ctx, const std::function<void()>& f, int reps = 20) {
  f();
  cudaEvent_t a, b;
  LB_CUDA_CHECK(cudaEventCreate(&a));
  LB_CUDA_CHECK(cudaEventCreate(&b));
  LB_CUDA_CHECK(cudaEventRecord(a, ctx.stream()));
  for (int i = 0; i < reps; ++i) f();
  LB_CUDA_CHECK(cudaEventRecord(b, ctx.stream()));
  LB_CUDA_CHECK(cudaEventSynchronize(b));
  float ms = 0;
  LB_CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return double(ms) / reps;
}

template <typename T>
DeviceBuffer<T> filled(size_t n, cudaStream_t s) {
  DeviceBuffer<T> d(n);
  std::vector<T> h(n);
  for (size_t i = 0; i < n; ++i) {
    const float x = float((i * 2654435761u) % 1000) / 1000.0f - 0.5f;
    if constexpr (std::is_same_v<T, float>) h[i] = x;
    else if constexpr (std::is_same_v<T, int32_t>) h[i] = int32_t(i % 1000);
    else h[i] = __float2bfloat16(x);
  }
  cuda::upload(d.get(), h.data(), n, s);
  return d;
}

}  // namespace

int main(int argc, char** argv) {
  std::string config_path = std::string(LOWBIT_SOURCE_DIR) + "/bench/configs/llama3-8b.json";
  int64_t B = 4, T = 2048;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--batch" && i + 1 < argc) B = std::stoll(argv[++i]);
    else if (a == "--seqlen" && i + 1 < argc) T = std::stoll(argv[++i]);
    else config_path = a;
  }
  const LlamaConfig c = load_llama_config(config_path);
  cuda::Context ctx(0);
  const cudaStream_t s = ctx.stream();
  const int64_t H = c.hidden_size, F = c.intermediate_size, V = c.vocab_size, N = B * T;
  const int64_t nh = c.num_attention_heads, nkv = c.num_key_value_heads, hd = c.head_dim, qd = c.q_dim(),
                kvd = c.kv_dim(), L = c.num_hidden_layers;
  fmt::print("{}: {} windows of {} tokens per forward on {}\n", config_path, B, T, ctx.name());
  const int64_t ldqkv = qd + 2 * kvd;
  auto x = filled<bf16>(size_t(N * std::max(H, 2 * F)), s);
  auto gate_up = filled<bf16>(size_t(N * 2 * F), s);
  auto w = filled<bf16>(size_t(std::max(2 * F, V) * H), s);
  auto hidden = filled<float>(size_t(N * H), s);
  auto qkv = filled<bf16>(size_t(N * ldqkv), s);
  auto att = filled<bf16>(size_t(N * qd), s);
  auto norm = filled<bf16>(size_t(H), s);
  std::vector<float> cs(size_t(T * hd / 2), 0.5f);
  DeviceBuffer<float> cosd(cs.size());
  DeviceBuffer<float> sind(cs.size());
  cuda::upload(cosd.get(), cs.data(), cs.size(), s);
  cuda::upload(sind.get(), cs.data(), cs.size(), s);
  const int64_t head_rows = T - 1;
  DeviceBuffer<float> logits(static_cast<size_t>(head_rows * V)), nll(static_cast<size_t>(head_rows));
  auto targets = filled<int32_t>(size_t(head_rows), s);
  ctx.synchronize();

  struct Row {
    std::string name;
    double ms, work;  // work: FLOPs or bytes
    bool flops;
    double calls_per_window;
  };
  std::vector<Row> rows;
  const double per_block = double(L) / double(B);  // calls per window of a once-per-forward block op
  auto gemm = [&](const std::string& name, int64_t M, int64_t Nn, int64_t K, const std::function<void()>& f) {
    rows.push_back({name, time_ms(ctx, f), 2.0 * double(M) * double(Nn) * double(K), true, per_block});
  };
  // The forward's ops in order (model/cuda_model.cpp, CudaModel::run_block).
  {
    const double ms = time_ms(ctx, [&] { cuda::rmsnorm(hidden.get(), norm.get(), x.get(), N, H, 1e-5f, s); });
    rows.push_back({"rmsnorm x2 (fp32 -> bf16)", ms, double(N * H) * 6.0, false, 2 * per_block});
  }
  gemm(fmt::format("qkv_proj [{}x{}] x [{}x{}]^T", N, H, ldqkv, H), N, ldqkv, H,
       [&] { cuda::linear(ctx, x.get(), w.get(), qkv.get(), N, ldqkv, H); });
  {
    const double ms = time_ms(ctx, [&] { cuda::rope(qkv.get() + qd, B, T, nkv, hd, ldqkv, cosd.get(), sind.get(), 0, s); });
    rows.push_back({"rope (k heads)", ms, double(N * kvd) * 4.0, false, per_block});
  }
  {
    // The kernel the forward runs (wgmma on Hopper), and the mma.sync one beside it, not counted
    // in the sum.
    std::vector<cuda::AttentionKernel> kernels = {cuda::AttentionKernel::Auto};
    if (hd == 128 && cuda::wgmma_attention_available()) kernels.push_back(cuda::AttentionKernel::MmaSync);
    for (const cuda::AttentionKernel kernel : kernels) {
      cuda::set_attention_kernel(kernel);
      const double ms = time_ms(ctx, [&] {
        cuda::attention(qkv.get(), qkv.get() + qd, qkv.get() + qd + kvd, att.get(), B, T, 0, nh, nkv, hd, ldqkv, ldqkv,
                        qd, s, cosd.get(), sind.get());
      });
      const bool shown = kernel != cuda::AttentionKernel::Auto;
      // Causal: half of the T x T score matrix (and of P V).
      rows.push_back({fmt::format("attention (+ rope q) B{} T{} heads {}/{} hd {}{}", B, T, nh, nkv, hd,
                                  shown ? ", mma.sync kernel (not summed)" : ""),
                      ms, 2.0 * 2.0 * double(B) * double(nh) * double(T) * double(T) / 2.0 * double(hd), true,
                      shown ? 0.0 : per_block});
    }
    cuda::set_attention_kernel(cuda::AttentionKernel::Auto);
  }
  gemm(fmt::format("o_proj   [{}x{}] x [{}x{}]^T += fp32", N, qd, H, qd), N, H, qd,
       [&] { cuda::linear(ctx, att.get(), w.get(), hidden.get(), N, H, qd, true); });
  gemm(fmt::format("gate_up  [{}x{}] x [{}x{}]^T", N, H, 2 * F, H), N, 2 * F, H,
       [&] { cuda::linear(ctx, x.get(), w.get(), gate_up.get(), N, 2 * F, H); });
  {
    const double ms = time_ms(ctx, [&] { cuda::swiglu_rows(gate_up.get(), N, F, s); });
    rows.push_back({"swiglu (in place, rows [gate | up])", ms, double(N * F) * 6.0, false, per_block});
  }
  gemm(fmt::format("down     [{}x{}] x [{}x{}]^T += fp32", N, F, H, F), N, H, F,
       [&] { cuda::linear(ctx, gate_up.get(), w.get(), hidden.get(), N, H, F, true, 2 * F); });
  {
    const double ms = time_ms(ctx, [&] { cuda::linear(ctx, x.get(), w.get(), logits.get(), head_rows, V, H); });
    rows.push_back({fmt::format("lm_head  [{}x{}] x [{}x{}]^T fp32", head_rows, H, V, H), ms,
                    2.0 * double(head_rows) * double(V) * double(H), true, 1.0});
  }
  {
    const double ms = time_ms(ctx, [&] {
      cuda::nll_rows(logits.get(), targets.get(), nll.get(), nullptr, head_rows, V, s);
    });
    rows.push_back({"nll_rows (fp32 logits)", ms, double(head_rows * V) * 4.0, false, 1.0});
  }
  double total = 0;
  for (const auto& r : rows) total += r.ms * r.calls_per_window;
  fmt::print("{:<52} {:>9} {:>12} {:>10} {:>7}\n", "op", "ms/call", "rate", "ms/window", "share");
  for (const auto& r : rows)
    fmt::print("{:<52} {:>9.3f} {:>12} {:>10.2f} {:>6.1f}%\n", r.name, r.ms,
               r.flops ? fmt::format("{:.0f} TFLOP/s", r.work / r.ms / 1e9) : fmt::format("{:.0f} GB/s", r.work / r.ms / 1e6),
               r.ms * r.calls_per_window, 100.0 * r.ms * r.calls_per_window / total);
  fmt::print("sum per window of {} tokens: {:.2f} ms ({:.0f} tokens/s)\n", T, total, double(T) / total * 1e3);
  return 0;
}
