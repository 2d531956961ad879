// Facts about this process that results record: the time, the CPU, and peak memory.
//
// Peak memory has one meaning everywhere (the CLI and studies): the kernel's high-water mark of
// this process's resident set (VmHWM in /proc/self/status), in bytes. reset_peak_rss() lowers
// that mark to the current resident set (writing "5" to /proc/self/clear_refs, Linux >= 4.0), so
// that a peak read afterwards covers only what ran since the reset; where the kernel refuses,
// the peak covers the whole process, and PeakRss::scope says which.
#pragma once

#include <cstdint>
#include <string>

namespace lowbit {

// Now, UTC, ISO 8601 to the second: "2026-01-31T12:34:56Z".
std::string utc_now();

// The CPU's model name (/proc/cpuinfo's first "model name"), or "unknown".
std::string cpu_model();

struct PeakRss {
  int64_t bytes = 0;
  // What the peak covers: "the process", or, after a successful reset_peak_rss(), what the
  // caller said the reset started (e.g. "this cell (quantization and evaluations so far)").
  std::string scope;
};

// The peak resident set in bytes since the process started or the last successful reset
// (VmHWM; ru_maxrss where /proc is absent, which no reset lowers).
int64_t peak_rss_bytes();

// Lowers the peak to the current resident set; returns whether the kernel allowed it.
bool reset_peak_rss();

// The peak with its scope: `since_reset` names the span a successful reset started, or is empty
// when no reset was made (or none succeeded), which gives "the process".
PeakRss peak_rss(const std::string& since_reset = {});

}  // namespace lowbit
