// Compiled by ctest, never linked (tests/simt/CMakeLists.txt): under simt, a kernel argument whose
// pointers the launch check cannot see must not compile (simt/fields.h). With SIMT_PROBE_HIDDEN
// the argument is a lambda that captures a pointer; without it, the same pointer in an aggregate
// functor, which compiles and is checked.
#include "simt/simt.h"

namespace {

template <class F>
__global__ void apply_kernel(F f) {
  f(threadIdx.x);
}

struct Write {
  int* out;
  void operator()(unsigned i) const { out[i] = 1; }
};

}  // namespace

void probe(int* out) {
#if defined(SIMT_PROBE_HIDDEN)
  auto f = [out](unsigned i) { out[i] = 1; };
#else
  const Write f{out};
#endif
  simt::launch("probe", apply_kernel<decltype(f)>, dim3(1), dim3(32), 0, f);
}
