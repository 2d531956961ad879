// The environment OpenBLAS and OpenMP read when they start, set for lowbit's own process.
//
// Both libraries read their settings once, in their library constructors, so the variables must
// be in the environment before any shared library initializes. glibc resets the environment to
// the process's original one after .preinit_array functions run (a setenv() there does not
// survive), so the function below (in .preinit_array: before every shared library's
// constructor) re-executes the program once with the variables set, when one differs. The
// variables change only for lowbit's process and its children.
//
//   OPENBLAS_CORETYPE=SKYLAKEX on CPUs with AVX-512 F/BW/DQ/VL (LOWBIT_OPENBLAS_CORETYPE, when
//     set, is used instead). OpenBLAS 0.3.21 (Debian 12) detects Zen 4 as "Zen", and machines
//     are often set up with OPENBLAS_CORETYPE=Haswell for bitwise-stable numpy results; both
//     leave an AVX-512 CPU on AVX2 kernels. On a 2-core Zen 4 EPYC the SkylakeX kernels run a
//     2048x1792x512 sgemm at 334 GFLOP/s against 181-199 for Zen/Haswell (bench_forward's
//     gemm/* benchmarks), and lowbit's fp32 forward is GEMM-bound.
//   OMP_WAIT_POLICY=PASSIVE unless the user set a policy. libgomp's default spins idle threads
//     for a while; with more runnable threads than cores (two lowbit processes on two cores, as
//     `ctest -j2` runs them) the spinning threads take the cores from the working ones, and a
//     multiple-choice evaluation measured 1.3 items/s beside another lowbit process against
//     14.9 alone. Passive waiting costs nothing measurable alone (perplexity 1968 vs 1939
//     tokens/s, the same evaluation 14.2 vs 14.3 items/s).
//
// The file is linked into every executable as an object (a static archive would drop it as
// unreferenced).
#include <unistd.h>

#include <cstring>
#include <string>
#include <vector>

namespace {

// getenv() is not usable yet (glibc sets up `environ` after .preinit_array), so look in envp.
const char* find_env(char** envp, const char* name) {
  const size_t n = std::strlen(name);
  for (char** e = envp; *e != nullptr; ++e)
    if (std::strncmp(*e, name, n) == 0 && (*e)[n] == '=') return *e + n + 1;
  return nullptr;
}

const char* wanted_coretype(char** envp) {
  if (const char* forced = find_env(envp, "LOWBIT_OPENBLAS_CORETYPE"); forced != nullptr && *forced != '\0')
    return forced;
  __builtin_cpu_init();
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
  return avx512 ? "SKYLAKEX" : nullptr;
}

void set_runtime_env(int, char** argv, char** envp) {
  if (envp == nullptr) return;
  std::vector<std::pair<const char*, std::string>> wanted;
  if (const char* core = wanted_coretype(envp)) {
    const char* have = find_env(envp, "OPENBLAS_CORETYPE");
    if (have == nullptr || std::strcmp(have, core) != 0) wanted.emplace_back("OPENBLAS_CORETYPE", core);
  }
  if (const char* policy = find_env(envp, "OMP_WAIT_POLICY"); policy == nullptr || *policy == '\0')
    wanted.emplace_back("OMP_WAIT_POLICY", "PASSIVE");
  if (wanted.empty()) return;
  static std::vector<std::string> entries;
  std::vector<char*> env;
  for (char** e = envp; *e != nullptr; ++e) {
    bool replaced = false;
    for (const auto& [name, value] : wanted)
      replaced = replaced || (std::strncmp(*e, name, std::strlen(name)) == 0 && (*e)[std::strlen(name)] == '=');
    if (!replaced) env.push_back(*e);
  }
  for (const auto& [name, value] : wanted) entries.push_back(std::string(name) + "=" + value);
  for (auto& e : entries) env.push_back(e.data());
  env.push_back(nullptr);
  execve("/proc/self/exe", argv, env.data());
  // execve returned: /proc is not mounted or the binary is gone; carry on with the defaults.
}

}  // namespace

__attribute__((section(".preinit_array"), used)) static void (*const kSetRuntimeEnv)(int, char**, char**) =
    set_runtime_env;
