// Dense fp32 GEMM on the host, behind the signature that common/blas.cuh gives the GPU launchers:
// OpenBLAS cblas_sgemm, one thread of it on each thread of the suite's own pool
// (kernels/common/parallel.h), C cut into one block of rows (or of columns) per thread. Row-major
// operands; 64-bit sizes checked against OpenBLAS's 32-bit int.
//
// Why not OpenBLAS's own threads: after a threaded GEMM its idle workers spin (sched_yield) for
// 2^28 cycles (its THREAD_TIMEOUT) before they sleep, and the kernel that follows (the search after
// the projection, the bag, every op of a training step) runs its threads beside them. On the 2-core
// Xeon of reports/cpu-intel-xeon, a 256-bag × 128-row gather from a 4 GiB table took 11-12 ms right
// after an OpenBLAS-threaded 256×2048×1024 sgemm and 6-7 ms alone or after the same GEMM run this
// way; the memory layer's search, bag and bag backward ran 1.25-1.45× faster inside the layer.
// The GEMMs themselves run within ~10% of OpenBLAS's own threading, inside the VM's noise. So the
// process keeps one pool: gemm() sets OpenBLAS to one thread (openblas_set_num_threads(1))
// whenever it finds it set to more. A program that calls OpenBLAS itself and wants its threads
// sets them again after.
#pragma once
#include <climits>
#include <cstdint>

#include "common/error.h"

namespace memlayers::host_blas {

// v as OpenBLAS's int, or an error naming the size.
inline int blas_int(int64_t v, const char* what) {
  MEMLAYERS_CHECK(v >= 0 && v <= INT_MAX, "sgemm: {} = {} is outside OpenBLAS's int range [0, {}]",
                  what, v, INT_MAX);
  return static_cast<int>(v);
}

// C (m×n, ldc) = alpha·op(A)·op(B) + beta·C, row-major fp32; op(A) is m×k, op(B) k×n.
// ta: A is stored k×m (lda >= m), else m×k (lda >= k); likewise tb for B.
// The blocks depend only on the sizes and the thread count (MEMLAYERS_THREADS), so a call gives
// the same bits every time; another thread count can change the last bits, as with OpenBLAS's own
// threads (its micro-kernels tile a block's edge differently). Called from inside a parallel_for
// chunk, it runs on the calling thread alone.
void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
          int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc);

// y = op(A)·x for a row-major (rows, cols) A (ta: Aᵀ·x); on the calling thread.
void gemv(bool ta, int64_t rows, int64_t cols, const float* a, const float* x, float* y);

}  // namespace memlayers::host_blas
