// GPTQ on the GPU: the same algorithm as gptq.h (same grids, same column order, damping and
// dead-input handling), with the Hessians accumulated by cuBLAS (bf16 activations, fp32 sums),
// the inverse factor by cuSOLVER (fp64), the column blocks by a kernel (one thread per row) and
// the lazy batch updates by cuBLAS SGEMM.
//
// The model driver runs block by block with one block's weights resident: the calibration
// activations (fp32 residual stream, [windows * seqlen, hidden]) and the block's intermediate
// activations stay on the GPU, and each linear's input is computed once, with the linears
// quantized before it already in place (true-sequential: q,k,v -> o -> gate,up -> down).
#pragma once

#include "calib/block_driver.h"
#include "calib/calib_data.h"
#include "model/cuda_model.h"
#include "quant/gptq.h"
#include "quant/quantize.h"

namespace lowbit {

// Quantizes W (bf16, device, [rows, cols]) with H = h_scale * h_sum (fp32 sums, device) and
// writes the dequantized weight (bf16) into out (device, may alias W).
GptqResult gptq_quantize_cuda(cuda::Context& ctx, const cuda::bf16* W, const float* h_sum, double h_scale,
                              int64_t rows, int64_t cols, const GptqOptions& opt, DType dtype, cuda::bf16* out);

// The whole model with GPTQ on one GPU (true_seq as the method's option).
QuantizedModel gptq_quantize_model_cuda(LlamaModel& model, QuantMethod& method, const GptqOptions& opt, bool true_seq,
                                        const Calibration& calib, cuda::Context& ctx, const DriverCallbacks& cb);

}  // namespace lowbit
