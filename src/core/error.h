// Errors. Two kinds, as in ggml/whisper.cpp:
//  - lowbit::Error: bad input (a file, a config, a flag). Thrown with a message that names the
//    function or file, the thing that is wrong and both values; the CLI prints it and exits 1.
//  - LB_ASSERT: a broken internal invariant. Aborts with file and line.
#pragma once

#include <fmt/format.h>

#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>

namespace lowbit {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

template <typename... Args>
[[noreturn]] void fail(fmt::format_string<Args...> f, Args&&... args) {
  throw Error(fmt::format(f, std::forward<Args>(args)...));
}

[[noreturn]] inline void assert_fail(const char* file, int line, const char* cond) {
  std::fprintf(stderr, "lowbit: internal error at %s:%d: assertion failed: %s\n", file, line, cond);
  std::abort();
}

}  // namespace lowbit

#define LB_ASSERT(cond) \
  do { if (!(cond)) ::lowbit::assert_fail(__FILE__, __LINE__, #cond); } while (0)

// Input check: throws lowbit::Error with the formatted message when cond is false.
#define LB_CHECK(cond, ...) \
  do { if (!(cond)) ::lowbit::fail(__VA_ARGS__); } while (0)
