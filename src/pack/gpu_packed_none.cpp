// enable_gpu_packed_linears in a build without the CUDA backend (the CUDA build's is in
// gpu_packed_cuda.cpp).
#include "pack/gpu_packed.h"

#include "core/error.h"

namespace lowbit::pack {

std::string enable_gpu_packed_linears(const LlamaModel&) {
  fail("--packed on a CUDA device needs a build with the CUDA backend");
}

}  // namespace lowbit::pack
