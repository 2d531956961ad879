#include "formats/text_datasets.h"

#include "core/error.h"

namespace lowbit {

namespace {

bool is_py_space(unsigned char c) { return c == ' ' || (c >= '\t' && c <= '\r') || (c >= 0x1c && c <= 0x1f); }

// Python's str.strip() for the ASCII whitespace these files contain.
std::string_view strip(std::string_view s) {
  size_t b = 0, e = s.size();
  while (b < e && is_py_space(static_cast<unsigned char>(s[b]))) ++b;
  while (e > b && is_py_space(static_cast<unsigned char>(s[e - 1]))) --e;
  return s.substr(b, e - b);
}

// Lines with their terminating "\n" (the last line may lack one), as Python iterates a file
// opened with newline="" would, except that only "\n" ends a line (these files use "\n").
std::vector<std::string_view> lines_keep_ends(std::string_view raw) {
  std::vector<std::string_view> out;
  size_t pos = 0;
  while (pos < raw.size()) {
    size_t nl = raw.find('\n', pos);
    size_t end = nl == std::string_view::npos ? raw.size() : nl + 1;
    out.push_back(raw.substr(pos, end - pos));
    pos = end;
  }
  return out;
}

}  // namespace

std::vector<std::string> wikitext_rows(std::string_view raw) {
  std::vector<std::string> rows;
  for (std::string_view line : lines_keep_ends(raw))
    rows.emplace_back(strip(line).empty() ? std::string_view() : line);
  return rows;
}

std::vector<std::string> ptb_rows(std::string_view raw) {
  std::vector<std::string> rows;
  for (std::string_view line : lines_keep_ends(raw)) rows.emplace_back(strip(line));
  return rows;
}

std::string join(const std::vector<std::string>& rows, std::string_view sep) {
  size_t n = 0;
  for (const auto& r : rows) n += r.size() + sep.size();
  std::string out;
  out.reserve(n);
  for (size_t i = 0; i < rows.size(); ++i) {
    if (i) out += sep;
    out += rows[i];
  }
  return out;
}

std::vector<std::vector<std::string>> parse_csv(std::string_view t, const std::string& what,
                                               std::vector<size_t>* row_lines) {
  std::vector<std::vector<std::string>> rows;
  std::vector<std::string> row;
  std::string field;
  size_t i = 0, line = 1, row_line = 1;
  bool quoted = false, field_started = false, after_quote = false;
  auto end_field = [&] {
    row.push_back(std::move(field));
    field.clear();
    field_started = after_quote = false;
  };
  auto end_row = [&] {
    end_field();
    if (row_lines) row_lines->push_back(row_line);
    rows.push_back(std::move(row));
    row.clear();
    row_line = line;
  };
  while (i < t.size()) {
    const char c = t[i];
    if (quoted) {
      if (c == '"') {
        if (i + 1 < t.size() && t[i + 1] == '"') {
          field += '"';
          i += 2;
          continue;
        }
        quoted = false;
        after_quote = true;
        ++i;
        continue;
      }
      if (c == '\n') ++line;
      field += c;
      ++i;
      continue;
    }
    if (c == '"' && !field_started) {
      quoted = true;
      field_started = true;
      ++i;
      continue;
    }
    if (c == ',') {
      end_field();
      ++i;
      continue;
    }
    if (c == '\r' && i + 1 < t.size() && t[i + 1] == '\n') {
      ++i;
      continue;
    }
    if (c == '\n') {
      ++line;
      ++i;
      if (row.empty() && !field_started) {  // a blank line: Python yields []
        if (row_lines) row_lines->push_back(row_line);
        rows.emplace_back();
        row_line = line;
      } else {
        end_row();
      }
      continue;
    }
    // Python's csv (strict=False) keeps characters after a closing quote.
    (void)after_quote;
    field += c;
    field_started = true;
    ++i;
  }
  LB_CHECK(!quoted, "{}: line {}: quoted field is not closed before the end of the file", what, row_line);
  if (field_started || !row.empty()) end_row();
  return rows;
}

}  // namespace lowbit
