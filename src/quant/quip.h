// quip: QuIP (Chee et al. 2023) as its reference code (Cornell-RelaxML/QuIP: llama.py, method.py,
// bal.py, quant.py, vector_balance.py) runs it with `--quant ldlq --pre_gptqH --pre_rescale
// --pre_proj --qfn b` (the README's "incoherence processing"; pre_proj_extra 0).
//
// Per block, all seven linears' Hessians come from one collect() of the block; the quantized
// block's outputs feed the next block. Per linear, W [rows, cols] in fp16 (the reference loads
// the model in fp16; lowbit rounds the checkpoint's weight to fp16 first), H = sum x x^T / N
// (N windows; fp64 sum, then fp32; lowbit's activations are fp32 where the reference's are fp16):
//  1. rescale: H /= max|H|; d = max(diag H, 1e-8), e = max(diag W^T W, 1e-8);
//     s = max((d / e)^(1/4), 1e-8); W <- fp16(W diag(s)); H <- diag(1/s) H diag(1/s).
//  2. project: U, V random orthogonal butterflies of dimension rows and cols (below);
//     H <- H * (n / (tr H + 1e-8)) + 0.01 I; W <- fp16(U W V^T); H <- V H V^T (fp32).
//  3. gptqH: dead inputs (diag H == 0) get diag 1 and a zero weight column;
//     H += damp * mean(diag H) * I.
//  4. qfn b with LDLQ: scale = 2.4 * sqrt(mean(W^2)) in fp16 arithmetic (one scalar per matrix);
//     Wt = clamp((W / scale + 1) / 2 * maxq, 0, maxq) in fp16, maxq = 2^b - 1;
//     L = chol(H) with unit diagonal (columns divided by their diagonal), minus I;
//     for i = cols-1 down to 0: k_i = clamp(floor(Wt_i + (Wt - K)[:, i+1:] L[i+1:, i] + 0.5), 0, maxq);
//     then `npasses` greedy passes (reverse order, H / max diag H, torch.round half-to-even,
//     a clamp after each pass, stopping at a fixed point);
//     W_rot = fp16((2 k / maxq - 1) * scale): the symmetric grid without a zero level.
//  5. un-project and un-scale: W <- fp16(U^T W_rot V); W <- fp16(W / s).
// The fake-quant weight is that fp16 result, rounded to the model's dtype.
//
// Butterflies (method.py gen_rand_ortho_butterfly, mul_ortho_butterfly): n = p0 * p1 with p0
// the product of n's ascending prime factors at even positions and p1 of those at odd positions
// (4096 = 64 * 64, 14336 = 64 * 224, 1024 = 32 * 32). x -> x[perm_in]; for each factor i, view
// the rows as (prod of earlier factors, p_i, prod of later factors) and multiply the p_i axis by
// one of n / p_i independent p_i x p_i rotations (one per position of the other axes, in
// row-major order); then x -> x[perm_out]. The reference draws the rotations from unseeded
// scipy/torch RNGs; lowbit draws them from its own seeded generator (quip_random_butterfly):
// Python's Mersenne Twister (core/py_random.h) seeded with the linear's seed, each p x p block
// the Q factor of a matrix of standard normals (Box-Muller on random(); fp64 Gram-Schmidt, twice
// per column, so that R has a positive diagonal: Haar on O(p)), then perm_in and perm_out by
// random.shuffle of 0..n-1. Per linear the seeds are seed * 1000003 + layer * 16 + 2 * kind
// (U) and that + 1 (V), stored with the linear.
//
// Stored in the "quip" format (formats/quip_format.h). #W = b; #G "-" (one scale per matrix,
// reported as per-channel, -1).
//
//   spec: quip:w=2,npasses=0,seed=0,damp=0.01,rescale=1,proj=1
#pragma once

