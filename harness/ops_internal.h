// What the backends of harness::Ops share and ops_for() assembles: each backend's raw table
// (validation is added around it by ops_for) and the checks of index values that host backends
// make before they read through them.
#pragma once
#include <cstdint>

#include "harness/ops.h"

namespace memlayers::harness::detail {

Ops reference_ops();
Ops cpu_ops();

// Every ids[r] in [0, num_rows); the message names `what` ("id"), the value, the range and the row.
void check_ids(const int32_t* ids, int64_t rows, int64_t num_rows, const char* what);

// Cross-entropy's targets and weights (CrossEntropyFwd's rules); returns Σ weights (> 0).
double check_targets(const int32_t* targets, const float* weights, int64_t rows, int64_t vocab);

// The GEMMs of a linear layer (LinearFwd, LinearBwd), written once over a backend's
// gemm(ta, tb, m, n, k, a, lda, b, ldb, beta, c, ldc), row-major C = op(A)·op(B) + beta·C: the cpu
// backend's OpenBLAS, the cuda backend's cuBLAS. The bias terms (y's broadcast, db's column sums)
// stay with the backends. W is (in, out), or Wᵀ stored (out, in) when transposed_w.
template <class Gemm>
void linear_fwd_gemm(const LinearFwd& p, const Gemm& gemm) {
  const int64_t I = p.in, O = p.out;
  // y (rows, out) = x · W (+ the bias already in y): ldb = out, or in for a stored Wᵀ.
  gemm(false, p.transposed_w, p.rows, O, I, p.x, I, p.w, p.transposed_w ? I : O, p.b ? 1.0f : 0.0f,
       p.y, O);
}

template <class Gemm>
void linear_bwd_gemms(const LinearBwd& p, const Gemm& gemm) {
  const int64_t I = p.in, O = p.out;
  if (p.dx)  // dx (rows, in) = dy · Wᵀ
    gemm(false, !p.transposed_w, p.rows, I, O, p.dy, O, p.w, p.transposed_w ? I : O,
         p.accumulate_dx ? 1.0f : 0.0f, p.dx, I);
  if (p.dw) {
    if (p.transposed_w)  // dW (out, in) += dyᵀ · x
      gemm(true, false, O, I, p.rows, p.dy, O, p.x, I, 1.0f, p.dw, I);
    else  // dW (in, out) += xᵀ · dy
      gemm(true, false, I, O, p.rows, p.x, I, p.dy, O, 1.0f, p.dw, O);
  }
}

}  // namespace memlayers::harness::detail
