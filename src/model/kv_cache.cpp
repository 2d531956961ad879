#include "model/kv_cache.h"

#include "core/error.h"

namespace lowbit {

void KvPositions::truncate(int64_t n) {
  LB_CHECK(n >= 0 && n <= length, "KV cache: cannot truncate {} positions to {}", length, n);
  length = n;
}

void KvPositions::check_room(int64_t T) const {
  LB_CHECK(length + T <= capacity, "KV cache holds {} positions; {} + {} do not fit", capacity, length, T);
}

void KvPositions::check_capacity(int64_t capacity, int64_t context) {
  LB_CHECK(capacity > 0 && capacity <= context, "KV cache of {} positions: the model's context is {}", capacity,
           context);
}

}  // namespace lowbit
