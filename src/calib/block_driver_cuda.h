// The block-by-block driver on one GPU: block_driver.h's run_block_by_block with the calibration
// activations resident on the GPU and every forward of a block (BlockContext's collect,
// capture_inputs, run and probe) run by CudaModel (bf16 products, fp32 residual stream). What a
// method computes from those (Hessian solves, grids, searches, rounding) is the method's own
// host code, the same code the CPU driver runs: one method, two devices. The exception is work
// that needs every window's inputs again and again (SliM-LLM's KL search: kl_errors), which the
// context runs where the inputs are.
//
// Device memory: the calibration activations ([nseq * seqlen, hidden] fp32), one block's bf16
// weights (two while a probe holds the block it judges), the forward's workspace for up to
// about 16k rows, and what a call holds while it runs:
//   collect         per requested input site an fp32 [dim, dim] Gram sum and two [dim] vectors;
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

namespace lowbit {

class CudaBlockContext final : public BlockContext {
 public:
  // hidden: the block's calibration inputs on the GPU ([nseq * seqlen, hidden] fp32), which the
  // driver propagates in place after the method returns.
  CudaBlockContext(CudaModel& gpu, int64_t layer, BlockWeights& weights, float* hidden, int64_t nseq, int64_t seqlen,
                   std::function<void(const LinearReport&)> report, std::function<void(const std::string&)> note);
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
  // On the device when h is a Hessian of this context's collect() (device_hessian), else on the
  // host.
  double output_error(const float* w, const float* q, int64_t rows, int64_t cols,
                      const std::vector<double>& h) const override;
  // The device copy of a Hessian that collect() returned (InputStats::hessian) while those
  // statistics live: fp32 values equal to float(h[i]), the host values rounded as a solve that
  // uploads them would round them; null for any other vector. Saves the solves and the output
  // error the host-to-device copy of the largest matrices of a block (14336^2 at 8B shapes).
  const float* device_hessian(const std::vector<double>& h) const;

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
  mutable GpuBlockWeights gw_;
  mutable cuda::DeviceBuffer<float> scratch_;
  struct DeviceHessian {
    std::weak_ptr<const InputStats> stats;  // whose `hessian` this is
    cuda::DeviceBuffer<float> h;
  };
  mutable std::vector<DeviceHessian> hessians_;
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
