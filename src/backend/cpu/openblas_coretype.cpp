// Chooses OpenBLAS's kernels for the CPU lowbit runs on.
//
// OpenBLAS picks its kernels once, in its library constructor, from OPENBLAS_CORETYPE when that
// is set and from its own CPU detection otherwise. Both can leave an AVX-512 CPU on AVX2
// kernels: OpenBLAS 0.3.21 (Debian 12) detects Zen 4 as "Zen", and machines are often set up
// with OPENBLAS_CORETYPE=Haswell for bitwise-stable numpy results. On a 2-core Zen 4 EPYC the
// SkylakeX kernels run a 2048x1792x512 sgemm at 334 GFLOP/s against 181-199 for Zen/Haswell
// (bench_forward's gemm/* benchmarks), and lowbit's fp32 forward is GEMM-bound.
//
// So, on a CPU with AVX-512 F/BW/DQ/VL, lowbit runs OpenBLAS with OPENBLAS_CORETYPE=SKYLAKEX;
// LOWBIT_OPENBLAS_CORETYPE, when set, is used instead (any core name OpenBLAS knows). The
// variable must be in the environment before OpenBLAS's constructor runs, and glibc resets the
// environment to the process's original one after .preinit_array functions run, so a setenv()
// there does not survive. The function below (in .preinit_array: before any shared library's
// constructor) therefore re-executes the program once with the variable set, when it differs.
// The variable changes only for lowbit's own process and its children.
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

void choose_openblas_coretype(int, char** argv, char** envp) {
  if (envp == nullptr) return;
  const char* want = wanted_coretype(envp);
  if (want == nullptr) return;
  const char* have = find_env(envp, "OPENBLAS_CORETYPE");
  if (have != nullptr && std::strcmp(have, want) == 0) return;
  static std::string entry = std::string("OPENBLAS_CORETYPE=") + want;
  std::vector<char*> env;
  for (char** e = envp; *e != nullptr; ++e)
    if (std::strncmp(*e, "OPENBLAS_CORETYPE=", 18) != 0) env.push_back(*e);
  env.push_back(entry.data());
  env.push_back(nullptr);
  execve("/proc/self/exe", argv, env.data());
  // execve returned: /proc is not mounted or the binary is gone; carry on with the default.
}

}  // namespace

__attribute__((section(".preinit_array"), used)) static void (*const kChooseOpenblasCoretype)(int, char**, char**) =
    choose_openblas_coretype;
