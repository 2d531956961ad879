#include "backend/cuda/packed_weight.cuh"

namespace lowbit::cuda {

int64_t PackedWeight::n() const {
  return std::visit([](const auto& x) { return x.n; }, w);
}

int64_t PackedWeight::k() const {
  return std::visit([](const auto& x) { return x.k; }, w);
}

std::string PackedWeight::layout() const {
  if (std::holds_alternative<W4A16Weight>(w)) return "w4a16";
  const GemvWeight& g = std::get<GemvWeight>(w);
  return std::string("gemv-") + (g.codebook ? "codebook" : "int") + std::to_string(g.bits);
}

size_t PackedWeight::bytes() const {
  if (const auto* t = std::get_if<W4A16Weight>(&w))
    return (t->codes.size() + t->scales.size()) * 4 + t->source_col.size() * 4;
  return std::get<GemvWeight>(w).bytes();
}

void packed_linear(const PackedWeight& w, const bf16* A, bf16* C, int64_t M, W4A16Workspace& ws, cudaStream_t s,
                   int64_t lda, int64_t ldc) {
  if (const auto* t = std::get_if<W4A16Weight>(&w.w)) w4a16_linear(*t, A, C, M, ws, s, lda, ldc);
  else gemv_linear(std::get<GemvWeight>(w.w), A, C, M, ws, s, lda, ldc);
}

void packed_linear_accumulate(const PackedWeight& w, const bf16* A, float* C, int64_t M, W4A16Workspace& ws,
                              cudaStream_t s, int64_t lda, int64_t ldc) {
  if (const auto* t = std::get_if<W4A16Weight>(&w.w)) w4a16_linear_accumulate(*t, A, C, M, ws, s, lda, ldc);
  else gemv_linear_accumulate(std::get<GemvWeight>(w.w), A, C, M, ws, s, lda, ldc);
}

}  // namespace lowbit::cuda
