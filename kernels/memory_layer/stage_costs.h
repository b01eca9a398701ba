// The memory layer's floors per stage (memory_layer.h, kFwdStages / kBwdStages): what each stage
// must read and write and the flops it must do, declared once here and read by
// bench_memory_layer and the report to judge each stage against its own roofline. The stages
// reuse the ops' declarations: the search is pk_topk::Fwd / Bwd, the bag embbag::Fwd / Bwd; the
// GEMMs count A and B read and C written once (2·m·n·k flops); the elementwise passes (softmax,
// SiLU, GELU, the scalar gate) count their reads and writes and no flops.
//
// Unlike memory_layer::Fwd / Bwd, which count what the whole layer must move (parameters, x,
// out, the gathered rows), a stage also counts the intermediates that cross between stages (q,
// the scores, the softmax weights, the bag sum, ...): a composition of separate stages pays them.
// The GEMM, search and bag flops add up to memory_layer::Fwd::flops / Bwd::flops exactly; only
// the scalar gate's x·wg (and, backward, xᵀ·dg) adds 2·B·d flops of its own.
//
// The backward counts the gradients a training step takes: dx, dWq, dbq, dK1 and dK2 dense (as
// the cpu composition writes them), dV compact with U = embbag::expected_unique_rows(B·h·k, N)
// distinct rows (PEER: dU too), dW1, db1, dW2, db2 (memory+), dwg (scalar gate).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "memory_layer/memory_layer.h"

namespace memlayers::memory_layer {

struct StageCost {
  std::string name;  // one of kFwdStages / kBwdStages
  double bytes = 0;
  double flops = 0;
};

// The stages the composition enters for this config, in order: the forward's (projection,
// search, softmax, bag, and gating when the kind or the scalar gate has one) or, with
// `backward`, the backward's (gating_bwd, bag_bwd, softmax_bwd, search_bwd, projection_bwd).
// Throws memlayers::Error when the config or batch is invalid.
std::vector<StageCost> stage_costs(const Config& c, int64_t batch, bool backward);

}  // namespace memlayers::memory_layer
