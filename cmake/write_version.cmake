# Writes OUT (a C++ source defining lowbit::kVersion and lowbit::kGitCommit) from the work tree's
# current commit, at every build: a result must name the commit of the code that produced it,
# not the one present when CMake last configured. The file is rewritten only when its text
# changes, so an unchanged commit recompiles nothing.
#   cmake -DSOURCE_DIR=... -DOUT=... -DVERSION=... -P write_version.cmake
execute_process(COMMAND git rev-parse --short=12 HEAD WORKING_DIRECTORY ${SOURCE_DIR}
                OUTPUT_VARIABLE commit OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET RESULT_VARIABLE rc)
if(NOT rc EQUAL 0 OR NOT commit)
  set(commit unknown)
else()
  # Tracked files changed since the commit: the binary is not that commit's code.
  execute_process(COMMAND git diff --quiet HEAD -- WORKING_DIRECTORY ${SOURCE_DIR} RESULT_VARIABLE dirty ERROR_QUIET)
  if(dirty EQUAL 1)
    string(APPEND commit "-dirty")
  endif()
endif()
set(text "// Written by cmake/write_version.cmake at build time.\n#include \"core/version.h\"\n\nnamespace lowbit {\nconst char* const kVersion = \"${VERSION}\";\nconst char* const kGitCommit = \"${commit}\";\n}  // namespace lowbit\n")
if(EXISTS ${OUT})
  file(READ ${OUT} old)
endif()
if(NOT "${old}" STREQUAL "${text}")
  file(WRITE ${OUT} "${text}")
endif()
