#include "core/phase_profile.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>

namespace lowbit {

namespace {

std::mutex& mu() {
  static std::mutex m;
  return m;
}

std::vector<PhaseTotal>& totals() {
  static std::vector<PhaseTotal> t;
  return t;
}

}  // namespace

bool phase_profile_enabled() {
  const char* v = std::getenv("LOWBIT_PHASE_PROFILE");
  return v != nullptr && v[0] != '\0' && std::strcmp(v, "0") != 0;
}

PhaseScope::PhaseScope(const char* name) : name_(phase_profile_enabled() ? name : nullptr) {
  if (name_ != nullptr) t0_ = std::chrono::steady_clock::now();
}

PhaseScope::~PhaseScope() {
  if (name_ == nullptr) return;
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
  std::lock_guard<std::mutex> lock(mu());
  for (PhaseTotal& t : totals())
    if (t.name == name_) {
      t.seconds += s;
      ++t.count;
      return;
    }
  totals().push_back({name_, s, 1});
}

std::vector<PhaseTotal> phase_profile_totals() {
  std::lock_guard<std::mutex> lock(mu());
  return totals();
}

void print_phase_profile() {
  if (!phase_profile_enabled()) return;
  const std::vector<PhaseTotal> t = phase_profile_totals();
  if (t.empty()) return;
  std::fprintf(stderr, "phase profile (LOWBIT_PHASE_PROFILE=1; wall seconds, \"a/b\" within \"a\"):\n");
  for (const PhaseTotal& p : t)
    std::fprintf(stderr, "  %-36s %10.3f s  %8lld x\n", p.name.c_str(), p.seconds, static_cast<long long>(p.count));
}

}  // namespace lowbit
