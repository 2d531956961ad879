// The block-by-block driver on one GPU: block_driver.h's run_block_by_block with the calibration
// activations resident on the GPU and every forward of a block (BlockContext's collect,
// capture_inputs, run and probe) run by CudaModel (bf16 products, fp32 residual stream). What a
// method computes from those (Hessian solves, grids, searches, rounding) is the method's own
// host code, the same code the CPU driver runs: one method, two devices. The exceptions run where
// the data is: work that needs every window's inputs again and again (SliM-LLM's KL search:
// kl_errors), and the solves a method has written for the GPU (GPTQ's, PB-LLM's and the inverse
// factor they share with BiLLM: gptq_cuda.h, pbllm.h), which read the block's weights and Hessians
// from the context's device copies (device_weights, device_hessian) instead of the host's.
//
// Device memory: the calibration activations ([nseq * seqlen, hidden] fp32), one block's bf16
// weights (the mirror; two while a probe holds the block it judges), the forward's workspace for
// up to about 16k rows, the Gram sums of the statistics a method still holds, and what a call
// holds while it runs:
//   collect         per requested input site an fp32 [dim, dim] Gram sum (kept while its
//                   InputStats live) and two [dim] vectors;
//   capture_inputs  a staging copy of one chunk's input (the inputs themselves go to the host);
//   kl_errors       each search's fp32 matrices (w, start and each distinct delta: [out, in]),
//                   one window's input in fp32 ([seqlen, in]), its outputs Y, Z (fp32) and
//                   log q (fp64) ([seqlen, out] each);
//   probe           the part's inputs (bf16 [nseq * seqlen, in]) and its reference output
//                   (fp32 [nseq * seqlen, out]).
// Statistics differ from the CPU's by the bf16 forward: inputs are the GPU forward's bf16
// activations, Hessians are their exact products summed in fp32 (as GPTQ's GPU driver does).
#pragma once

#include "backend/cuda/cuda_util.h"
#include "calib/block_driver.h"
#include "model/cuda_model.h"

#include <array>
#include <memory>
#include <optional>

namespace lowbit {

// A block's weights on the GPU (bf16) kept in step with host weights: sync() uploads only the
// tensors whose bytes changed since their last upload (fingerprint64 of each, with its dtype), so
// the forwards of a method's collects, its device solves and the propagation after it share one
// copy, and a rewritten linear moves once. Content-addressed: reused for the next block, it
// uploads what differs.
class GpuBlockMirror {
 public:
  // The device copy of `host` as it is now; `only`: the norms are left as they were and, of the
  // linears, only these are brought up to date.
  const GpuBlockWeights& sync(const CudaModel& gpu, const BlockWeights& host,
                              std::span<const LinearKind> only = {});

