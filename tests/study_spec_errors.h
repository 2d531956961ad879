// Spec-parsing helpers shared by the study tests: options that skip the file checks, and the
// error a spec text gives.
#pragma once

#include "core/error.h"
#include "study/spec.h"

#include <gtest/gtest.h>

#include <string>

namespace lowbit::study::spec_test {

// Syntax, keys, values and names only: the tests' specs name models and data that need not exist.
inline const SpecOptions kNoFiles{false};

// The error message parsing `text` gives (fails the test when it parses).
inline std::string error_of(const std::string& text, const SpecOptions& opt = kNoFiles) {
  try {
    parse_study_spec(text, "/tmp/spec.toml", opt);
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "no error for:\n" << text;
  return "";
}

}  // namespace lowbit::study::spec_test
