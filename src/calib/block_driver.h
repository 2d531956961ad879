// The block-by-block driver of a quantization run (DESIGN.md, "How a quantization run flows"):
//
//   1. embed the calibration windows: block 0's inputs, [nseq * seqlen, hidden] in fp32;
//   2. for each block in order: convert its weights to fp32; hand them, with the block's inputs,
//      to the method, which collects the statistics it needs (BlockContext::collect runs the
//      block with observers on its linears' inputs), quantizes the linears and writes their
//      dequantized (fake-quant) weights back, possibly rewriting other weights too (scales
//      folded into norms); then run the block with those weights, in place, to produce the next
//      block's inputs; release the block.
//
// Peak memory, whatever the depth: the calibration activations ([nseq * seqlen, hidden] fp32),
// one block's fp32 weights (two for a moment while a block is loaded: the fp32 conversion of the
// source and the method's writable copy), one window's scratch, and what the method itself holds
// while it quantizes the block:
//   gptq         one [in, in] fp64 Hessian per input site of the linears being solved;
//   awq          the inputs of every linear (capture_inputs: [nseq * seqlen] tokens x (3 x hidden
//                + intermediate) fp32), one scaling group's linears and its module's output for
//                the original and the trial weights ([nseq * seqlen, out] fp32 each);
//   smoothquant  per-channel abs-max vectors.
// Methods that calibrate on the 16-bit activations (propagate_quantized == false) get no second
// block: their copy is released after the method returns, and the next block's inputs come from
// the block converted again from the checkpoint. Data-free methods get no calibration inputs and
// no forward runs at all.
//
// The method sees the block through a BlockContext and nothing else; on a GPU
// (block_driver_cuda.h) the calibration activations and every forward stay on the device, and the
// same method code runs unchanged.
#pragma once

#include "calib/kl_search.h"
#include "core/device.h"
#include "model/llama_model.h"

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

namespace lowbit {

// Statistics of one linear's input over the calibration tokens. Linears that share an input
// (q, k, v; gate, up) share one object.
struct InputStats {
  int64_t dim = 0;
  int64_t tokens = 0;     // rows seen
  int64_t sequences = 0;  // windows seen
  std::vector<float> absmax;    // [dim] max |x_j| (empty unless requested)
  std::vector<double> absmean;  // [dim] mean |x_j| (empty unless requested)

  // GPTQ's Hessian: 2 / sequences * sum over windows of X^T X  ([dim, dim], fp64, host; empty
  // unless requested). GPTQ scales by the number of sequences, not tokens; methods that use it are
  // invariant to the scale except through relative damping. A GPU context keeps the sums on the
  // device and makes this host copy on the first call (CudaBlockContext::device_hessian), so a
  // method that solves on the device never moves the largest matrices of a block (14336^2 at 8B
  // shapes) to the host. Thread-safe.
  const std::vector<double>& hessian() const;
  bool has_hessian() const;
  void set_hessian(std::vector<double> h);
  // The host copy made on first use by `fetch` (called once; it returns the [dim, dim] values).
  void set_hessian_source(std::function<std::vector<double>()> fetch);

 private:
  mutable std::mutex hessian_mu_;
  mutable std::vector<double> hessian_;
  mutable std::function<std::vector<double>()> fetch_;
};

struct StatsRequest {
  bool hessian = false;
  bool absmax = false;
  bool absmean = false;
};

// One line of per-linear progress.
struct LinearReport {
  LinearKind kind = LinearKind::Q;
  double seconds = 0;
  double weight_rel_err = 0;  // ||W - Q||_F / ||W||_F
  double output_rel_err = -1;  // tr(dW H dW^T) / tr(W H W^T) on the calibration inputs; < 0: not measured
  std::string note;            // method-specific, e.g. "loss 12.3, damp 0.01"
};

// What a method sees of one block: its weights (fp32, host, writable), the calibration windows'
// inputs, and the block's forward on them, run wherever the context lives (CpuBlockContext below,
// CudaBlockContext in block_driver_cuda.h). Methods call only this interface, so one method runs on
// every device; the statistics and buffers it returns are host memory either way (a GPU context's
// Hessians come to the host when a method first reads them: InputStats::hessian).
class BlockContext {
 public:
  using StatsMap = std::map<LinearKind, std::shared_ptr<const InputStats>>;
  using Inputs = std::map<LinearKind, std::shared_ptr<std::vector<float>>>;

