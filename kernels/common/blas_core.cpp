// OpenBLAS's kernels on this CPU (blas_core.h).
#include "common/blas_core.h"

#include <cblas.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <cstring>

#include <fmt/format.h>

namespace memlayers::host_blas {

namespace {

// Set before the restart: the core the library took by itself (describe() reports it; its
// presence also means a restart already happened).
constexpr const char* kLibraryChoice = "MEMLAYERS_OPENBLAS_OWN_CORE";

bool same_name(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) ==
                  std::tolower(static_cast<unsigned char>(y));
         });
}

// OpenBLAS's x86-64 cores without AVX2 kernels (driver/others/dynamic.c), as it names them.
constexpr std::array<std::string_view, 21> kPreAvx2Cores = {
    "Unknown",   "Katmai", "Coppermine",  "Northwood", "Prescott",  "Banias",     "Atom",
    "Core2",     "Penryn", "Dunnington",  "Nehalem",   "Athlon",    "Opteron",    "Opteron_SSE3",
    "Barcelona", "Nano",   "Sandybridge", "Bobcat",    "Bulldozer", "Piledriver", "Steamroller"};

#if defined(OPENBLAS_VERSION)
std::string library_version() {
  std::string v = OPENBLAS_VERSION;  // " OpenBLAS 0.3.21 "
  v.erase(0, v.find_first_not_of(' '));
  v.erase(v.find_last_not_of(' ') + 1);
  return v;
}

// A DYNAMIC_ARCH build reads OPENBLAS_CORETYPE; one built for a single core ignores it.
bool chooses_at_load() {
  const char* config = openblas_get_config();
  return config != nullptr && std::strstr(config, "DYNAMIC_ARCH") != nullptr;
}
#endif

}  // namespace

CpuVectors this_cpu() {
  CpuVectors v;
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  v.avx2_fma = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  v.avx512 = v.avx2_fma && __builtin_cpu_supports("avx512f") &&
             __builtin_cpu_supports("avx512cd") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
  v.avx512_bf16 = v.avx512 && __builtin_cpu_supports("avx512bf16");
#endif
  return v;
}

std::string better_core(std::string_view core, CpuVectors cpu) {
  const bool pre_avx2 = std::any_of(kPreAvx2Cores.begin(), kPreAvx2Cores.end(),
                                    [&](std::string_view c) { return same_name(c, core); });
  if (!pre_avx2) return {};
  if (cpu.avx512 && cpu.avx512_bf16) return "Cooperlake";
  if (cpu.avx512) return "SkylakeX";
  if (cpu.avx2_fma) return "Haswell";
  return {};
}

std::string describe() {
#if defined(OPENBLAS_VERSION)
  std::string s = fmt::format("{}, {} kernels", library_version(), openblas_get_corename());
  if (const char* forced = std::getenv("OPENBLAS_CORETYPE"); forced != nullptr && *forced != 0) {
    const char* own = std::getenv(kLibraryChoice);
    s += own != nullptr && *own != 0
             ? fmt::format(" (OPENBLAS_CORETYPE={}, set at start: the library alone took {})",
                           forced, own)
             : fmt::format(" (OPENBLAS_CORETYPE={})", forced);
  }
  return s;
#else
  return "CBLAS (not OpenBLAS: kernels unknown)";
#endif
}

void use_native_core(int argc, char** argv) {
#if defined(OPENBLAS_VERSION) && defined(__linux__)
  if (std::getenv("OPENBLAS_CORETYPE") != nullptr || std::getenv(kLibraryChoice) != nullptr ||
      !chooses_at_load())
    return;
  const std::string own = openblas_get_corename();
  const std::string want = better_core(own, this_cpu());
  if (want.empty()) return;
  setenv("OPENBLAS_CORETYPE", want.c_str(), 1);
  setenv(kLibraryChoice, own.c_str(), 1);
  execv("/proc/self/exe", argv);
  // Not restarted: carry on with the library's kernels, and say so.
  fmt::print(stderr,
             "{}: {} took its {} kernels on this CPU; restarting with OPENBLAS_CORETYPE={} failed "
             "({}): running with them\n",
             argc > 0 ? argv[0] : "memlayers", library_version(), own, want, std::strerror(errno));
  unsetenv("OPENBLAS_CORETYPE");
  unsetenv(kLibraryChoice);
#else
  (void)argc;
  (void)argv;
#endif
}

}  // namespace memlayers::host_blas
