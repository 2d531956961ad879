#include "quant/quant_spec.h"

#include "core/error.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <charconv>
#include <cmath>

namespace lowbit {

namespace {

bool valid_name(const std::string& s) {
  if (s.empty()) return false;
  for (char c : s)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-')) return false;
  return true;
}

std::string format_double(double v) {
  std::string s = fmt::format("{}", v);
  return s;
}

}  // namespace

QuantSpec QuantSpec::parse(const std::string& text) {
  QuantSpec s;
  s.text_ = text;
  const size_t colon = text.find(':');
  s.method_ = text.substr(0, colon);
  LB_CHECK(valid_name(s.method_), "method spec '{}': '{}' is not a method name", text, s.method_);
  if (colon == std::string::npos) return s;
  const std::string rest = text.substr(colon + 1);
  LB_CHECK(!rest.empty(), "method spec '{}': nothing after ':'", text);
  size_t pos = 0;
  while (pos <= rest.size()) {
    size_t comma = rest.find(',', pos);
    if (comma == std::string::npos) comma = rest.size();
    const std::string item = rest.substr(pos, comma - pos);
    const size_t eq = item.find('=');
    LB_CHECK(eq != std::string::npos && eq > 0 && eq + 1 < item.size(),
             "method spec '{}': '{}' is not of the form key=value", text, item);
    const std::string key = item.substr(0, eq), value = item.substr(eq + 1);
    LB_CHECK(valid_name(key), "method spec '{}': '{}' is not an option name", text, key);
    LB_CHECK(s.given_.emplace(key, value).second, "method spec '{}': option '{}' given twice", text, key);
    pos = comma + 1;
  }
  return s;
}

const std::string* QuantSpec::raw(const std::string& key) {
  auto it = given_.find(key);
  if (it == given_.end()) return nullptr;
  used_[key] = true;
  return &it->second;
}

int64_t QuantSpec::take_int(const std::string& key, int64_t def, int64_t lo, int64_t hi, const std::string& help) {
  int64_t v = def;
  if (const std::string* r = raw(key)) {
    auto [p, ec] = std::from_chars(r->data(), r->data() + r->size(), v);
    LB_CHECK(ec == std::errc() && p == r->data() + r->size(), "{}: option {}={} is not an integer", method_, key, *r);
  }
  LB_CHECK(v >= lo && v <= hi, "{}: option {}={} is out of range [{}, {}] ({})", method_, key, v, lo, hi, help);
  taken_.emplace_back(key, std::to_string(v));
  help_.push_back(fmt::format("{} (default {}, {}..{}): {}", key, def, lo, hi, help));
  return v;
}

double QuantSpec::take_double(const std::string& key, double def, double lo, double hi, const std::string& help) {
  double v = def;
  if (const std::string* r = raw(key)) {
    char* end = nullptr;
    v = std::strtod(r->c_str(), &end);
    LB_CHECK(end == r->c_str() + r->size() && std::isfinite(v), "{}: option {}={} is not a number", method_, key, *r);
  }
  LB_CHECK(v >= lo && v <= hi, "{}: option {}={} is out of range [{}, {}] ({})", method_, key, format_double(v),
           format_double(lo), format_double(hi), help);
  taken_.emplace_back(key, format_double(v));
  help_.push_back(fmt::format("{} (default {}, {}..{}): {}", key, format_double(def), format_double(lo),
                              format_double(hi), help));
  return v;
}

int QuantSpec::take_weight_bits(int def) { return int(take_int("w", def, 2, 8, "weight bits")); }

int64_t QuantSpec::take_group_size(int64_t def) {
  const int64_t g =
      take_int("g", def, -1, 1 << 20, "group size along the input dimension; -1: per output channel");
  LB_CHECK(g != 0, "{}: option g=0 is not a group size (use -1 for per-channel)", method_);
  return g;
}

bool QuantSpec::take_symmetric(bool def) {
  return take_bool("sym", def, "symmetric grid (zero-point fixed at 2^(w-1))");
}

bool QuantSpec::take_bool(const std::string& key, bool def, const std::string& help) {
  bool v = def;
  if (const std::string* r = raw(key)) {
    if (*r == "1" || *r == "true") v = true;
    else if (*r == "0" || *r == "false") v = false;
    else fail("{}: option {}={} is not a boolean (0, 1, true or false)", method_, key, *r);
  }
  taken_.emplace_back(key, v ? "1" : "0");
  help_.push_back(fmt::format("{} (default {}): {}", key, def ? 1 : 0, help));
  return v;
}

std::string QuantSpec::take_choice(const std::string& key, const std::string& def,
                                   const std::vector<std::string>& choices, const std::string& help) {
  std::string v = def;
  if (const std::string* r = raw(key)) v = *r;
  bool ok = false;
  for (const auto& c : choices) ok = ok || c == v;
  LB_CHECK(ok, "{}: option {}={} is not one of {}", method_, key, v, fmt::join(choices, ", "));
  taken_.emplace_back(key, v);
  help_.push_back(fmt::format("{} (default {}; {}): {}", key, def, fmt::join(choices, ", "), help));
  return v;
}

std::string QuantSpec::take_string(const std::string& key, const std::string& def, const std::string& help) {
  std::string v = def;
  if (const std::string* r = raw(key)) v = *r;
  // An empty value means "not given": left out of the resolved spec, which must re-parse.
  if (v.empty()) unset_.push_back(key);
  else taken_.emplace_back(key, v);
  help_.push_back(fmt::format("{} (default '{}'): {}", key, def, help));
  return v;
}

void QuantSpec::finish() const {
  for (const auto& [k, v] : given_) {
    if (used_.count(k)) continue;
    std::vector<std::string> known;
    for (const auto& t : taken_) known.push_back(t.first);
    known.insert(known.end(), unset_.begin(), unset_.end());
    LB_CHECK(k != "a", "{} quantizes weights only: activation bits (a={}) need a weight-activation method "
             "(smoothquant, rtn)", method_, v);
    fail("{}: unknown option '{}' (known: {})", method_, k, fmt::join(known, ", "));
  }
}

std::string QuantSpec::resolved() const {
  std::string s = method_;
  for (size_t i = 0; i < taken_.size(); ++i) s += (i == 0 ? ":" : ",") + taken_[i].first + "=" + taken_[i].second;
  return s;
}

}  // namespace lowbit
