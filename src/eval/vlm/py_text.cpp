#include "eval/vlm/py_text.h"

#include "core/utf8.h"

#include <cmath>
#include <cstdlib>

namespace lowbit::vlm {

bool py_isspace(uint32_t cp) {
  if (cp == ' ' || (cp >= 0x09 && cp <= 0x0d) || (cp >= 0x1c && cp <= 0x1f)) return true;
  return cp == 0x85 || cp == 0xa0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200a) || cp == 0x2028 ||
         cp == 0x2029 || cp == 0x202f || cp == 0x205f || cp == 0x3000;
}

bool py_isalpha(uint32_t cp) {
  if (cp < 0x80) return (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z');
  if (cp == 0xaa || cp == 0xb5 || cp == 0xba) return true;
  if (cp >= 0xc0 && cp <= 0x24f) return cp != 0xd7 && cp != 0xf7;
  if (cp >= 0x370 && cp <= 0x3ff) return cp != 0x375 && cp != 0x37e && cp != 0x384 && cp != 0x385 && cp != 0x387;
  if (cp >= 0x400 && cp <= 0x481) return true;
  if (cp >= 0x48a && cp <= 0x52f) return true;
  if (cp >= 0x3041 && cp <= 0x3096) return true;  // hiragana
  if (cp >= 0x30a1 && cp <= 0x30fa) return true;  // katakana
  if (cp >= 0x4e00 && cp <= 0x9fff) return true;  // CJK unified ideographs
  if (cp >= 0xac00 && cp <= 0xd7a3) return true;  // Hangul syllables
  return false;
}

namespace {

// Length of the well-formed sequence at s[i] (> 0), or minus the length of its maximal
// ill-formed subpart (the lead byte and the continuation bytes that could still have completed it).
int64_t utf8_step(std::string_view s, size_t i) {
  const auto b = [&](size_t k) { return i + k < s.size() ? uint8_t(s[i + k]) : uint8_t(0); };
  const uint8_t c = b(0);
  if (c < 0x80) return 1;
  int n = 0;
  uint8_t lo = 0x80, hi = 0xbf;  // the range of the second byte
  if (c >= 0xc2 && c <= 0xdf) n = 2;
  else if (c == 0xe0) n = 3, lo = 0xa0;
  else if ((c >= 0xe1 && c <= 0xec) || c == 0xee || c == 0xef) n = 3;
  else if (c == 0xed) n = 3, hi = 0x9f;
  else if (c == 0xf0) n = 4, lo = 0x90;
  else if (c >= 0xf1 && c <= 0xf3) n = 4;
  else if (c == 0xf4) n = 4, hi = 0x8f;
  else return -1;
  for (int k = 1; k < n; ++k) {
    const uint8_t x = b(size_t(k));
    const bool ok = i + size_t(k) < s.size() && (k == 1 ? (x >= lo && x <= hi) : (x >= 0x80 && x <= 0xbf));
    if (!ok) return -k;
  }
  return n;
}

}  // namespace

std::string utf8_lossy(std::string_view s) {
  std::string out;
  size_t i = 0;
  while (i < s.size()) {
    const int64_t n = utf8_step(s, i);
    if (n > 0) {
      out.append(s.substr(i, size_t(n)));
      i += size_t(n);
    } else {
      out.append("\xEF\xBF\xBD");
      i += size_t(-n);
    }
  }
  return out;
}

std::u32string to_u32(std::string_view s) {
  const std::string v = utf8_lossy(s);
  std::u32string out;
  size_t i = 0;
  while (i < v.size()) out.push_back(utf8_next(v, i));
  return out;
}

std::string to_utf8(std::u32string_view s) {
  std::string out;
  for (char32_t c : s) utf8_append(out, uint32_t(c));
  return out;
}

std::string py_strip(std::string_view s) {
  const std::u32string u = to_u32(s);
  size_t b = 0, e = u.size();
  while (b < e && py_isspace(u[b])) ++b;
  while (e > b && py_isspace(u[e - 1])) --e;
  return to_utf8(std::u32string_view(u).substr(b, e - b));
}

std::string py_strip_chars(std::string_view s, std::string_view chars) {
  size_t b = 0, e = s.size();
  while (b < e && chars.find(s[b]) != std::string_view::npos) ++b;
  while (e > b && chars.find(s[e - 1]) != std::string_view::npos) --e;
  return std::string(s.substr(b, e - b));
}

std::string py_rstrip_chars(std::string_view s, std::string_view chars) {
  size_t e = s.size();
  while (e > 0 && chars.find(s[e - 1]) != std::string_view::npos) --e;
  return std::string(s.substr(0, e));
}

std::vector<std::string> py_split(std::string_view s) {
  const std::u32string u = to_u32(s);
  std::vector<std::string> out;
  size_t i = 0;
  while (i < u.size()) {
    while (i < u.size() && py_isspace(u[i])) ++i;
    if (i == u.size()) break;
    size_t j = i;
    while (j < u.size() && !py_isspace(u[j])) ++j;
    out.push_back(to_utf8(std::u32string_view(u).substr(i, j - i)));
    i = j;
  }
  return out;
}

namespace {

uint32_t lower_cp(uint32_t cp) {
  if (cp >= 'A' && cp <= 'Z') return cp + 32;
  if (cp < 0xc0) return cp;
  if (cp <= 0xde) return cp == 0xd7 ? cp : cp + 32;
  if (cp >= 0x100 && cp <= 0x137) return (cp % 2 == 0 && cp != 0x130) ? cp + 1 : cp;
  if (cp >= 0x139 && cp <= 0x148) return cp % 2 == 1 ? cp + 1 : cp;
  if (cp >= 0x14a && cp <= 0x177) return cp % 2 == 0 ? cp + 1 : cp;
  if (cp == 0x178) return 0xff;
  if (cp >= 0x179 && cp <= 0x17e) return cp % 2 == 1 ? cp + 1 : cp;
  if (cp == 0x386) return 0x3ac;
  if (cp >= 0x388 && cp <= 0x38a) return cp + 37;
  if (cp == 0x38c) return 0x3cc;
  if (cp == 0x38e || cp == 0x38f) return cp + 63;
  if (cp >= 0x391 && cp <= 0x3ab) return cp == 0x3a2 ? cp : cp + 32;
  if (cp >= 0x400 && cp <= 0x40f) return cp + 80;
  if (cp >= 0x410 && cp <= 0x42f) return cp + 32;
  return cp;
}

}  // namespace

std::string py_lower(std::string_view s) {
  std::string out(s);
  bool ascii = true;
  for (char& c : out) {
    if (c >= 'A' && c <= 'Z') c = char(c - 'A' + 'a');
    if (static_cast<unsigned char>(c) >= 0x80) ascii = false;
  }
  if (ascii) return out;
  std::u32string u = to_u32(s);
  for (char32_t& c : u) c = lower_cp(uint32_t(c));
  return to_utf8(u);
}

std::string py_replace(std::string_view s, std::string_view from, std::string_view to) {
  if (from.empty()) return std::string(s);  // not reached by the benchmarks' code
  std::string out;
  size_t i = 0;
  for (;;) {
    const size_t j = s.find(from, i);
    if (j == std::string_view::npos) break;
    out.append(s.substr(i, j - i));
    out.append(to);
    i = j + from.size();
  }
  out.append(s.substr(i));
  return out;
}

bool contains(std::string_view s, std::string_view part) { return s.find(part) != std::string_view::npos; }

namespace {

// Digits with single underscores between them ("1_000"), as Python's float() accepts; appends
// the digits to out and returns the count consumed, or -1 when an underscore is misplaced.
int64_t digit_run(std::string_view s, size_t& i, std::string& out) {
  const size_t start = i;
  while (i < s.size()) {
    const char c = s[i];
    if (c >= '0' && c <= '9') {
      out.push_back(c);
      ++i;
    } else if (c == '_' && i > start && i + 1 < s.size() && s[i - 1] >= '0' && s[i - 1] <= '9' && s[i + 1] >= '0' &&
               s[i + 1] <= '9') {
      ++i;
    } else {
      break;
    }
  }
  if (i < s.size() && s[i] == '_') return -1;
  return int64_t(i - start);
}

}  // namespace

std::optional<double> py_float(std::string_view text) {
  const std::string t = py_strip(text);
  std::string_view s = t;
  std::string clean;
  size_t i = 0;
  if (i < s.size() && (s[i] == '+' || s[i] == '-')) clean.push_back(s[i++]);
  const std::string word = py_lower(s.substr(i));
  if (word == "inf" || word == "infinity") return clean == "-" ? -INFINITY : INFINITY;
  if (word == "nan") return NAN;
  const int64_t a = digit_run(s, i, clean);
  if (a < 0) return std::nullopt;
  int64_t b = 0;
  if (i < s.size() && s[i] == '.') {
    clean.push_back('.');
    ++i;
    b = digit_run(s, i, clean);
    if (b < 0) return std::nullopt;
  }
  if (a + b == 0) return std::nullopt;
  if (i < s.size() && (s[i] == 'e' || s[i] == 'E')) {
    clean.push_back('e');
    ++i;
    if (i < s.size() && (s[i] == '+' || s[i] == '-')) clean.push_back(s[i++]);
    const int64_t e = digit_run(s, i, clean);
    if (e <= 0) return std::nullopt;
  }
  if (i != s.size()) return std::nullopt;
  // strtod reads the validated text; its rounding is correct (glibc), as CPython's is.
  return std::strtod(clean.c_str(), nullptr);
}

}  // namespace lowbit::vlm
