// The arithmetic a training step's matrix products run in (`lowbit finetune --compute`, a study's
// [[finetune]] key `compute`). Everything else of a step (the residual stream, norms, RoPE,
// attention and its softmax, SwiGLU, the loss, the adapters' master weights, their gradients and
// AdamW's moments) is fp32 in every mode.
//
//   fp32   cuBLAS SGEMM, no TF32: the GPU step differs from the CPU's by summation order only (the
//          parity mode; the only mode of the CPU)
//   tf32   the same fp32 operands and outputs; the products on tensor cores with TF32 inputs (10-bit
//          mantissas), set per call (CUBLAS_COMPUTE_32F_FAST_TF32), never on a shared handle
//   bf16   the frozen base expanded into bf16, activations and gradients rounded to bf16 for the
//          products, fp32 accumulation and outputs (train/llama_backward_cuda.h says which products)
//
// tf32 and bf16 also run the attention's products as fp32 SGEMMs (train/llama_backward_cuda.h)
// rather than the fp32 mode's kernels: fp32 arithmetic in another summation order; with
// LOWBIT_TRAIN_ATTENTION=tf32 in the environment, on tensor cores with TF32 operands
// (tf32_attention; a run so made records "attention": "tf32" in its identity).
//
// A GPU run's default is bf16; the CPU takes fp32 only.
#pragma once

#include "core/device.h"

#include <string>
#include <string_view>

namespace lowbit::train {

enum class ComputePrecision { Fp32, Tf32, Bf16 };

const char* compute_precision_name(ComputePrecision p);  // "fp32", "tf32", "bf16"

// "fp32", "tf32" or "bf16"; throws lowbit::Error naming the option and the text otherwise.
ComputePrecision parse_compute_precision(std::string_view text);

// The default of device d: bf16 on a GPU, fp32 on the CPU.
ComputePrecision default_compute_precision(const Device& d);

// The precision a run on device d computes in: `text` parsed, or d's default when it is empty.
// Throws lowbit::Error naming --compute and the device for a precision the device does not run
// (anything but fp32 on the CPU).
ComputePrecision resolve_compute_precision(const Device& d, std::string_view text);

// Throws lowbit::Error unless device d runs precision p.
void check_compute_precision(const Device& d, ComputePrecision p);

// Whether precision p runs the attention's products with TF32 operands: never in fp32; in tf32
// and bf16 when LOWBIT_TRAIN_ATTENTION is "tf32" (false when unset or "fp32"; throws
// lowbit::Error naming the variable for anything else).
bool tf32_attention(ComputePrecision p);

}  // namespace lowbit::train
