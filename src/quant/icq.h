// icq: IR-QLoRA's Information Calibration Quantization (Qin et al. 2024, htqin/IR-QLoRA
// utils.search), NF4 whose every block of 64 is shifted by a calibrated tau before quantization.
// Data-free. As the reference computes it, in fp32 unless said otherwise:
//
//   - the weight, flattened row-major, is cut into blocks of b = 64 (bitsandbytes' NF4 blocks);
//     blocks are grouped b2 = 256 at a time for tau's 8-bit storage;
//   - per block: tau0 = the lower median of its 64 values (torch.median: the 32nd smallest),
//     absmax = max |w - tau0|;
//   - candidates lambda_i = np.linspace(-r * sigma, r * sigma, 2 n + 1) in fp64 (r = tau_range
//     0.1, n = tau_n 100: 201 values), sigma = 1 / Phi^-1(0.9677083) with the quantile evaluated
//     at the fp32 value of 0.9677083 and rounded to fp32 (scipy on a float32 tensor), i.e. the
//     NF4 construction's normalization;
//   - per candidate: tau = fp32(lambda_i) * absmax + tau0; the block's NF4 codes of w - tau
//     (bitsandbytes: x * (1 / max |x|), midpoint decision tree); entropy = -sum_k f_k log2 f_k
//     over the 16 code values k = 0..15 in order, f_k = count_k / 64, each term in fp32 (0 for
//     f = 0), summed in fp32;
//   - per block the first candidate keeps the lead unless a later one has strictly greater
//     entropy; tau = fp32(lambda*) * absmax + tau0;
//   - the weight w - tau is quantized as bitsandbytes NF4 (with double quantization by default,
//     nf4.h); tau itself is stored in 8 bits: tau_absmax = max |tau| over each group of 256
//     blocks, tau_q = the nearest entry (first on ties) of bitsandbytes' signed dynamic map to
//     tau / tau_absmax;
//   - w = NF4[code] * absmax_block + map[tau_q] * tau_absmax (format "icq", formats/icq_format.h).
//
// Choices where the reference has none: the reference reshapes the weight to [-1, 256, 64] and so
// needs a multiple of 16384 weights; here the last group of blocks may be partial (its tau_absmax
// is over the blocks it has), so every weight with a multiple of 64 elements works (SmolLM2's
// 576 x 576). A group whose taus are all 0 stores tau_q 0 (the reference divides 0 by 0 there and
// its argmin of NaNs is index 0 too).
//
//   spec: icq:tau_range=0.1,tau_n=100,dq=1
#pragma once

#include "quant/quantized_linear.h"

#include <cstdint>
#include <vector>

namespace lowbit {

struct IcqOptions {
  double tau_range = 0.1;
  int64_t tau_n = 100;
  int64_t blocksize = 64;
  int64_t blocksize2 = 256;
  bool double_quant = true;
};

// The normalization constant sigma above, and the 2 tau_n + 1 candidates (fp64, as np.linspace).
double icq_sigma();
std::vector<double> icq_candidates(double tau_range, int64_t tau_n);

struct IcqResult {
  QuantizedLinear q;                  // format "icq"
  std::vector<float> tau0, absmax;    // per block
  std::vector<int32_t> choice;        // index of the chosen candidate per block
  std::vector<float> tau;             // the block's tau before its 8-bit storage
};

// w: [rows, cols] row-major fp32; rows * cols must be a multiple of o.blocksize.
IcqResult icq_quantize(const float* w, int64_t rows, int64_t cols, const IcqOptions& o, DType dtype);

}  // namespace lowbit
