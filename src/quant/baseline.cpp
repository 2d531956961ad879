// "fp16": the 16-bit model itself, the baseline row of every table. It takes no options and
// quantizes nothing: a study evaluates the source model for it, and quantize refuses it.
#include "core/error.h"
#include "quant/method.h"

namespace lowbit {

namespace {

class Baseline : public QuantMethod {
 public:
  explicit Baseline(QuantSpec s) : QuantMethod(std::move(s)) { spec_.finish(); }
  bool needs_calibration() const override { return false; }
  double weight_bits() const override { return 16; }
  int64_t group_size() const override { return -1; }
  void quantize_block(BlockContext& ctx, QuantizedBlock&) override {
    fail("method 'fp16' is the 16-bit model itself; there is nothing to quantize (layer {})", ctx.layer());
  }
};

}  // namespace

std::unique_ptr<QuantMethod> make_baseline(QuantSpec spec) { return std::make_unique<Baseline>(std::move(spec)); }

}  // namespace lowbit
