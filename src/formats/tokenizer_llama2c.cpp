// llama2.c tokenizer.bin / tok512.bin (karpathy/llama2.c, run.c):
//   i32 max_token_length, then per token: f32 score, i32 len, len bytes (no terminator).
// The vocabulary size is the number of records. Encoding follows run.c's encode(): a dummy-prefix
// " " token, one token per UTF-8 character (raw bytes as <0xNN> tokens when the character is
// not in the vocabulary), then repeated merging of the adjacent pair whose concatenation has the
// highest score (leftmost on ties), anywhere in the text (run.c has no pre-tokenization).
#include "formats/tokenizer.h"

#include "core/error.h"
#include "core/mapped_file.h"
#include "core/utf8.h"

#include <cstring>
#include <queue>
#include <unordered_map>

namespace lowbit {

namespace {

class Llama2cTokenizer final : public Tokenizer {
 public:
  Llama2cTokenizer(const std::string& path);

  std::string kind() const override { return "llama2.c (tokenizer.bin)"; }
  std::string decode(std::span<const int32_t> ids) const override {
    std::string out;
    for (int32_t id : ids) {
      LB_CHECK(id >= 0 && id < vocab_size(), "cannot decode token id {}: vocabulary size is {}", id, vocab_size());
      if (id == kBos || id == kEos) continue;
      const std::string& p = pieces_[size_t(id)];
      unsigned int byte = 0;
      if (p.size() == 6 && std::sscanf(p.c_str(), "<0x%02X>", &byte) == 1) out += char(byte);
      else out += p;
    }
    // The encoder's dummy prefix.
    if (!out.empty() && out[0] == ' ') out.erase(0, 1);
    return out;
  }
  int32_t vocab_size() const override { return int32_t(pieces_.size()); }
  std::optional<int32_t> bos_id() const override { return kBos; }
  std::optional<int32_t> eos_id() const override { return kEos; }
  bool adds_bos_by_default() const override { return true; }
  std::vector<SpecialToken> special_tokens() const override {
    return {{0, pieces_[0], "unk"}, {kBos, pieces_[kBos], "bos"}, {kEos, pieces_[kEos], "eos"}};
  }
  std::string token_text(int32_t id) const override {
    LB_CHECK(id >= 0 && id < vocab_size(), "token id {} is outside the vocabulary (size {})", id, vocab_size());
    return pieces_[size_t(id)];
  }

 protected:
  std::vector<int32_t> encode_plain(std::string_view text) const override;
  std::vector<int32_t> add_default_specials(std::vector<int32_t> ids) const override {
    ids.insert(ids.begin(), kBos);
    return ids;
  }

