#include "formats/bpe.h"

#include <climits>
#include <queue>

namespace lowbit {

void BpeMerges::reserve(size_t n) {
  size_t cap = 16;
  while (cap < 2 * n) cap <<= 1;
  if (cap <= slots_.size()) return;
  std::vector<Slot> old = std::move(slots_);
  slots_.assign(cap, Slot{});
  mask_ = cap - 1;
  count_ = 0;
  for (const Slot& s : old)
    if (s.key != kEmpty) add(int32_t(s.key >> 32), int32_t(uint32_t(s.key)), s.hit.rank, s.hit.merged);
}

void BpeMerges::grow() { reserve(slots_.empty() ? 16 : slots_.size()); }

void BpeMerges::add(int32_t a, int32_t b, int32_t rank, int32_t merged) {
  if (2 * (count_ + 1) > slots_.size()) grow();
  const uint64_t key = pack(a, b);
  for (size_t i = hash(key) & mask_;; i = (i + 1) & mask_) {
    Slot& s = slots_[i];
    if (s.key == key) return;
    if (s.key == kEmpty) {
      s.key = key;
      s.hit = {rank, merged};
      ++count_;
      return;
    }
  }
}

void BpeMerges::apply(std::vector<int32_t>& sym) const {
  const size_t n = sym.size();
  if (n < 2) return;
  if (n <= 16) {
    // Short words (almost all of them): a direct scan beats the heap.
    size_t len = n;
    while (true) {
      int32_t best_rank = INT32_MAX, best_id = -1;
      size_t best = 0;
      for (size_t i = 0; i + 1 < len; ++i) {
        const Hit* h = find(sym[i], sym[i + 1]);
        if (h && h->rank < best_rank) {
          best_rank = h->rank;
          best_id = h->merged;
          best = i;
        }
      }
      if (best_id < 0) break;
      sym[best] = best_id;
      for (size_t i = best + 1; i + 1 < len; ++i) sym[i] = sym[i + 1];
      --len;
    }
    sym.resize(len);
    return;
  }
  // Long words: a doubly linked list of symbols and a min-heap of candidate merges ordered by
  // (rank, position). A popped candidate is stale when its left symbol is gone or the pair no
  // longer yields the same merged id.
  std::vector<int32_t> prev(n), next(n);
  std::vector<char> alive(n, 1);
  for (size_t i = 0; i < n; ++i) {
    prev[i] = int32_t(i) - 1;
    next[i] = i + 1 < n ? int32_t(i + 1) : -1;
  }
  struct Cand { int32_t rank; int32_t pos; int32_t merged; };
  auto cmp = [](const Cand& x, const Cand& y) { return x.rank != y.rank ? x.rank > y.rank : x.pos > y.pos; };
  std::priority_queue<Cand, std::vector<Cand>, decltype(cmp)> heap(cmp);
  for (size_t i = 0; i + 1 < n; ++i)
    if (const Hit* h = find(sym[i], sym[i + 1])) heap.push({h->rank, int32_t(i), h->merged});
  while (!heap.empty()) {
    Cand c = heap.top();
    heap.pop();
    if (!alive[size_t(c.pos)]) continue;
    const int32_t r = next[size_t(c.pos)];
    if (r < 0) continue;
    const Hit* h = find(sym[size_t(c.pos)], sym[size_t(r)]);
    if (!h || h->merged != c.merged) continue;
    sym[size_t(c.pos)] = c.merged;
    alive[size_t(r)] = 0;
    next[size_t(c.pos)] = next[size_t(r)];
    if (next[size_t(r)] >= 0) prev[size_t(next[size_t(r)])] = c.pos;
    if (const int32_t l = prev[size_t(c.pos)]; l >= 0)
      if (const Hit* hl = find(sym[size_t(l)], sym[size_t(c.pos)])) heap.push({hl->rank, l, hl->merged});
    if (const int32_t nr = next[size_t(c.pos)]; nr >= 0)
      if (const Hit* hr = find(sym[size_t(c.pos)], sym[size_t(nr)])) heap.push({hr->rank, c.pos, hr->merged});
  }
  size_t out = 0;
  for (int32_t i = 0; i >= 0; i = next[size_t(i)]) sym[out++] = sym[size_t(i)];
  sym.resize(out);
}

}  // namespace lowbit