#include "quant/quantized_linear.h"

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace lowbit {

struct QuipOptions {
  int bits = 2;
  int npasses = 0;
  uint64_t seed = 0;
  double damp = 0.01;
  bool rescale = true;
  bool proj = true;
};

// method.py butterfly_factors: (p0, p1), p0 * p1 = n (n = 1: (1, 1)).
std::pair<int64_t, int64_t> quip_butterfly_factors(int64_t n);

struct Butterfly {
  int64_t n = 0;
  std::array<int64_t, 2> p{};
  std::array<std::vector<float>, 2> blocks;  // factor i: n / p[i] matrices p[i] x p[i], row-major
  std::vector<int32_t> perm_in, perm_out;     // [n]
  // Set when quip_random_butterfly(n, *seed) made it: the format then stores only the seed.
  std::optional<uint64_t> seed;
};

// lowbit's seeded butterfly (see above).
Butterfly quip_random_butterfly(int64_t n, uint64_t seed);
// mul_ortho_butterfly(b, x): out [n, q] = the butterfly applied to x [n, q] factor by factor (fp32).
void quip_butterfly_apply(const Butterfly& b, const float* x, int64_t q, float* out);
// mul_ortho_butterfly applied to the identity: the dense operator [n, n] row-major (fp32), bit for
// bit, built entry by entry.
std::vector<float> quip_butterfly_dense(const Butterfly& b);
// Throws lowbit::Error unless b is a well-formed butterfly of dimension n.
void quip_check_butterfly(const Butterfly& b, int64_t n, const std::string& what);

struct QuipResult {
  QuantizedLinear q;              // "quip" format
  std::vector<float> s;           // [cols] the rescaling (empty without rescale)
  std::vector<float> w_rot;       // [rows, cols] fp16 values: W after preprocessing, before rounding
  std::vector<float> h_rot;       // [cols, cols] H after preprocessing (what LDLQ used)
  float scale = 0;                // the grid's scale (an fp16 value)
  double proxy_loss = 0;          // tr((W_rot_q - W_rot) H_rot (W_rot_q - W_rot)^T)
  int64_t dead_columns = 0;
};

// The dense work of quip_quantize (at 8B shapes a down_proj's V H V^T alone is 1.2e13 flops):
// OpenBLAS and LAPACK on the host (quip_host_products), or cuBLAS SGEMM in fp32 (no TF32) and
// cuSOLVER where the block's context lives on a GPU (quip_products_on). Every array is on the
// host and row-major; the sums differ from the host's only in their order.
class QuipProducts {
 public:
  virtual ~QuipProducts() = default;
  // c [m, n] = op(a) op(b), op(x) = x^T when its flag is set (a: [m, k] or [k, m]).
  virtual void gemm(const float* a, const float* b, float* c, int64_t m, int64_t n, int64_t k, bool a_t,
                    bool b_t) = 0;
  // The lower Cholesky factor of a [n, n] (fp64) in place, zeros above; false if a is not
  // positive definite.
  virtual bool cholesky_lower(double* a, int64_t n) = 0;
  // LDLQ's reverse blocks: ldlq_begin takes the factor lf [d, d] for a weight of `rows` rows;
  // then, block by block from the last, acc [rows, b1 - b0] = e[:, b1:d] . lf[b1:d, b0:b1], where
  // e [rows, d] holds the final errors of columns b1 .. d-1 (the later columns unchanged since
  // the previous call).
  virtual void ldlq_begin(const float* lf, int64_t rows, int64_t d) = 0;
  virtual void ldlq_accumulate(const float* e, int64_t b0, int64_t b1, float* acc) = 0;
  // sum_ij dw[i, j] (dw h)[i, j] in fp64 (dw [rows, cols], h [cols, cols]).
  virtual double quadratic_form(const float* dw, const float* h, int64_t rows, int64_t cols) = 0;
};
std::unique_ptr<QuipProducts> quip_host_products();
class BlockContext;
// The GPU's products when ctx lives on a CUDA device (null otherwise, and in builds without CUDA).
std::unique_ptr<QuipProducts> quip_products_on(const BlockContext& ctx);

// w: [rows, cols] (rounded to fp16 first); h: sum x x^T / N [cols, cols] fp64. u, v: the
// butterflies (used only when opt.proj). The dequantized weight is quip_dequantize(q) (fp16 values).
// products: where the dense work runs (null: the host).
QuipResult quip_quantize(const float* w, int64_t rows, int64_t cols, const std::vector<double>& h,
                         const QuipOptions& opt, const Butterfly* u, const Butterfly* v, DType dtype,
                         QuipProducts* products = nullptr);

// The LDLQ rounding (vector_balance.py round_ldl) of wt [rows, cols] (grid units) with H
// [cols, cols]: codes [rows, cols].
std::vector<uint8_t> quip_round_ldl(const float* wt, int64_t rows, int64_t cols, const std::vector<float>& h,
                                    int bits, int npasses, QuipProducts* products = nullptr);

// Throws lowbit::Error naming the dimension unless the butterfly can handle it (both factors
// > 1 and <= 1024).
void quip_check_dimension(int64_t n, const std::string& what);

}  // namespace lowbit
