// Which kernels OpenBLAS runs on this CPU, and a start-up fix for the case where they are its
// generic ones.
//
// A DYNAMIC_ARCH OpenBLAS (Debian's) picks its kernels (its "core") from the CPU model when it
// loads. A model newer than the library gets a pre-AVX2 fallback: Debian's 0.3.21 runs its SSE3
// Prescott kernels on an Emerald Rapids Xeon with AVX-512, and there its sgemm reaches under a
// quarter of what its AVX-512 kernels do (55 against 250 GFLOP/s on 2 cores). That lowers every
// OpenBLAS GEMM in the suite (the CPU variants that call it, the harness's linear layers) and the
// benchmarks' sgemm ceiling with it, so a roofline can show a kernel above its "ceiling". The
// library reads OPENBLAS_CORETYPE only when it loads, so the fix is a restart: use_native_core()
// re-executes the program once with OPENBLAS_CORETYPE set to the best core this CPU can run. The
// restart is silent; describe(), which `memlayers info`, the benchmarks' headers and JSON and the
// training summaries show, says it happened and what the library took by itself.
//   memlayers::host_blas::use_native_core(argc, argv);  // first thing in main()
//   fmt::print("{}\n", memlayers::host_blas::describe());
// OPENBLAS_CORETYPE set by the user is left alone (OPENBLAS_CORETYPE=Prescott keeps the library's
// own choice); so is a core this code does not know, and any BLAS that is not OpenBLAS.
#pragma once

#include <string>
#include <string_view>

namespace memlayers::host_blas {

// The CPU's vector extensions, as far as OpenBLAS's x86-64 kernels care.
struct CpuVectors {
  bool avx2_fma = false;     // AVX2 and FMA3
  bool avx512 = false;       // AVX-512 F, CD, BW, DQ and VL (OpenBLAS's SkylakeX kernels)
  bool avx512_bf16 = false;  // and AVX512_BF16 (its Cooperlake kernels)
};

CpuVectors this_cpu();

// The OpenBLAS core to ask for when `core` (as openblas_get_corename() spells it) is one of its
// pre-AVX2 cores and `cpu` runs AVX2 or AVX-512 kernels: "Cooperlake", "SkylakeX" or "Haswell".
// Empty when `core` is already an AVX2 or AVX-512 one, when the CPU has nothing better, or when
// this code does not know the name.
std::string better_core(std::string_view core, CpuVectors cpu);

// The BLAS this process calls and the kernels it runs, e.g. "OpenBLAS 0.3.21, Cooperlake kernels
// (OPENBLAS_CORETYPE, set at start: the library alone took Prescott)".
std::string describe();

// When the library runs a pre-AVX2 core that better_core() can improve and OPENBLAS_CORETYPE is
// not set: sets it, notes the library's own choice (for describe()) and re-executes the program
// (/proc/self/exe) with the same arguments. Returns (changing nothing) otherwise, and when the
// restart fails (with a line on stderr). Call it first in main(), before any thread starts.
void use_native_core(int argc, char** argv);

}  // namespace memlayers::host_blas
