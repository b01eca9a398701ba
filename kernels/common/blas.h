// Dense fp32 GEMM on the host: OpenBLAS cblas_sgemm (its own threads) behind the signature that
// common/blas.cuh gives the GPU launchers, with 64-bit sizes checked against OpenBLAS's 32-bit
// int. Row-major operands.
#pragma once
#include <cblas.h>

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
inline void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
                 int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
              blas_int(m, "m"), blas_int(n, "n"), blas_int(k, "k"), alpha, a, blas_int(lda, "lda"),
              b, blas_int(ldb, "ldb"), beta, c, blas_int(ldc, "ldc"));
}

}  // namespace memlayers::host_blas
