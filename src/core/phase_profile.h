// Wall time of a run by named phase, summed over every time the phase ran (LOWBIT_PHASE_PROFILE=1
// in the environment when a scope opens; off, a scope costs one getenv). It answers where a quantization run's time
// goes on the host's side of a GPU run: loading weights, statistics, the method's solve, its
// report, propagation. Commands print the totals at their end (print_phase_profile).
//
//   { PhaseScope p("collect/forward"); ... }   // adds the scope's wall time to "collect/forward"
//
// A phase named "a/b" runs inside phase "a", whose total includes it. Phases that launch GPU
// work must synchronize before their scope ends to be charged for it (the block drivers' phases
// do). Thread-safe; meant for coarse phases (a block, a linear), not inner loops.
#pragma once

#include <chrono>
#include <string>
#include <utility>
#include <vector>

namespace lowbit {

bool phase_profile_enabled();

class PhaseScope {
 public:
  explicit PhaseScope(const char* name);
  ~PhaseScope();
  PhaseScope(const PhaseScope&) = delete;
  PhaseScope& operator=(const PhaseScope&) = delete;

 private:
  const char* name_;  // null when profiling is off
  std::chrono::steady_clock::time_point t0_;
};

struct PhaseTotal {
  std::string name;
  double seconds = 0;
  int64_t count = 0;
};
// The totals in the order the phases first ran.
std::vector<PhaseTotal> phase_profile_totals();
// "phase profile (LOWBIT_PHASE_PROFILE=1): ..." and one line per phase to stderr, when enabled and
// anything ran.
void print_phase_profile();

}  // namespace lowbit