  BlockContext(const LlamaModel& model, int64_t layer, BlockWeights& weights, int64_t nseq, int64_t seqlen,
               std::function<void(const LinearReport&)> report, std::function<void(const std::string&)> note);
  virtual ~BlockContext() = default;
  BlockContext(const BlockContext&) = delete;
  BlockContext& operator=(const BlockContext&) = delete;

  const LlamaModel& model() const { return model_; }
  int64_t layer() const { return layer_; }
  BlockWeights& weights() { return weights_; }
  bool has_calibration() const { return nseq_ > 0; }
  int64_t nseq() const { return nseq_; }
  int64_t seqlen() const { return seqlen_; }
  // Where the block's forwards run, and its name ("cpu" or the GPU's).
  virtual Device device() const = 0;
  virtual std::string device_name() const = 0;

  // Runs the block with the current weights on every calibration window, stopping at the last of
  // `kinds`, and returns the statistics of those linears' inputs.
  virtual StatsMap collect(std::span<const LinearKind> kinds, StatsRequest what) const = 0;
  // Runs the block with the current weights on every calibration window and returns the inputs
  // of `kinds` ([nseq * seqlen, in_features] each; linears sharing an input share one buffer).
  // The buffers are the caller's alone: a method may rewrite them in place or move them out.
  virtual Inputs capture_inputs(std::span<const LinearKind> kinds) const = 0;
  // Runs the block with weights `w` on windows [w0, w0 + n): out[n * seqlen, hidden] receives
  // the outputs (or, with hooks->stop_after, the partly updated hidden states). hooks see
  // (and may change) each linear's input as fp32 host rows, one window at a time.
  virtual void run(const BlockWeights& w, int64_t w0, int64_t n, float* out, const BlockHooks* hooks = nullptr) const = 0;

  // A part of the block judged on recorded inputs (AWQ's scale search): made with the block's
  // weights w0 and the part's inputs x ([nseq * seqlen, in] fp32 host: the normed input for
  // Attention and Mlp, the linear's input for Linear), it holds the part's output with w0;
  // mse(w) is the mean squared difference between that and the part's output with weights w,
  // which may differ from w0 only in the linears `varying`.
  enum class Part { Attention, Mlp, Linear };
  class PartProbe {
   public:
    virtual ~PartProbe() = default;
    virtual double mse(const BlockWeights& w) = 0;
  };
  virtual std::unique_ptr<PartProbe> probe(Part part, LinearKind linear, const BlockWeights& w0,
                                           std::span<const LinearKind> varying, const std::vector<float>& x) const = 0;

  // A KL search (calib/kl_search.h) and the linear whose inputs judge it (search->cols must be
  // its in_features; the search's matrices must outlive the call).
  struct KlSearchJob {
    LinearKind linear = LinearKind::Q;
    const KlSearch* search = nullptr;
  };
  // Runs the block with the current weights on every calibration window and evaluates every
  // job's candidates on that window's inputs of its linear: out[job][window][i - 1] = error_i
  // (host; empty rows for a search without candidates). The CPU evaluates on the host
  // (kl_search_errors, one window at a time); a GPU context where its activations are.
  using KlErrors = std::vector<std::vector<std::vector<double>>>;
  virtual KlErrors kl_errors(std::span<const KlSearchJob> jobs) const = 0;

  // The relative output error of a quantized linear for its report (relative_output_error, on at
  // most 512 evenly spaced rows of W, Q [rows, cols] host, with the Hessian of `stats`): the CPU
  // computes it on the host, a GPU context on the device when `stats` come from its own collect()
  // (the same values, up to the order of fp32 sums in the products).
  virtual double output_error(const float* w, const float* q, int64_t rows, int64_t cols,
                              const InputStats& stats) const;

  void report(const LinearReport& r) const { if (report_) report_(r); }
  void note(const std::string& s) const { if (note_) note_(s); }

  // A buffer of at least n floats for finish_linear's dequantized weight (one linear at a time,
  // from the thread running quantize_block). It is the context's own unless the driver shares one
  // across blocks (share_dequant_scratch), so that each linear reuses pages already touched
  // instead of faulting in a fresh weight-sized allocation; it grows to the largest linear.
  float* dequant_scratch(int64_t n);
  void share_dequant_scratch(std::shared_ptr<Tensor> scratch) { scratch_ = std::move(scratch); }