 private:
  GpuBlockWeights w_;
  bool shaped_ = false;
  // The prints of what the device holds: input_norm, post_norm, then the linears by LinearKind.
  std::array<std::optional<uint64_t>, 2 + 7> print_{};
};

class CudaBlockContext final : public BlockContext {
 public:
  // hidden: the block's calibration inputs on the GPU ([nseq * seqlen, hidden] fp32), which the
  // driver propagates in place after the method returns. mirror: the device copy of the block's
  // weights the driver keeps (for the propagation after the method); null: the context's own.
  CudaBlockContext(CudaModel& gpu, int64_t layer, BlockWeights& weights, float* hidden, int64_t nseq, int64_t seqlen,
                   std::function<void(const LinearReport&)> report, std::function<void(const std::string&)> note,
                   GpuBlockMirror* mirror = nullptr);
  Device device() const override { return Device{Device::Kind::Cuda, gpu_.context().device()}; }
  std::string device_name() const override { return gpu_.context().name(); }
  // The model on the GPU (for solves that run on the context's device, e.g. gptq_quantize_on).
  CudaModel& gpu() const { return gpu_; }
  StatsMap collect(std::span<const LinearKind> kinds, StatsRequest what) const override;
  Inputs capture_inputs(std::span<const LinearKind> kinds) const override;
  // On the GPU the hooks observe: on_input sees a host copy of each linear's input, one window
  // at a time, and what it writes there does not reach the product; on_output and
  // stop_after are refused.
  void run(const BlockWeights& w, int64_t w0, int64_t n, float* out, const BlockHooks* hooks = nullptr) const override;
  std::unique_ptr<PartProbe> probe(Part part, LinearKind linear, const BlockWeights& w0,
                                   std::span<const LinearKind> varying, const std::vector<float>& x) const override;
  // On the GPU: the searches' matrices are uploaded once (fp32), each window's inputs stay on the
  // device, widened from the forward's bf16 to fp32 (exactly), and every product, softmax and
  // sum runs there (cuda::linear_f32, cuda::clamped_softmax_kl_rows): the host evaluation's
  // arithmetic on the GPU's inputs, up to the order of fp32 sums in the products.
  KlErrors kl_errors(std::span<const KlSearchJob> jobs) const override;
  // On the device when `stats` come from this context's collect() (device_hessian), else on the
  // host.
  double output_error(const float* w, const float* q, int64_t rows, int64_t cols,
                      const InputStats& stats) const override;
  // The Hessian of statistics that this context's collect() returned, where it stays on the
  // device: H = scale * sum (sum: the fp32 Gram sums, [dim, dim]), the values InputStats::hessian()
  // fetches to the host (double(sum[i]) * scale) without the copy; nullopt for other statistics.
  struct DeviceHessian {
    const float* sum = nullptr;
    double scale = 0;
  };
  std::optional<DeviceHessian> device_hessian(const InputStats& stats) const;
  // The block's weights as weights() holds them now, on the device (bf16; `only`: as
  // GpuBlockMirror::sync). Valid until the next call that syncs (collect, capture_inputs, kl_errors,
  // another device_weights).
  const GpuBlockWeights& device_weights(std::span<const LinearKind> only = {}) const;

 private:
  // Runs the block with GPU weights gw over windows [w0, w0 + n) of the inputs, a chunk at a
  // time, into scratch_ (the inputs stay); on_input as CudaModel::run_block's, with the chunk's
  // first window.
  // stop_after: as CudaModel::run_block's (out_host must then be null).
  void forward(const GpuBlockWeights& gw, int64_t w0, int64_t n,
               const std::function<void(int64_t window, LinearKind first, const cuda::bf16* x, int64_t rows,
                                        int64_t cols, int64_t ld)>& on_input,
               float* out_host, std::optional<InputSite> stop_after = std::nullopt) const;
  CudaModel& gpu_;
  float* hidden_;
  int64_t chunk_;  // windows per forward
  std::unique_ptr<GpuBlockMirror> own_mirror_;
  GpuBlockMirror* mirror_;
  mutable cuda::DeviceBuffer<float> scratch_;
  struct HeldHessian {
    std::weak_ptr<const InputStats> stats;  // whose Hessian this is
    std::shared_ptr<const cuda::DeviceBuffer<float>> sum;
    double scale = 0;
  };
  mutable std::vector<HeldHessian> hessians_;
};

// run_block_by_block on the GPU of `ctx`; the same plan, the same callbacks, the same results up
// to the bf16 forward. Throws before any work when the calibration activations do not fit.
void run_block_by_block_cuda(LlamaModel& model, const DriverPlan& plan, const DriverCallbacks& cb,
                             cuda::Context& ctx);

// block_driver.h's layer_input_stats on the GPU of `ctx`: the blocks before `layer` run there on
// the windows, then a CudaBlockContext of `layer` collects `what` for all seven linears (the
// statistics of its bf16 forward). The block's weights as quantization reads them go to
// *weights_out (may be null).
BlockContext::StatsMap layer_input_stats_cuda(LlamaModel& model, const std::vector<std::vector<int32_t>>& windows,
                                              int64_t layer, StatsRequest what, BlockWeights* weights_out,
                                              cuda::Context& ctx);

}  // namespace lowbit
