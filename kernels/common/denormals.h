// Subnormal floats on the CPU. An x86 core takes a microcode assist, a hundred cycles and more,
// for each SIMD multiply-add that meets a subnormal (|x| < 1.2e-38) input or result, where a GPU
// runs them at full speed. A softmax weight below e^-87 of its bag's largest is one: with a third
// of the weights at 3e-39, the EmbeddingBag forward (dim 1024, k 32, B 4096 over a 4 GiB table)
// took 108-112 ms against 24-28 ms, the backward 140 against 76-83 ms (2-core Xeon); flushed,
// 22-27 ms and 69 ms, as with normal weights. A subnormal term moves an fp32 sum only when all
// its other terms are as tiny (a bag whose every weight is subnormal then gives 0), so the CPU
// variants that meet weights flush them: FlushDenormals sets the calling thread's MXCSR
// flush-to-zero and denormals-are-zero bits for its lifetime and restores the mode after. One per
// chunk of a parallel_for: the mode is per thread. Elsewhere than x86 it does nothing.
#pragma once

#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#endif

namespace memlayers {

class FlushDenormals {
 public:
#if defined(__x86_64__) || defined(__i386__)
  FlushDenormals() : saved_(_mm_getcsr()) { _mm_setcsr(saved_ | kFtz | kDaz); }
  ~FlushDenormals() { _mm_setcsr(saved_); }
#else
  FlushDenormals() = default;
#endif
  FlushDenormals(const FlushDenormals&) = delete;
  FlushDenormals& operator=(const FlushDenormals&) = delete;

 private:
#if defined(__x86_64__) || defined(__i386__)
  static constexpr unsigned kFtz = 0x8000;  // results that would be subnormal become 0
  static constexpr unsigned kDaz = 0x0040;  // subnormal inputs are read as 0
  unsigned saved_;
#endif
};

}  // namespace memlayers
