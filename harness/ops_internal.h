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

}  // namespace memlayers::harness::detail
