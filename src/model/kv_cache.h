// The positions a KV cache holds, whatever device its buffers live on. KvCache (llama_model.h:
// host, fp32) and GpuKvCache (cuda_model.h: GPU, bf16) add the per-layer keys (after RoPE) and
// values, [layers][capacity * kv_dim] each. A cached forward checks room for its T positions,
// appends them at `length` in every block (the block's Attention step, model/llama_block.h) and
// advances `length` after the last block; truncate() forgets positions, so that several
// continuations of one prefix can be scored from the same cache.
#pragma once

#include <cstdint>

namespace lowbit {

struct KvPositions {
  int64_t length = 0;    // positions held
  int64_t capacity = 0;  // positions the buffers hold at most

  // Forgets every position from n on; throws unless 0 <= n <= length.
  void truncate(int64_t n);
  // Throws unless T more positions fit.
  void check_room(int64_t T) const;
  // Throws unless a cache of `capacity` positions fits a model whose context is `context`.
  static void check_capacity(int64_t capacity, int64_t context);
};

}  // namespace lowbit
