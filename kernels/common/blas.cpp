// Host GEMM over the suite's thread pool (blas.h).
#include "common/blas.h"

#include <cblas.h>

#include <utility>

#include "common/parallel.h"

namespace memlayers::host_blas {

namespace {

// Below this many multiply-adds a GEMM runs on the caller alone: waking the pool (tens of µs on a
// VM) would cost more than the second thread saves. OpenBLAS's own cut is 2^18.
constexpr double kSplitMacs = 1 << 21;
// Blocks of C are whole multiples of this many rows or columns (the sgemm micro-kernels' tiles
// are 4 to 16 wide), so no block ends in a sliver.
constexpr int64_t kBlockAlign = 16;

void sgemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
           int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
              blas_int(m, "m"), blas_int(n, "n"), blas_int(k, "k"), alpha, a, blas_int(lda, "lda"),
              b, blas_int(ldb, "ldb"), beta, c, blas_int(ldc, "ldc"));
}

// Sets OpenBLAS to one thread when it has more; a no-op for another BLAS.
void use_one_blas_thread() {
#if defined(OPENBLAS_VERSION)
  if (openblas_get_num_threads() != 1) openblas_set_num_threads(1);
#endif
}

}  // namespace

void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
          int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  for (const auto& [v, what] :
       {std::pair{m, "m"}, {n, "n"}, {k, "k"}, {lda, "lda"}, {ldb, "ldb"}, {ldc, "ldc"}})
    blas_int(v, what);  // the whole call's sizes, whichever block fails first
  use_one_blas_thread();
  const int64_t threads = num_threads();
  // Blocks of C's rows where there are enough of them (each thread writes whole rows of C and
  // reads only its rows of op(A)); blocks of columns measured the same within the VM's noise.
  const bool rows = m >= 2 * kBlockAlign;
  const int64_t side = rows ? m : n;
  if (threads == 1 || parallel_detail::in_pool_thread ||
      double(m) * double(n) * double(k) < kSplitMacs || side < 2 * kBlockAlign)
    return sgemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  const int64_t per = (side + threads - 1) / threads;
  const int64_t grain = (per + kBlockAlign - 1) / kBlockAlign * kBlockAlign;
  parallel_for(side, grain, [&](int64_t s0, int64_t s1) {
    if (rows)  // rows s0..s1 of C: the same rows of op(A)
      sgemm(ta, tb, s1 - s0, n, k, alpha, ta ? a + s0 : a + s0 * lda, lda, b, ldb, beta,
            c + s0 * ldc, ldc);
    else  // columns s0..s1 of C: the same columns of op(B)
      sgemm(ta, tb, m, s1 - s0, k, alpha, a, lda, tb ? b + s0 * ldb : b + s0, ldb, beta, c + s0,
            ldc);
  });
}

void gemv(bool ta, int64_t rows, int64_t cols, const float* a, const float* x, float* y) {
  use_one_blas_thread();
  cblas_sgemv(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, blas_int(rows, "rows"),
              blas_int(cols, "cols"), 1.0f, a, blas_int(cols, "lda"), x, 1, 0.0f, y, 1);
}

}  // namespace memlayers::host_blas
