// The first index at which a predicate holds, searched on all cores: validators over every weight
// of a linear name the first offending element, as a serial scan would, at a fraction of its time.
#pragma once

#include <cstdint>
#include <limits>

namespace lowbit {

// The smallest i in [0, n) with bad(i), or -1. bad must be safe to call from several threads;
// `work` (about the elements bad(i) reads) decides whether the search is worth the threads.
template <typename Bad>
int64_t first_index_where(int64_t n, const Bad& bad, int64_t work = 1) {
  int64_t first = std::numeric_limits<int64_t>::max();
#pragma omp parallel for schedule(static) reduction(min : first) if (n > 1 && n * work > (int64_t(1) << 16))
  for (int64_t i = 0; i < n; ++i)
    if (first == std::numeric_limits<int64_t>::max() && bad(i)) first = i;
  return first < n ? first : -1;
}

}  // namespace lowbit
