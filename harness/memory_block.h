// The memory layers of a harness model (harness/model.h): the saved activations of each, the
// registered memory_layer::Fwd / memory_layer::Bwd variant that runs them on the model's backend,
// and the merge of their compact value-table gradients into the one list the sparse optimiser
// takes.
//
// The variant of a backend is the memory layer's own choice (memory_layer::parts::find_part, as
// its compositions pick their parts): the highest-numbered deterministic variant of that backend
// that supports the layer — `reference` on the reference backend, the cpu composition
// (cpu/v1_compose) on cpu, the CUDA composition (v1_compose) on cuda and, run on CPU threads,
// simt. A backend with none throws, naming what each variant refused.
//
// Memory parallelism (issue 8): given a communicator, the layers read a table split along its
// columns across the group (dist/sharded_embbag.h): this rank holds columns
// dist::ColumnSplit{value_dim, P}.begin(rank) to end(rank) of every row, and the memory layer's
// value read runs through the sharded EmbeddingBag (memory_layer::BagOverride) — the search stays
// local to the rank's tokens, the bags are all-gathered, each rank sums its columns for the
// group's tokens, and an all-to-all returns the outputs. The compact table gradient is then the
// shard's: the rows every token of the group touched, this rank's columns. memory and memory+
// only (peer reads two tables).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "dist/comm.h"
#include "harness/model.h"

namespace memlayers::dist {
class ShardBag;  // dist/sharded_memory_layer.h
}  // namespace memlayers::dist

namespace memlayers::harness {

// A compact gradient in host memory: strictly ascending row ids, `width` floats per row.
struct HostRows {
  std::vector<int64_t> ids;
  std::vector<float> rows;  // ids.size() × width, row-major
};

// The lists merged into one strictly ascending list: an id that several lists hold appears once,
// its rows summed in fp64 in list order and rounded once to fp32 (so the result does not depend
// on anything but the lists). Throws memlayers::Error for a list whose ids are negative or not
// strictly ascending, or whose rows are not ids × width floats.
HostRows merge_rows(const std::vector<HostRows>& lists, int64_t width);

class MemoryBlocks {
 public:
  // `comm` (optional, outliving this object): the memory-parallel group whose ranks each hold a
  // column shard of the table; null: the whole table here.
  MemoryBlocks(const Config& c, const ParamLayout& layout, const Ops& ops,
               dist::Comm* comm = nullptr);
  ~MemoryBlocks();
  MemoryBlocks(const MemoryBlocks&) = delete;
  MemoryBlocks& operator=(const MemoryBlocks&) = delete;

  // Sizes every buffer for `tokens` rows (reallocates only when the count changes). With a
  // communicator it is collective (the group's token count sizes the compact gradient).
  void resize(int64_t tokens);

  // The columns of the table this object's layers read: value_width, or the shard's.
  int64_t table_width() const { return width_; }

  // out = memory_layer(x) of the memory layer in model layer `layer`; x and out (tokens, d),
  // `values` the table (this rank's shard, table_width() columns) in the config's
  // memory.values_dtype. Keeps the layer's activations for its backward. Collective with a
  // communicator.
  void forward(int64_t layer, const float* params, const void* values, const float* x, float* out);

  // Starts a backward pass: forgets the table rows of the previous one.
  void begin_backward();
  // The backward of layer `layer`'s forward from dout: dx written (not accumulated), the dense
  // parameter gradients written at their offsets in `grads`, and, with `table_grad`, the layer's
  // compact value (and PEER's down, ids offset by N) gradient kept on the host for the merge.
  void backward(int64_t layer, const float* params, const void* values, const float* x,
                const float* dout, float* dx, float* grads, bool table_grad);
  // The merged table gradient of the layers' backward calls since begin_backward(), in buffers
  // this object owns (the backend's memory), valid until the next call.
  SparseRows finish_backward();

  // The last forward's selection of layer `layer`: (tokens, h, k) row ids, on the host.
  std::vector<int64_t> selection(int64_t layer) const;
  // "memory_layer_fwd <backend>/<variant>, memory_layer_bwd <backend>/<variant>" of the last
  // calls ("not run yet" before).
  std::string variants() const;

 private:
  struct Buffers;
  int64_t slot(int64_t layer) const;  // the index of `layer` in memory_layers
  memory_layer::Weights weights(int64_t layer, const float* params, const void* values) const;

  const Config& config_;
  const ParamLayout& layout_;
  const Ops& ops_;
  memory_layer::Config mc_;
  int64_t tokens_ = 0, group_tokens_ = 0, width_ = 0;
  dist::Comm* comm_ = nullptr;
  std::unique_ptr<dist::ShardBag> shard_;  // with a communicator: the sharded value read
  std::unique_ptr<Buffers> buf_;
  std::vector<HostRows> pending_;  // compact rows of this backward pass, in call order
  std::string fwd_variant_ = "not run yet", bwd_variant_ = "not run yet";
};

}  // namespace memlayers::harness
