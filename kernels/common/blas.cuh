// Dense fp32 GEMM for launchers, one signature on both targets (DESIGN.md §3): cuBLAS under nvcc,
// and under simt (no cuBLAS) a plain kernel of our own that computes the same product, so the
// simt build tests everything around the GEMM. Row-major operands; cuBLAS is column-major, so
// the product is asked for transposed: C (m×n, row-major) = op(A)·op(B) is, read column-major,
// Cᵀ (n×m) = op(B)ᵀ·op(A)ᵀ, i.e. cublasSgemm(op_b, op_a, n, m, k, B, A, C) with the leading
// dimensions unchanged. Sizes and leading dimensions must fit cuBLAS's 32-bit int
// (gemm_supports). Results are deterministic run to run (cuBLAS on one GPU model; a fixed
// summation order under simt).
#pragma once
#include <cstdint>
#include <initializer_list>
#include <string>

#include "common/cuda.cuh"

#if defined(__CUDACC__)
#include <cublas_v2.h>
#endif

namespace memlayers {
inline namespace MEMLAYERS_TARGET_NS {
namespace blas {

// "" when every size and leading dimension fits a 32-bit int, else which one does not.
inline std::string gemm_supports(std::initializer_list<int64_t> dims) {
  constexpr int64_t kIntMax = 2147483647;
  for (int64_t d : dims)
    if (d > kIntMax)
      return "a GEMM size or leading dimension of " + std::to_string(d) +
             " exceeds cuBLAS's 32-bit int";
  return "";
}

#if defined(__CUDACC__)
// One cuBLAS handle per host thread, created on first use and kept (creation costs milliseconds).
inline cublasHandle_t handle() {
  thread_local struct Holder {
    cublasHandle_t h = nullptr;
    Holder() {
      if (cublasCreate(&h) != CUBLAS_STATUS_SUCCESS) h = nullptr;
    }
    ~Holder() {
      if (h) cublasDestroy(h);
    }
  } holder;
  if (!holder.h) fail("cublasCreate failed");
  return holder.h;
}
inline void check(cublasStatus_t st, const char* what) {
  if (st != CUBLAS_STATUS_SUCCESS)
    fail("{} failed: {} ({})", what, cublasGetStatusName(st), cublasGetStatusString(st));
}
#else
// simt stand-in: a thread per element of C, grid-stride, fp32 sum in k order. No shared-memory
// tiling: under simt a block barrier switches through every thread of the block, and a tiled GEMM
// would only add barriers; this kernel is never compiled for the GPU. C is not read when beta is 0
// (as cuBLAS), so it may hold anything, NaN included.
inline __global__ void __launch_bounds__(256)
    gemm_kernel(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha,
                const float* __restrict__ a, int64_t lda, const float* __restrict__ b, int64_t ldb,
                float beta, float* __restrict__ c, int64_t ldc) {
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < m * n;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = t / n, j = t % n;
    float acc = 0.f;
    for (int64_t p = 0; p < k; ++p)
      acc += (ta ? a[p * lda + i] : a[i * lda + p]) * (tb ? b[j * ldb + p] : b[p * ldb + j]);
    float& out = c[i * ldc + j];
    out = beta == 0.f ? alpha * acc : alpha * acc + beta * out;
  }
}
#endif

// C (m×n, ldc) = alpha·op(A)·op(B) + beta·C, row-major fp32; op(A) is m×k, op(B) k×n.
// ta: A is stored k×m (lda >= m), else m×k (lda >= k); likewise tb for B.
inline void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
                 int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc,
                 Stream stream) {
  if (m == 0 || n == 0) return;
#if defined(__CUDACC__)
  cublasHandle_t h = handle();
  check(cublasSetStream(h, static_cast<cudaStream_t>(stream)), "cublasSetStream");
  auto i32 = [](int64_t v) { return static_cast<int>(v); };
  check(cublasSgemm(h, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N, i32(n),
                    i32(m), i32(k), &alpha, b, i32(ldb), a, i32(lda), &beta, c, i32(ldc)),
        "cublasSgemm");
#else
  launch_kernel("blas_gemm", gemm_kernel, dim3(grid_cap(ceil_div(m * n, int64_t{256}))), dim3(256),
                0, stream, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
#endif
}

}  // namespace blas
}  // namespace MEMLAYERS_TARGET_NS
}  // namespace memlayers
