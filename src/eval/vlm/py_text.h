// Python str semantics the benchmarks' scoring code relies on, on UTF-8 strings: whitespace,
// strip/split, lower/upper, isalpha, len (code points) and float().
//
// Whitespace is Python's str.isspace() set (ASCII \t\n\v\f\r, \x1c-\x1f and space, and the
// Unicode spaces U+0085, U+00A0, U+1680, U+2000-U+200A, U+2028, U+2029, U+202F, U+205F, U+3000).
// lower() maps the capitals of ASCII, Latin-1, Latin Extended-A (but U+0130, which Python lowers
// to two code points), basic Greek (with its tonos capitals) and basic Cyrillic, as Python does;
// capitals of other scripts are left as they are. isalpha is exact for ASCII and
// covers the common letter blocks beyond it (Latin-1 and Latin Extended, Greek, Cyrillic, CJK
// ideographs, kana, Hangul).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace lowbit::vlm {

bool py_isspace(uint32_t cp);
bool py_isalpha(uint32_t cp);
// Invalid UTF-8 replaced by U+FFFD, one per maximal ill-formed subpart (Unicode's recommended
// practice, which Rust's String::from_utf8_lossy and so the tokenizers library's decode follow).
std::string utf8_lossy(std::string_view s);
std::u32string to_u32(std::string_view s);  // as utf8_lossy decodes it
std::string to_utf8(std::u32string_view s);

std::string py_strip(std::string_view s);                       // str.strip()
std::string py_strip_chars(std::string_view s, std::string_view chars);   // str.strip(chars), ASCII chars
std::string py_rstrip_chars(std::string_view s, std::string_view chars);  // str.rstrip(chars), ASCII chars
std::vector<std::string> py_split(std::string_view s);          // str.split()
std::string py_lower(std::string_view s);
std::string py_replace(std::string_view s, std::string_view from, std::string_view to);  // str.replace
bool contains(std::string_view s, std::string_view part);
// float(text): surrounding whitespace, sign, digits with single underscores between them, a
// decimal point, an exponent, inf/infinity/nan in any case; nullopt where Python raises ValueError.
std::optional<double> py_float(std::string_view text);

}  // namespace lowbit::vlm
