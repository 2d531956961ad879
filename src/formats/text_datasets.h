// The text of the evaluation and calibration sets, assembled exactly as the reference code does
// (PROTOCOL.md): Hugging Face `datasets` rows, then GPTQ's joins.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace lowbit {

// wikitext-2-raw-v1 rows from a wiki.*.raw file: each line with its "\n" kept, whitespace-only
// lines as "" (the `datasets` loader's rows).
std::vector<std::string> wikitext_rows(std::string_view raw);
// ptb_text_only rows from ptb.*.txt: each line stripped of surrounding whitespace.
std::vector<std::string> ptb_rows(std::string_view raw);
std::string join(const std::vector<std::string>& rows, std::string_view sep);

// RFC 4180 CSV as Python's csv.reader reads it (quoted fields with "" escapes and embedded
// newlines; \r\n or \n row ends). `what` names the file in errors (malformed quoting, with line).
// row_lines, when given, receives the line on which each row starts.
std::vector<std::vector<std::string>> parse_csv(std::string_view text, const std::string& what,
                                               std::vector<size_t>* row_lines = nullptr);

}  // namespace lowbit
