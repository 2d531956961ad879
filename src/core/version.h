// lowbit's version and the commit its code was built from (cmake/write_version.cmake writes
// their definitions at every build; "-dirty" follows the commit when tracked files differed
// from it), recorded in every result lowbit writes.
#pragma once

namespace lowbit {
extern const char* const kVersion;
extern const char* const kGitCommit;
}  // namespace lowbit
