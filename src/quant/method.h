// One interface for every quantization method (DESIGN.md, "One interface for every method").
//
// A method sees one block at a time through a BlockContext: the block's fp32 weights, the
// calibration inputs, and collect(), which runs the block with observers to gather its linears'
// input statistics. It writes each quantized linear's dequantized weight back into the context
// (the block then runs with it to produce the next block's inputs) and its QuantizedLinear into
// the QuantizedBlock. Methods that rewrite the model (scales folded into norms) edit the
// context's other weights and record them in the QuantizedBlock too.
//
// Methods are named by spec strings (quant_spec.h): "rtn:w=4,g=128", "gptq:w=3,g=-1,act_order=1".
// One file per method in src/quant/, registered with one line in the method registry
// (method.cpp): its name, its display name and row order in the paper's tables, and its factory.
// "fp16", the 16-bit model itself, is a method too (baseline.cpp): it quantizes nothing.
//
// Devices: quantize_block sees the block only through its BlockContext, whose forwards run where
// the context lives (CpuBlockContext, CudaBlockContext), so every method runs on every device.
// A configuration a device cannot run is refused before any work (check_device), never moved.
// Where a method also has a whole-model GPU driver of its own (GPTQ), quantize_model_on
// (quantize_device.h) chooses it.
#pragma once

#include "calib/block_driver.h"
#include "core/device.h"
#include "core/tensor.h"
#include "quant/quant_spec.h"
#include "quant/quantized_linear.h"

#include <nlohmann/json.hpp>

#include <array>
#include <chrono>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace lowbit {

// What quantizing one block produced.
struct QuantizedBlock {
  std::array<std::optional<QuantizedLinear>, 7> linear;  // indexed by LinearKind
  // Other tensors of the block the method rewrote (fp32), e.g. norms with folded scales.
  std::map<TensorKind, Tensor> rewritten;
};

class QuantMethod {
 public:
  explicit QuantMethod(QuantSpec spec) : spec_(std::move(spec)) {}
  virtual ~QuantMethod() = default;

  const QuantSpec& spec() const { return spec_; }
  virtual bool needs_calibration() const = 0;
  // #W, #A and #G as the study's tables print them (#G: -1 for per-channel).
  virtual double weight_bits() const = 0;
  virtual int activation_bits() const { return 16; }
  virtual int64_t group_size() const = 0;
  // Whether the next block calibrates on this block's quantized outputs (GPTQ) or on the 16-bit
  // model's (AWQ, SmoothQuant), as the method's reference does.
  virtual bool propagates_quantized() const { return true; }
  // The activation quantization a model quantized by this method applies in its forward
  // (activation_quant.h), complete after the run; null for weight-only methods.
  virtual nlohmann::json activation_config() const { return nullptr; }
  // Throws lowbit::Error when the method cannot quantize a model of this shape (e.g. a group
  // size that must divide every linear's input features and does not), so that a run can be
  // refused before any work.
  virtual void check_shapes(const LlamaConfig& config) const {}
  // Whether the method quantizes with the model on a device of kind k: every kind unless a
  // method says otherwise (data-free methods' results do not depend on it; the others run their
  // forwards through the BlockContext of that device).
  virtual bool runs_on(Device::Kind) const { return true; }
  // Throws lowbit::Error when this configuration cannot run on `d` (the default: !runs_on),
  // naming the method, the device and what would run.
  virtual void check_device(const Device& d) const;
  virtual void quantize_block(BlockContext& ctx, QuantizedBlock& out) = 0;

 protected:
  QuantSpec spec_;
};

// One row of the method registry.
struct MethodInfo {
  const char* name;       // the spec's name: "gptq"
  const char* display;    // the row label in the study's tables: "GPTQ", "NormalFloat"
  int paper_order;        // rows are ordered by it (the paper's Table 1, then Table 5)
  std::unique_ptr<QuantMethod> (*make)(QuantSpec);
  const char* group_label;  // how a series names the method's group size ("g" or "block")
  // A spec that exercises the method's non-default options at group size 64 (`lowbit methods`
  // shows it; the method contract tests quantize a mini model with it).
  const char* example;
  // The options the study's grids vary for the method (its paper's axes, shown by `lowbit
  // methods`). A study's [[method]] table may still give a list of values for any other option of
  // the method (e.g. GPTQ's act_order): that varies it too. Each is an option of the method's
  // spec (the contract tests parse every one).
  std::vector<std::string> grid_axes;
  bool baseline = false;    // the 16-bit model itself (no quantization)
};
// The registry, in paper order.
const std::vector<MethodInfo>& method_registry();
// The row of `name`; throws naming the known methods.
const MethodInfo& method_info(const std::string& name);
bool is_baseline_method(const std::string& name);

// Throws lowbit::Error for unknown methods and for unknown or out-of-range options.
std::unique_ptr<QuantMethod> make_method(const std::string& spec_text);
// "fp16", "rtn", "gptq", ... in paper order (the baseline first).
std::vector<std::string> method_names();
// The options of a method with their defaults and help, one per line.
std::vector<std::string> method_help(const std::string& name);

// The dtype in which the model stores layer `layer`'s linear `k` (the precision its fake-quant
// weight is rounded to; fp32 for fp32 checkpoints).
DType linear_storage_dtype(const LlamaModel& model, int64_t layer, LinearKind k);

// Common end of quantizing one linear: writes q's dequantized weight into ctx.weights()[k],
// reports the weight error (and the output error when `stats` with a Hessian are given), and
// stores q.
void finish_linear(BlockContext& ctx, LinearKind k, QuantizedLinear q, QuantizedBlock& out,
                   std::chrono::steady_clock::time_point started, const InputStats* stats,
                   const std::string& note);

// The factories, one per method file.
std::unique_ptr<QuantMethod> make_baseline(QuantSpec spec);
std::unique_ptr<QuantMethod> make_rtn(QuantSpec spec);
std::unique_ptr<QuantMethod> make_nf4(QuantSpec spec);
std::unique_ptr<QuantMethod> make_icq(QuantSpec spec);
std::unique_ptr<QuantMethod> make_gptq(QuantSpec spec);
std::unique_ptr<QuantMethod> make_awq(QuantSpec spec);
std::unique_ptr<QuantMethod> make_smoothquant(QuantSpec spec);
std::unique_ptr<QuantMethod> make_slim(QuantSpec spec);
std::unique_ptr<QuantMethod> make_quip(QuantSpec spec);
std::unique_ptr<QuantMethod> make_pbllm(QuantSpec spec);
std::unique_ptr<QuantMethod> make_billm(QuantSpec spec);
std::unique_ptr<QuantMethod> make_dbllm(QuantSpec spec);

}  // namespace lowbit