 protected:
  const LlamaModel& model_;
  int64_t layer_;
  BlockWeights& weights_;
  int64_t nseq_, seqlen_;
  std::function<void(const LinearReport&)> report_;
  std::function<void(const std::string&)> note_;

 private:
  std::shared_ptr<Tensor> scratch_ = std::make_shared<Tensor>();
};

// The block on the CPU (LlamaModel::run_block), its inputs in host memory.
class CpuBlockContext final : public BlockContext {
 public:
  // inputs: the block's calibration inputs [nseq * seqlen, hidden], the outputs of the quantized
  // previous blocks; the driver propagates them in place after the method returns.
  CpuBlockContext(const LlamaModel& model, int64_t layer, BlockWeights& weights, float* inputs, int64_t nseq,
                  int64_t seqlen, std::function<void(const LinearReport&)> report,
                  std::function<void(const std::string&)> note);
  Device device() const override { return Device{}; }
  std::string device_name() const override { return "cpu"; }
  StatsMap collect(std::span<const LinearKind> kinds, StatsRequest what) const override;
  Inputs capture_inputs(std::span<const LinearKind> kinds) const override;
  void run(const BlockWeights& w, int64_t w0, int64_t n, float* out, const BlockHooks* hooks = nullptr) const override;
  std::unique_ptr<PartProbe> probe(Part part, LinearKind linear, const BlockWeights& w0,
                                   std::span<const LinearKind> varying, const std::vector<float>& x) const override;
  KlErrors kl_errors(std::span<const KlSearchJob> jobs) const override;

 private:
  float* inputs_;
};

struct DriverCallbacks {
  std::function<void(int64_t layer, int64_t layers)> on_block_start;
  std::function<void(int64_t layer, const LinearReport&)> on_linear;
  std::function<void(int64_t layer, const std::string&)> on_note;
  std::function<void(int64_t layer, int64_t layers, double seconds)> on_block_done;
};

struct DriverPlan {
  // Calibration windows, each of the same length; empty for data-free methods.
  const std::vector<std::vector<int32_t>>* windows = nullptr;
  // Quantizes block ctx.layer() (editing ctx.weights()); called once per block, in order.
  std::function<void(BlockContext&)> quantize_block;
  // Hooks applied when the quantized block produces the next block's inputs (activation
  // quantization); may be null.
  std::function<const BlockHooks*(int64_t layer)> propagation_hooks;
  // Whether the next block's inputs come from the quantized block (GPTQ) or from the block as it
  // was before the method touched it (AWQ, SmoothQuant: their references calibrate every block
  // on the 16-bit model's activations).
  bool propagate_quantized = true;
};

// The length of the calibration windows; throws unless all have it and the model's context holds it.
int64_t calibration_seqlen(const LlamaConfig& c, const std::vector<std::vector<int32_t>>& windows);

// Runs the plan over every block of the model on the CPU. The model's block cache is turned off.
void run_block_by_block(LlamaModel& model, const DriverPlan& plan, const DriverCallbacks& cb);
// A driver: run_block_by_block, or its GPU twin (block_driver_cuda.h).
using BlockDriver = std::function<void(LlamaModel&, const DriverPlan&, const DriverCallbacks&)>;

// Input statistics of every linear of block `layer` of the 16-bit model (blocks before it run
// unquantized) on the calibration windows, and the block's fp32 weights.
BlockContext::StatsMap layer_input_stats(LlamaModel& model, const std::vector<std::vector<int32_t>>& windows,
                                         int64_t layer, StatsRequest what, BlockWeights* weights_out);

// ||W - Q||_F / ||W||_F over n values.
double relative_weight_error(const float* w, const float* q, int64_t n);
// The same value, and W's n values replaced by Q's in the same pass.
double relative_weight_error_and_store(float* w, const float* q, int64_t n);
// The rows of W and dW = W - Q ([rows, cols]) that relative_output_error sums over: at most 512,
// evenly spaced, each [count, cols] row-major.
struct OutputErrorSample {
  int64_t count = 0;
  std::vector<float> w, dw;
};
OutputErrorSample output_error_sample(const float* w, const float* q, int64_t rows, int64_t cols);
// tr(dW H dW^T) / tr(W H W^T) for W, Q [rows, cols] and H [cols, cols] (fp64), on the rows of
// output_error_sample.
double relative_output_error(const float* w, const float* q, int64_t rows, int64_t cols, const std::vector<double>& h);

}  // namespace lowbit