 private:
  static constexpr int32_t kBos = 1, kEos = 2;  // llama2.c's fixed ids
  int32_t lookup(const std::string& s) const {
    auto it = ids_.find(s);
    return it == ids_.end() ? -1 : it->second;
  }
  std::vector<std::string> pieces_;
  std::vector<float> scores_;
  std::unordered_map<std::string, int32_t> ids_;
  int32_t byte_ids_[256];
};

Llama2cTokenizer::Llama2cTokenizer(const std::string& path) {
  auto f = MappedFile::open(path);
  const uint8_t* p = f->data();
  const size_t n = f->size();
  LB_CHECK(n >= 4, "llama2.c tokenizer '{}': file is {} bytes, too short for its header", path, n);
  int32_t max_len;
  std::memcpy(&max_len, p, 4);
  LB_CHECK(max_len > 0 && max_len < (1 << 20), "llama2.c tokenizer '{}': implausible max_token_length {}", path,
           max_len);
  size_t pos = 4;
  while (pos < n) {
    LB_CHECK(n - pos >= 8, "llama2.c tokenizer '{}': record {} is truncated at byte {}", path, pieces_.size(), pos);
    float score;
    int32_t len;
    std::memcpy(&score, p + pos, 4);
    std::memcpy(&len, p + pos + 4, 4);
    pos += 8;
    LB_CHECK(len >= 0 && len <= max_len, "llama2.c tokenizer '{}': record {} has length {} (max_token_length {})",
             path, pieces_.size(), len, max_len);
    LB_CHECK(n - pos >= size_t(len), "llama2.c tokenizer '{}': record {} runs past the end of the file", path,
             pieces_.size());
    pieces_.emplace_back(reinterpret_cast<const char*>(p + pos), size_t(len));
    scores_.push_back(score);
    pos += size_t(len);
  }
  LB_CHECK(pieces_.size() > 3, "llama2.c tokenizer '{}': only {} tokens", path, pieces_.size());
  for (size_t i = 0; i < pieces_.size(); ++i) ids_.emplace(pieces_[i], int32_t(i));  // first id wins
  for (int b = 0; b < 256; ++b) byte_ids_[b] = lookup(fmt::format("<0x{:02X}>", b));
}

std::vector<int32_t> Llama2cTokenizer::encode_plain(std::string_view text) const {
  const size_t bad = utf8_find_invalid(text);
  LB_CHECK(bad == std::string_view::npos, "text is not valid UTF-8 (byte {} of {})", bad, text.size());
  std::vector<int32_t> t;
  if (text.empty()) return t;
  const int32_t space = lookup(" ");
  LB_CHECK(space >= 0, "llama2.c tokenizer has no ' ' token for the dummy prefix");
  t.push_back(space);
  for (size_t i = 0; i < text.size();) {
    const size_t len = utf8_len(static_cast<unsigned char>(text[i]));
    const std::string ch(text.substr(i, len));
    i += len;
    if (int32_t id = lookup(ch); id >= 0) {
      t.push_back(id);
      continue;
    }
    for (unsigned char c : ch) {
      LB_CHECK(byte_ids_[c] >= 0, "llama2.c tokenizer cannot represent byte 0x{:02X}", int(c));
      t.push_back(byte_ids_[c]);
    }
  }
  // run.c merges, again and again, the adjacent pair of highest score (strictly above -1e10;
  // the leftmost on ties) anywhere in the text. The same order comes out of a heap of candidate
  // pairs keyed by (score, leftmost start), with entries invalidated when a merge changes
  // either side: O(n log n) instead of run.c's quadratic rescans.
  struct Node {
    int32_t id;
    int64_t prev, next;
  };
  struct Cand {
    float score;
    int64_t left, right;  // node indices; `left` is also the position order
    int32_t left_id, right_id, merged;
  };
  auto worse = [](const Cand& a, const Cand& b) { return a.score < b.score || (a.score == b.score && a.left > b.left); };
  std::vector<Node> nodes(t.size());
  for (size_t i = 0; i < t.size(); ++i) nodes[i] = {t[i], int64_t(i) - 1, i + 1 < t.size() ? int64_t(i) + 1 : -1};
  std::priority_queue<Cand, std::vector<Cand>, decltype(worse)> heap(worse);
  std::string buf;
  auto consider = [&](int64_t l) {
    if (l < 0 || nodes[size_t(l)].next < 0) return;
    const int64_t r = nodes[size_t(l)].next;
    buf = pieces_[size_t(nodes[size_t(l)].id)];
    buf += pieces_[size_t(nodes[size_t(r)].id)];
    const int32_t id = lookup(buf);
    if (id >= 0 && scores_[size_t(id)] > -1e10f)
      heap.push({scores_[size_t(id)], l, r, nodes[size_t(l)].id, nodes[size_t(r)].id, id});
  };
  for (size_t i = 0; i + 1 < t.size(); ++i) consider(int64_t(i));
  while (!heap.empty()) {
    const Cand c = heap.top();
    heap.pop();
    Node& l = nodes[size_t(c.left)];
    if (l.id < 0 || l.next != c.right || l.id != c.left_id || nodes[size_t(c.right)].id != c.right_id) continue;
    Node& r = nodes[size_t(c.right)];
    l.id = c.merged;
    l.next = r.next;
    if (r.next >= 0) nodes[size_t(r.next)].prev = c.left;
    r.id = -1;  // removed
    consider(l.prev);
    consider(c.left);
  }
  std::vector<int32_t> out;
  for (int64_t i = 0; i >= 0; i = nodes[size_t(i)].next) out.push_back(nodes[size_t(i)].id);
  return out;
}

}  // namespace

std::unique_ptr<Tokenizer> load_llama2c_tokenizer(const std::string& path) {
  return std::make_unique<Llama2cTokenizer>(path);
}

}  // namespace lowbit
