// The GPU kernels of DB-LLM's distillation (train/fdb_train_cuda.h): the fdb weight's dequantize,
// its group parameters' gradient, and the Deviation-Aware Distillation loss on the logits. The
// CUDA twins of quant/formats/fdb_format.cpp's fdb_dequantize, train/fdb_train.cpp's
// fdb_group_grad and train/dad.cpp's dad_loss_backward; fp32 in and out, row-major, sums in fp64
// like their CPU twins.
//
// Every launcher takes device pointers, sizes and a stream, and checks its launch.
#pragma once

#include "backend/cuda/cuda_util.h"
#include "core/dtype.h"

#include <cstdint>

namespace lowbit::cuda {

// w [rows, cols] = round((alpha1 b1 + alpha2 b2) + beta) per element (fdb_format.h), fp32 in that
// order, then rounded to `round_to` (the linear's dequant_dtype: F32 leaves it, BF16/F16 round
// to nearest even as QuantizedLinear::dequantize does).
// b1, b2: bit planes (formats/bit_plane.h: rows of ceil(cols / 8) bytes, least significant bit
// first); alpha [rows * cols / group, 3].
void fdb_dequantize_f32(const uint8_t* b1, const uint8_t* b2, const float* alpha, float* w, int64_t rows,
                        int64_t cols, int64_t group, cudaStream_t s, DType round_to = DType::F32);

// dalpha [rows * cols / group, 3] += float of the fp64 sums over each group of dw [rows, cols]:
// (sum dw * b1, sum dw * b2, sum dw): the gradients at alpha1, alpha2, beta.
void fdb_group_grad_f32(const float* dw, const uint8_t* b1, const uint8_t* b2, float* dalpha, int64_t rows,
                        int64_t cols, int64_t group, cudaStream_t s);

// The DAD loss (train/dad.h) of `rows` rows of logits [rows, V]: teacher is read, student is
// overwritten with d loss / d logits = float(scale * w_t * (q - p)). Per row, fp64:
// loss[r] = scale * w_t * KL_t, kl[r] = KL_t, weight[r] = w_t. weight_mode: 0 none (w = 1),
// 1 teacher (H(p)^gamma), 2 cross (H(p, q)^gamma).
void dad_loss_backward_f32(const float* teacher, float* student, double* loss, double* kl, double* weight,
                           int64_t rows, int64_t V, int weight_mode, double gamma, double scale, cudaStream_t s);

}  // namespace lowbit::cuda
