// W4Tiles (pack/w4_tiles.h) on the GPU: uploading one matrix for backend/cuda/w4a16.cuh's GEMM.
#pragma once

#include "backend/cuda/w4a16.cuh"
#include "pack/w4_tiles.h"

#include <string>

namespace lowbit::pack {

inline cuda::W4A16Weight upload_w4_tiles(const W4Tiles& t, const std::string& what, cudaStream_t s) {
  return cuda::upload_w4a16(t.n, t.k, t.group_slots, t.groups, t.codes, t.scales, t.source_col, what.c_str(), s);
}

}  // namespace lowbit::pack
