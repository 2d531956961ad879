// The spec parser's shared parts (internal to src/study): positions for errors, typed getters
// that fail at a key's file:line:column, and the parsers of the tables that live in their own
// files (spec_train.cpp: [[finetune]] and [[distill]]).
#pragma once

#include "core/error.h"
#include "study/spec.h"

#include <fmt/format.h>
#include <toml++/toml.h>

#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

namespace lowbit::study::spec_detail {

using toml::node;
using toml::table;

// What parsing needs to attribute errors: the spec's path.
struct Ctx {
  std::string path;
  SourcePos pos(const toml::source_region& r) const { return {path, int64_t(r.begin.line), int64_t(r.begin.column)}; }
  SourcePos pos(const node& n) const { return pos(n.source()); }
  template <typename... Args>
  [[noreturn]] void fail_at(const SourcePos& p, fmt::format_string<Args...> f, Args&&... args) const {
    throw Error(p.str() + ": " + fmt::format(f, std::forward<Args>(args)...));
  }
  template <typename... Args>
  [[noreturn]] void fail_at(const node& n, fmt::format_string<Args...> f, Args&&... args) const {
    fail_at(pos(n), f, std::forward<Args>(args)...);
  }
  // Runs f; a lowbit::Error it throws is re-thrown prefixed with the position.
  template <typename F>
  auto at(const SourcePos& p, F&& f) const -> decltype(f()) {
    try {
      return f();
    } catch (const Error& e) {
      throw Error(p.str() + ": " + e.what());
    }
  }
};

// Fails at the first key of `t` not in `known`, naming them.
void check_keys(const Ctx& c, const table& t, const std::string& what, const std::set<std::string>& known);
const node* find(const table& t, const std::string& key);
// Typed values (def when absent); a wrong type or range fails at the value.
std::string get_string(const Ctx& c, const table& t, const std::string& key, const std::string& def);
int64_t get_int(const Ctx& c, const table& t, const std::string& key, int64_t def, int64_t lo, int64_t hi);
// An array of strings (or one string), with each element's position.
std::vector<std::pair<std::string, SourcePos>> get_strings(const Ctx& c, const table& t, const std::string& key);
// A path as written: ${VAR} expanded, relative to the spec's directory.
std::string resolve_path(const Ctx& c, const SourcePos& p, const std::string& s);
// A method option's value as the spec string writes it (integers, "0.0002", booleans as 1/0).
std::string option_text(const Ctx& c, const node& n, const std::string& key);

// The [[finetune]] and [[distill]] tables, expanded into spec.methods (spec.spm and spec.device
// already parsed). `seen` holds the trained cells so far, for duplicates.
void parse_finetune(const Ctx& c, const toml::array& tables, StudySpec& spec, std::map<std::string, SourcePos>& seen);
void parse_distill(const Ctx& c, const toml::array& tables, StudySpec& spec, std::map<std::string, SourcePos>& seen);

}  // namespace lowbit::study::spec_detail
