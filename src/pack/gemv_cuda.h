// GemvPacked (pack/gemv_pack.h) on the GPU: uploading one matrix for backend/cuda/gemv_lowbit.cuh.
#pragma once

#include "backend/cuda/gemv_lowbit.cuh"
#include "pack/gemv_pack.h"

#include <string>

namespace lowbit::pack {

inline cuda::GemvWeight upload_gemv_packed(const GemvPacked& p, const std::string& what, cudaStream_t s) {
  return cuda::upload_gemv(p.n, p.k, p.bits, p.kind == gemv::Kind::Codebook, p.group_size, p.codes, p.scales,
                           p.codebook, what.c_str(), s);
}

}  // namespace lowbit::pack
