#include "quant/dbllm.h"

#include "core/error.h"
#include "quant/formats/fdb_format.h"
#include "quant/method.h"
#include "quant/rtn.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

namespace lowbit {

QuantizedLinear rtn2_paper_grid(const float* w, int64_t rows, int64_t cols, int64_t group_size, DType dtype) {
  QuantizedLinear q;
  q.rows = rows;
  q.cols = cols;
  q.format = &kIntFormat;
  q.bits = 2;
  q.group_size = group_size;
  q.dequant_dtype = dtype;
  const int64_t ng = q.groups_per_row();
  q.codes.resize(size_t(rows * cols));
  q.scales.resize(size_t(rows * ng));
  q.zeros.assign(size_t(rows * ng), 1.0f);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t g = 0; g < ng; ++g) {
      const int64_t c0 = g * group_size, c1 = std::min(cols, c0 + group_size);
      float xmin = 0.0f, xmax = 0.0f;
      for (int64_t c = c0; c < c1; ++c) {
        xmin = std::min(xmin, w[r * cols + c]);
        xmax = std::max(xmax, w[r * cols + c]);
      }
      float s = std::max(-xmin, xmax / 2.0f);
      if (s == 0.0f) s = 1.0f;
      q.scales[size_t(r * ng + g)] = s;
      for (int64_t c = c0; c < c1; ++c)
        q.codes[size_t(r * cols + c)] = uint8_t(std::clamp(std::nearbyint(w[r * cols + c] / s) + 1.0f, 0.0f, 3.0f));
    }
  return q;
}

namespace {

class Dbllm : public QuantMethod {
 public:
  explicit Dbllm(QuantSpec s) : QuantMethod(std::move(s)) {
    group_ = spec_.take_int("g", 128, 2, 1 << 20, "group size along the input dimension (two scales per group)");
    init_ = spec_.take_choice("init", "rtn", {"rtn", "gptq"}, "the 2-bit quantizer FDB starts from");
    offset_ = spec_.take_bool("offset", true, "store a per-group offset beta = s * (1 - z): exact for the asymmetric "
                              "grid's every zero-point (2 + 48/g bits); 0: the paper's grid {-s, 0, s, 2s}, 2 + 32/g");
    spec_.finish();
    LB_CHECK(offset_ || init_ == "rtn", "dbllm: option offset=0 (the paper's fixed grid) needs init=rtn, not init={}",
             init_);
    if (init_ == "gptq") inner_ = make_method(fmt::format("gptq:w=2,g={}", group_));
  }
  bool needs_calibration() const override { return inner_ != nullptr; }
  double weight_bits() const override { return 2; }
  int64_t group_size() const override { return group_; }
  void check_shapes(const LlamaConfig& c) const override {
    for (LinearKind k : kAllLinears) {
      const int64_t in = linear_in_features(c, k);
      LB_CHECK(in % group_ == 0, "dbllm: option g={} does not divide {}'s {} input features", group_, linear_name(k),
               in);
    }
  }

  void quantize_block(BlockContext& ctx, QuantizedBlock& out) override {
    if (inner_ != nullptr) {
      // GPTQ writes its 2-bit weights into the context and reports them; the fdb form is the
      // same weight (checked below), so only the stored linear changes.
      inner_->quantize_block(ctx, out);
      for (LinearKind k : kAllLinears) {
        std::optional<QuantizedLinear>& slot = out.linear[size_t(k)];
        LB_ASSERT(slot.has_value());
        slot = to_fdb(*slot, ctx, k);
      }
      return;
    }
    for (LinearKind k : kAllLinears) {
      const auto t0 = std::chrono::steady_clock::now();
      const Tensor& w = ctx.weights()[k];
      const DType dt = linear_storage_dtype(ctx.model(), ctx.layer(), k);
      const QuantizedLinear q2 = offset_ ? rtn_quantize(w.data_as<float>(), w.dim(0), w.dim(1), 2, group_, false, dt)
                                         : rtn2_paper_grid(w.data_as<float>(), w.dim(0), w.dim(1), group_, dt);
      QuantizedLinear q = to_fdb(q2, ctx, k);
      const std::string note = fmt::format("FDB init from 2-bit {}, {:.3f} stored bits/weight",
                                           offset_ ? "RTN" : "RTN on {-s, 0, s, 2s}", q.bits_per_weight());
      finish_linear(ctx, k, std::move(q), out, t0, nullptr, note);
    }
  }

 private:
  // The fdb form of a 2-bit int linear, checked to dequantize to the same values.
  QuantizedLinear to_fdb(const QuantizedLinear& q2, const BlockContext& ctx, LinearKind k) const {
    QuantizedLinear q = fdb_from_int2(q2, offset_);
    const std::string what = fmt::format("layer {} {}", ctx.layer(), linear_name(k));
    q.validate(what);
    const Tensor a = q2.dequantize_f32(), b = q.dequantize_f32();
    for (int64_t i = 0; i < a.numel(); ++i)
      LB_CHECK(a.data_as<float>()[i] == b.data_as<float>()[i],
               "{}: the fdb form does not reproduce 2-bit weight {} ({} vs {})", what, i, b.data_as<float>()[i],
               a.data_as<float>()[i]);
    return q;
  }

  int64_t group_ = 128;
  std::string init_ = "rtn";
  bool offset_ = true;
  std::unique_ptr<QuantMethod> inner_;
};

}  // namespace

std::unique_ptr<QuantMethod> make_dbllm(QuantSpec spec) { return std::make_unique<Dbllm>(std::move(spec)); }

}  // namespace lowbit
