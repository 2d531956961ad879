// Format "icq": IR-QLoRA's ICQ weight (quant/icq.h): the "codebook" format (NF4 in flat blocks,
// optionally double-quantized absmax) plus a shift tau per block, stored in 8 bits:
//
//   w[i] = codebook[code[i]] * scale[i / group] + map[tau_q[b]] * tau_absmax[b / tau_group],
//          b = i / group (the flat block of element i, row-major), map = bitsandbytes' signed
//          dynamic map (nf4.h)
//
//   extras: icq.tau_q U8 [blocks], icq.tau_absmax F32 [ceil(blocks / tau_group)]
//   params: {"tau_group": 256}
// In fp32: the NF4 value times its absmax, then the tau added (the reference's forward).
#include "core/error.h"
#include "quant/formats/example_random.h"
#include "quant/nf4.h"
#include "quant/quant_format.h"
#include "quant/quantized_linear.h"

namespace lowbit {

namespace {

int64_t tau_group(const QuantizedLinear& q) { return q.params.value("tau_group", int64_t(256)); }

void dequantize(const QuantizedLinear& q, float* out) {
  kCodebookFormat.dequantize(q, out);
  const auto& map = dynamic_map_signed();
  const uint8_t* tq = q.extras.at("icq.tau_q").data_as<uint8_t>();
  const float* ta = q.extras.at("icq.tau_absmax").data_as<float>();
  const int64_t n = q.rows * q.cols, g = q.group_size, g2 = tau_group(q);
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < n / g; ++b) {
    const float tau = map[tq[b]] * ta[b / g2];
    for (int64_t i = b * g; i < (b + 1) * g; ++i) out[i] += tau;
  }
}

double bits_per_weight(const QuantizedLinear& q) {
  const double n = double(q.rows) * double(q.cols);
  const double blocks = n / double(q.group_size);
  return kCodebookFormat.bits_per_weight(q) + (8.0 * blocks + 32.0 * std::ceil(blocks / double(tau_group(q)))) / n;
}

void validate(const QuantizedLinear& q, const std::string& what) {
  kCodebookFormat.validate(q, what);
  LB_CHECK(q.flat_groups, "{}: format icq needs flat blocks", what);
  const int64_t n = q.rows * q.cols, g2 = tau_group(q);
  LB_CHECK(n % q.group_size == 0, "{}: {} weights are not whole blocks of {}", what, n, q.group_size);
  LB_CHECK(g2 > 0, "{}: tau_group {} must be positive", what, g2);
  const int64_t blocks = n / q.group_size;
  for (const char* name : {"icq.tau_q", "icq.tau_absmax"})
    LB_CHECK(q.extras.count(name), "{}: format icq lacks extra '{}'", what, name);
  const Tensor& tq = q.extras.at("icq.tau_q");
  LB_CHECK(tq.dtype() == DType::U8 && tq.numel() == blocks, "{}: extra icq.tau_q holds {} {} values for {} blocks",
           what, tq.numel(), dtype_name(tq.dtype()), blocks);
  const Tensor& ta = q.extras.at("icq.tau_absmax");
  LB_CHECK(ta.dtype() == DType::F32 && ta.numel() == (blocks + g2 - 1) / g2,
           "{}: extra icq.tau_absmax holds {} {} values for {} blocks in groups of {}", what, ta.numel(),
           dtype_name(ta.dtype()), blocks, g2);
}

// The codebook row's example (NF4, double-quantized scales, flat blocks of 64) with a shift per
// block, the shifts' absmax in groups of 4 blocks so that several groups are exercised.
QuantizedLinear example(int64_t rows, int64_t cols, uint64_t seed) {
  QuantizedLinear q = kCodebookFormat.example(rows, cols, seed);
  ExampleRandom rng(seed ^ 0x1c9u);
  q.format = &kIcqFormat;
  q.params["tau_group"] = 4;
  const int64_t blocks = rows * cols / q.group_size;
  Tensor tq = Tensor::empty(DType::U8, {blocks});
  for (int64_t b = 0; b < blocks; ++b) tq.mutable_data_as<uint8_t>()[b] = uint8_t(rng.below(256));
  q.extras["icq.tau_q"] = std::move(tq);
  q.extras["icq.tau_absmax"] = rng.f32({(blocks + 3) / 4}, 0.001f, 0.01f);
  return q;
}

}  // namespace

const QuantFormat kIcqFormat = {"icq", 1, "w = codebook[code] * scale[block] + map[tau_q[block]] * tau_absmax",
                                dequantize, bits_per_weight, validate, nullptr, example};

}  // namespace lowbit
