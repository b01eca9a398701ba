// The memory layer (kernels/memory_layer/memory_layer.h) with its value table split along the
// columns across a memory-parallel group (issue 8), as in the reference implementation: the query
// projection, the product-key search, the softmax and Memory+'s gating run on each rank's own
// tokens with replicated weights; the value read runs through the sharded EmbeddingBag
// (dist/sharded_embbag.h) in the registered composition's place (memory_layer::BagOverride):
// the bags are all-gathered, each rank sums its columns for the group's tokens, and an
// all-to-all returns the outputs. In the backward, dy returns through the matching all-to-all,
// the dw partial sums are reduce-scattered (so the softmax and search backward see the whole
// dw), and the table's gradient stays on its shard. memory and memory_plus only (peer reads two
// tables); the backends whose composition accepts an override: cpu and simt with an mpi (or
// single) communicator, cuda with nccl.
//
// Results (tests/dist/sharded_memory_layer_test.cpp): the output is that of the unsharded layer
// on the rank's tokens, bitwise where the bag's arithmetic per column does not depend on the
// column's place in the row (simt; cpu with AVX-512), else within 1e-6; the shard's table gradient
// has the rows of the unsharded layer's on the group's tokens, and its values within rounding (each
// rank projects only its own tokens, and a GEMM may round a row differently at another height); dx
// and the dense parameter gradients differ from the unsharded layer's only in dw's order of
// addition (summed over shards).
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "common/backend.h"
#include "dist/comm.h"
#include "dist/sharded_embbag.h"
#include "memory_layer/memory_layer.h"

namespace memlayers::dist {

// The bag override itself, for callers that run the composition themselves (the harness): the
// composition's EmbeddingBag problems on this rank's shard of `width` columns.
class ShardBag final : public memory_layer::BagOverride {
 public:
  ShardBag(Comm& comm, Backend backend, int64_t width);
  void forward(const embbag::FwdParams& p) override;
  void backward(const embbag::BwdParams& p) override;
  // Where the next backward writes the shard's table gradient (all null: dw only): the compact
  // rows (capacity: the group's tokens · heads · k rows of `width`) and/or the dense (num_rows,
  // width). The composition's own value-gradient pointers are ignored.
  void set_table_grads(int64_t* rows, float* compact, int64_t* count, float* dense = nullptr);
  const ShardedEmbBag& op() const { return op_; }

 private:
  ShardedEmbBag op_;
  int64_t width_;
  int64_t *rows_ = nullptr, *count_ = nullptr;
  float *compact_ = nullptr, *dense_ = nullptr;
};

class ShardedMemoryLayer {
 public:
  // Throws memlayers::Error for peer, or a value width smaller than the group.
  ShardedMemoryLayer(Comm& comm, Backend backend, const memory_layer::Config& c);
  ~ShardedMemoryLayer();
  ShardedMemoryLayer(const ShardedMemoryLayer&) = delete;
  ShardedMemoryLayer& operator=(const ShardedMemoryLayer&) = delete;

  // This rank's columns of the table: [column(), column() + width()).
  int64_t column() const { return split_.begin(comm_.rank()); }
  int64_t width() const { return split_.width(comm_.rank()); }

  // p as memory_layer::FwdParams for this rank's own tokens (p.config the one given above),
  // with p.weights.values this rank's (num_values, width()) shard. Collective.
  void forward(memory_layer::FwdParams p);
  // p as memory_layer::BwdParams, with the table's gradient of the shard: p.grads.value_rows,
  // values_compact, num_value_rows (capacity: the group's tokens · heads · k rows of width())
  // and/or values_dense (num_values, width()). Collective.
  void backward(memory_layer::BwdParams p);

  // "memory_layer_fwd <backend>/<variant>, memory_layer_bwd <backend>/<variant>; <the bag's>".
  std::string variants() const;

 private:
  Comm& comm_;
  Backend backend_;
  memory_layer::Config config_;
  ColumnSplit split_;
  ShardBag bag_;
  std::string fwd_ = "not run yet", bwd_ = "not run yet";
};

}  // namespace memlayers::dist
