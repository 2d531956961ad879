#include "model/llava_prompt.h"

#include "core/error.h"

namespace lowbit {

const char* const kLlavaLlama3System =
    "You are a helpful language and vision assistant. You are able to understand the visual content that the user "
    "provides, and assist the user with a variety of tasks using natural language.";

namespace {

// Jinja's trim is Python's str.strip(): Unicode whitespace at both ends. ASCII whitespace and the
// two-byte and three-byte UTF-8 spaces a prompt plausibly holds (NBSP, U+2000-U+200A, U+3000...)
// are stripped; exotic separators are not.
bool space_at(std::string_view s, size_t i, size_t* len) {
  const unsigned char c = static_cast<unsigned char>(s[i]);
  if (c == ' ' || (c >= '\t' && c <= '\r') || (c >= 0x1c && c <= 0x1f)) return *len = 1, true;
  if (c == 0xC2 && i + 1 < s.size() && (static_cast<unsigned char>(s[i + 1]) == 0x85 ||
                                        static_cast<unsigned char>(s[i + 1]) == 0xA0))
    return *len = 2, true;
  if (c == 0xE2 && i + 2 < s.size()) {
    const unsigned char b = static_cast<unsigned char>(s[i + 1]), d = static_cast<unsigned char>(s[i + 2]);
    if ((b == 0x80 && (d <= 0x8A || d == 0xA8 || d == 0xA9 || d == 0xAF)) || (b == 0x81 && d == 0x9F))
      return *len = 3, true;
  }
  if (c == 0xE3 && i + 2 < s.size() && static_cast<unsigned char>(s[i + 1]) == 0x80 &&
      static_cast<unsigned char>(s[i + 2]) == 0x80)
    return *len = 3, true;
  return false;
}

std::string_view trim(std::string_view s) {
  size_t n = 0;
  while (!s.empty() && space_at(s, 0, &n)) s.remove_prefix(n);
  // From the end: find the last character start that is not a space.
  for (;;) {
    bool cut = false;
    for (size_t len = 1; len <= 3 && len <= s.size(); ++len) {
      if (space_at(s, s.size() - len, &n) && n == len) {
        s.remove_suffix(len);
        cut = true;
        break;
      }
    }
    if (!cut) return s;
  }
}

void turn(std::string& out, std::string_view role, std::string_view content) {
  out += "<|start_header_id|>";
  out += role;
  out += "<|end_header_id|>\n\n";
  out += trim(content);
  out += "<|eot_id|>";
}

}  // namespace

std::string llava_llama3_prompt(std::string_view question, int64_t n_images, std::string_view system) {
  LB_CHECK(n_images >= 0, "llava_llama3_prompt: {} images", n_images);
  std::string user;
  for (int64_t i = 0; i < n_images; ++i) {
    user += kImagePlaceholder;
    user += '\n';
  }
  user += question;
  std::string out = "<|begin_of_text|>";
  turn(out, "system", system);
  turn(out, "user", user);
  out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
  return out;
}

std::vector<int32_t> tokenize_with_images(const Tokenizer& tok, std::string_view prompt,
                                          std::span<const int64_t> counts, int32_t image_token_id) {
  std::vector<int32_t> ids;
  size_t image = 0, pos = 0;
  for (;;) {
    const size_t at = prompt.find(kImagePlaceholder, pos);
    const std::string_view piece = prompt.substr(pos, at == std::string_view::npos ? std::string_view::npos : at - pos);
    if (!piece.empty()) {
      const auto part = tok.encode(piece, BosMode::Off);
      ids.insert(ids.end(), part.begin(), part.end());
    }
    if (at == std::string_view::npos) break;
    LB_CHECK(image < counts.size(), "prompt has more than {} {} placeholders (one per image)", counts.size(),
             kImagePlaceholder);
    ids.insert(ids.end(), size_t(counts[image]), image_token_id);
    ++image;
    pos = at + kImagePlaceholder.size();
  }
  LB_CHECK(image == counts.size(), "prompt has {} {} placeholders for {} images", image, kImagePlaceholder,
           counts.size());
  return ids;
}

}  // namespace lowbit
