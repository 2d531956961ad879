// A search over candidate weights of one linear, judged by how far each candidate moves the
// softmax of the linear's output on the calibration inputs (SliM-LLM's bit-allocation search,
// quant/slim.h, step 1b). With X a window's input [T, cols] (fp32), Y = X W^T [T, rows] and
// Z_i = X Q_i^T for candidate i = 1 .. R, where Q_0 = start and Q_i = Q_{i-1} plus the columns
// [c0, c1) of each of candidate i's steps' deltas (the rest of a delta is not read):
//
//   error_i = sum over tokens t of sum over outputs o of p (log p - log q),
//     p = max(softmax(Z_i[t, :])[o], 1e-6),  q = max(softmax(Y[t, :])[o], 1e-6)
//
// (F.kl_div(log q, p, "batchmean") on a batch of one, as the reference calls it). The products
// are fp32 with fp32 accumulation; the softmax, logs and sums are fp64 from the fp32 values.
// Z_i is built by updating Z_{i-1} with each step's rank-(c1 - c0) product, as the host code has
// always done (the order of those fp32 sums is part of the result).
//
// BlockContext::kl_search_errors (calib/block_driver.h) evaluates a set of searches over every
// calibration window wherever the block lives; kl_search_errors below is the host evaluation of
// one window.
#pragma once

#include <cstdint>
#include <vector>

namespace lowbit {

struct KlSearch {
  struct Step {
    int64_t c0 = 0, c1 = 0;        // the columns it changes
    const float* delta = nullptr;  // [rows, cols] row-major; only columns [c0, c1) are read
  };
  int64_t rows = 0, cols = 0;
  const float* w = nullptr;      // [rows, cols] the reference weight
  const float* start = nullptr;  // [rows, cols] Q_0 (not itself scored)
  std::vector<std::vector<Step>> candidates;  // [R]: candidate i's steps, applied in order
};

// error_i for i = 1 .. R on one window's inputs x [tokens, cols] (fp32, host); empty when R = 0.
std::vector<double> kl_search_errors(const KlSearch& s, const float* x, int64_t tokens);

}  // namespace lowbit
