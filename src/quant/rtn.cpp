#include "quant/rtn.h"

#include "core/error.h"
#include "quant/affine_grid.h"
#include "quant/method.h"

#include <algorithm>

namespace lowbit {

QuantizedLinear rtn_quantize(const float* w, int64_t rows, int64_t cols, int bits, int64_t group_size, bool sym,
                             DType dtype) {
  QuantizedLinear q;
  q.rows = rows;
  q.cols = cols;
  q.format = &kIntFormat;
  q.bits = bits;
  q.group_size = group_size < 0 ? cols : group_size;
  q.dequant_dtype = dtype;
  q.zero_storage_bits = sym ? 0.0 : double(bits);
  const int maxq = (1 << bits) - 1;
  const int64_t ng = q.groups_per_row();
  q.codes.resize(size_t(rows * cols));
  q.scales.resize(size_t(rows * ng));
  q.zeros.resize(size_t(rows * ng));
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t g = 0; g < ng; ++g) {
      const int64_t c0 = g * q.group_size, c1 = std::min(cols, c0 + q.group_size);
      const AffineParams p = affine_minmax(w + r * cols + c0, c1 - c0, 1, maxq, sym);
      q.scales[size_t(r * ng + g)] = p.scale;
      q.zeros[size_t(r * ng + g)] = p.zero;
      for (int64_t c = c0; c < c1; ++c) q.codes[size_t(r * cols + c)] = affine_code(w[r * cols + c], p, maxq);
    }
  }
  return q;
}

namespace {

class Rtn : public QuantMethod {
 public:
  explicit Rtn(QuantSpec s) : QuantMethod(std::move(s)) {
    bits_ = spec_.take_weight_bits(4);
    group_ = spec_.take_group_size(128);
    sym_ = spec_.take_symmetric(false);
    abits_ = int(spec_.take_int("a", 16, 2, 16, "activation bits (symmetric, every linear's input; 16: none)"));
    const std::string act = spec_.take_choice("act", "per_token", {"per_token", "per_tensor"},
                                              "activation scale when a < 16: per token or per tensor (dynamic)");
    spec_.finish();
    if (abits_ < 16)
      activation_ = {{"bits", abits_}, {"granularity", act}, {"scheme", "symmetric absmax, every linear's input"}};
  }
  bool needs_calibration() const override { return false; }
  double weight_bits() const override { return bits_; }
  int64_t group_size() const override { return group_; }
  int activation_bits() const override { return abits_; }
  nlohmann::json activation_config() const override { return activation_; }

  void quantize_block(BlockContext& ctx, QuantizedBlock& out) override {
    for (LinearKind k : kAllLinears) {
      const auto t0 = std::chrono::steady_clock::now();
      const Tensor& w = ctx.weights()[k];
      finish_linear(ctx, k,
                    rtn_quantize(w.data_as<float>(), w.dim(0), w.dim(1), bits_, group_, sym_,
                                 linear_storage_dtype(ctx.model(), ctx.layer(), k)),
                    out, t0, nullptr, "");
    }
  }

 private:
  int bits_ = 4;
  int64_t group_ = 128;
  bool sym_ = false;
  int abits_ = 16;
  nlohmann::json activation_;
};

}  // namespace

std::unique_ptr<QuantMethod> make_rtn(QuantSpec spec) { return std::make_unique<Rtn>(std::move(spec)); }

}  // namespace lowbit
