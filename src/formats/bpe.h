// Byte-pair-encoding merge engine: a word (a sequence of initial symbol ids) is merged pair by
// pair, always taking the adjacent pair of lowest merge rank and, among equal ranks, the
// leftmost, until no adjacent pair has a merge. This is the order of Hugging Face tokenizers'
// BPE (a heap of (rank, position)) and of SentencePiece BPE (a merge's rank is the merged
// piece's score order).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace lowbit {

class BpeMerges {
 public:
  // Registers merge (a, b) -> merged with priority `rank` (lower merges first). A later
  // registration of the same pair is ignored (the first, lowest rank, wins).
  void add(int32_t a, int32_t b, int32_t rank, int32_t merged);
  void reserve(size_t n);
  size_t size() const { return count_; }
  struct Hit { int32_t rank, merged; };
  // nullptr when (a, b) does not merge.
  const Hit* find(int32_t a, int32_t b) const {
    if (slots_.empty()) return nullptr;
    const uint64_t key = pack(a, b);
    for (size_t i = hash(key) & mask_;; i = (i + 1) & mask_) {
      const Slot& s = slots_[i];
      if (s.key == key) return &s.hit;
      if (s.key == kEmpty) return nullptr;
    }
  }
  // Merges `symbols` in place.
  void apply(std::vector<int32_t>& symbols) const;

 private:
  static constexpr uint64_t kEmpty = ~uint64_t(0);
  static uint64_t pack(int32_t a, int32_t b) { return (uint64_t(uint32_t(a)) << 32) | uint32_t(b); }
  static size_t hash(uint64_t k) {
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    return size_t(k);
  }
  struct Slot { uint64_t key = kEmpty; Hit hit{}; };
  void grow();
  std::vector<Slot> slots_;
  size_t mask_ = 0, count_ = 0;
};

}  // namespace lowbit
