// Helpers shared by the tests: where the shared models, data and fixtures are.
#pragma once

#include "core/error.h"

#include <gtest/gtest.h>
#include <zstd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

namespace lowbit::test {

inline std::string env_dir(const char* var, const char* fallback) {
  const char* v = std::getenv(var);
  return v && *v ? v : fallback;
}
inline std::string models_dir() { return env_dir("LOWBIT_TEST_MODELS", LOWBIT_TEST_MODELS_DEFAULT); }
inline std::string data_dir() { return env_dir("LOWBIT_TEST_DATA", LOWBIT_TEST_DATA_DEFAULT); }
inline std::string fixtures_dir() { return env_dir("LOWBIT_TEST_FIXTURES", LOWBIT_TEST_FIXTURES_DEFAULT); }

// Skips the test when a shared file or directory is absent (a checkout without ../shared).
#define LOWBIT_REQUIRE_PATH(p)                                                    \
  do {                                                                            \
    if (!std::filesystem::exists(p)) GTEST_SKIP() << "not available: " << (p);    \
  } while (0)

inline std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

inline void spit(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), std::streamsize(bytes.size()));
}

// Decompresses a .zst file of little-endian int32 values.
inline std::vector<int32_t> read_ids_zst(const std::string& path) {
  const std::string z = slurp(path);
  const unsigned long long n = ZSTD_getFrameContentSize(z.data(), z.size());
  if (n == ZSTD_CONTENTSIZE_ERROR || n == ZSTD_CONTENTSIZE_UNKNOWN) {
    ADD_FAILURE() << "not a zstd frame with a known size: " << path;
    return {};
  }
  std::vector<int32_t> ids(n / 4);
  const size_t got = ZSTD_decompress(ids.data(), n, z.data(), z.size());
  if (ZSTD_isError(got) || got != n) ADD_FAILURE() << "cannot decompress " << path;
  return ids;
}

// Decompresses a .zst file into bytes.
inline std::string read_zst(const std::string& path) {
  const std::string z = slurp(path);
  const unsigned long long n = ZSTD_getFrameContentSize(z.data(), z.size());
  if (n == ZSTD_CONTENTSIZE_ERROR || n == ZSTD_CONTENTSIZE_UNKNOWN) {
    ADD_FAILURE() << "not a zstd frame with a known size: " << path;
    return {};
  }
  std::string out(n, '\0');
  const size_t got = ZSTD_decompress(out.data(), n, z.data(), z.size());
  if (ZSTD_isError(got) || got != n) ADD_FAILURE() << "cannot decompress " << path;
  return out;
}

// A fresh temporary directory, removed when the object goes.
struct TempDir {
  std::filesystem::path path;
  TempDir() {
    char tmpl[] = "/tmp/lowbit-test-XXXXXX";
    path = ::mkdtemp(tmpl);
  }
  ~TempDir() { std::filesystem::remove_all(path); }
  std::string operator/(const std::string& name) const { return (path / name).string(); }
};

// An environment variable set (value) or unset (nullptr) while the object lives, then restored.
struct ScopedEnv {
  std::string name, saved;
  bool had = false;
  ScopedEnv(const char* var, const char* value) : name(var) {
    if (const char* v = std::getenv(var)) {
      had = true;
      saved = v;
    }
    if (value) {
      ::setenv(var, value, 1);
    } else {
      ::unsetenv(var);
    }
  }
  ~ScopedEnv() {
    if (had) {
      ::setenv(name.c_str(), saved.c_str(), 1);
    } else {
      ::unsetenv(name.c_str());
    }
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;
};

// The message of the lowbit::Error that f throws; a test failure (and "") when it throws none.
inline std::string error_text(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "no lowbit::Error";
  return {};
}

}  // namespace lowbit::test
