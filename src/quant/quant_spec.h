// Method spec strings: "name:key=value,key=value", e.g. "gptq:w=4,g=128,act_order=1".
//
// The text a user gave is kept verbatim in every result; `resolved()` is the same method with
// every option spelled out, defaults included, in the method's own order, so that two specs that
// mean the same thing have the same resolved form.
//
// A method reads its options with the take_* functions, which check types and ranges and name
// the option in errors, then calls finish(), which rejects options it did not read.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace lowbit {

class QuantSpec {
 public:
  // Parses "name" or "name:k=v,...". Throws lowbit::Error on malformed text or repeated keys.
  static QuantSpec parse(const std::string& text);

  const std::string& text() const { return text_; }
  const std::string& method() const { return method_; }

  int64_t take_int(const std::string& key, int64_t def, int64_t lo, int64_t hi, const std::string& help);
  double take_double(const std::string& key, double def, double lo, double hi, const std::string& help);
  bool take_bool(const std::string& key, bool def, const std::string& help);
  std::string take_choice(const std::string& key, const std::string& def, const std::vector<std::string>& choices,
                          const std::string& help);
  // Free text (a path, say); may not contain ',' or '='. Empty (the default "none") is left out
  // of resolved().
  std::string take_string(const std::string& key, const std::string& def, const std::string& help);
  // The options of the min-max integer grid (affine_grid.h) that RTN, GPTQ and AWQ share, with one
  // name, range, help and check each (a method takes them in its own order, which resolved() keeps):
  //   w    weight bits, 2..8
  //   g    group size along the input dimension; -1: per output channel (0 is refused)
  //   sym  symmetric grid, the zero-point fixed at 2^(w-1)
  int take_weight_bits(int def);
  int64_t take_group_size(int64_t def);
  bool take_symmetric(bool def);

  // Throws naming any option the method did not take, and listing those it knows.
  void finish() const;

  // "gptq:w=4,g=128,sym=0,..." with every option taken, in the order taken.
  std::string resolved() const;
  // The options taken, with their help, for `lowbit methods`.
  const std::vector<std::pair<std::string, std::string>>& taken() const { return taken_; }
  const std::vector<std::string>& help() const { return help_; }

 private:
  const std::string* raw(const std::string& key);
  std::string text_, method_;
  std::map<std::string, std::string> given_;
  std::map<std::string, bool> used_;
  std::vector<std::pair<std::string, std::string>> taken_;  // key -> resolved value
  std::vector<std::string> help_;                           // "key (default): help"
  std::vector<std::string> unset_;                          // take_string keys left empty
};

}  // namespace lowbit
