// The cuda and simt backends of the harness (harness/cuda/*.cu, each source compiled by nvcc for
// the GPU and by the host compiler against simt/): the raw tables ops_for and optim_ops_for
// return, and the host check of sparse row ids those backends share with optim.cpp's host step.
#pragma once
#include <cstdint>

#include "harness/ops.h"
#include "harness/optim.h"

namespace memlayers::harness::detail {

// The Ops entries of the simt build (ops_for wraps them in the shared validate()); the optimiser
// entries validate their params themselves.
Ops simt_ops();
OptimOps simt_optim_ops();
#if defined(MEMLAYERS_HAVE_CUDA)
Ops cuda_ops();
OptimOps cuda_optim_ops();
#endif

// Every row id in [0, rows) and strictly ascending (optim.h's SparseAdamStep); host memory.
// Throws memlayers::Error naming the first bad id, its position and what is accepted.
void check_sparse_row_ids(const int64_t* row_ids, int64_t n_rows, int64_t rows);

}  // namespace memlayers::harness::detail
