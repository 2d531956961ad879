#include "quant/quant_format.h"

#include "core/error.h"

#include <fmt/ranges.h>

#include <array>
#include <vector>

namespace lowbit {

namespace {

// The rows, defined in formats/*.cpp. A new format declares its row here and adds it to the table.
constexpr std::array<const QuantFormat*, 8> kFormats = {&kIntFormat,   &kCodebookFormat, &kSlimFormat, &kQuipFormat,
                                                        &kPbllmFormat, &kBillmFormat,    &kIcqFormat,  &kFdbFormat};

}  // namespace

std::span<const QuantFormat* const> quant_formats() { return kFormats; }

const QuantFormat& find_quant_format(std::string_view name) {
  for (const QuantFormat* f : kFormats)
    if (name == f->name) return *f;
  std::vector<std::string> known;
  for (const QuantFormat* f : kFormats) known.emplace_back(f->name);
  throw Error(fmt::format("unknown quantized-linear format '{}' (known: {})", name, fmt::join(known, ", ")));
}

}  // namespace lowbit
