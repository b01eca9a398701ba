// The memory layer with its value table sharded along the columns (dist/sharded_memory_layer.h).
#include "dist/sharded_memory_layer.h"

#include <fmt/format.h>

#include "common/error.h"
#include "common/registry.h"
#include "memory_layer/parts.h"

namespace memlayers::dist {

// ---- the bag override ----

ShardBag::ShardBag(Comm& comm, Backend backend, int64_t width)
    : op_(comm, backend), width_(width) {}

void ShardBag::forward(const embbag::FwdParams& p) {
  embbag::FwdParams q = p;
  q.values_stride = width_;  // the shard's rows; q.dim stays the table's full width
  op_.forward(q);
}

void ShardBag::backward(const embbag::BwdParams& p) {
  embbag::BwdParams q = p;
  q.values_stride = width_;
  q.unique_rows = rows_, q.grad_values_compact = compact_, q.num_unique = count_;
  q.grad_values_dense = dense_;
  op_.backward(q);
}

void ShardBag::set_table_grads(int64_t* rows, float* compact, int64_t* count, float* dense) {
  rows_ = rows, compact_ = compact, count_ = count, dense_ = dense;
}

// ---- the layer ----

namespace {

const memory_layer::Config& checked(const memory_layer::Config& c, int ranks) {
  if (std::string why = memory_layer::validate(c); !why.empty()) fail("memory layer: {}", why);
  MEMLAYERS_CHECK(c.kind != memory_layer::Kind::peer,
                  "sharded memory layer: kind peer reads two tables; accepted are memory and "
                  "memory_plus");
  MEMLAYERS_CHECK(c.value_width() >= ranks,
                  "sharded memory layer: a value table of {} columns over {} ranks: accepted "
                  "are at most as many ranks as columns",
                  c.value_width(), ranks);
  return c;
}

// The layer's own pick on the backend (memory_layer/parts.h): its highest-numbered deterministic
// variant that supports p (with the override: the compositions, never the reference).
template <class Op>
const Variant<typename Op::Params>& variant_for(Backend b, const typename Op::Params& p) {
  std::string why;
  const auto* v = memory_layer::parts::find_part<Op>(b, p, nullptr, why);
  MEMLAYERS_CHECK(v != nullptr, "sharded memory layer on backend {}: {}", to_string(b), why);
  return *v;
}

}  // namespace

ShardedMemoryLayer::ShardedMemoryLayer(Comm& comm, Backend backend, const memory_layer::Config& c)
    : comm_(comm),
      backend_(backend),
      config_(checked(c, comm.size())),
      split_{c.value_width(), comm.size()},
      bag_(comm, backend, split_.width(comm.rank())) {}

ShardedMemoryLayer::~ShardedMemoryLayer() = default;

void ShardedMemoryLayer::forward(memory_layer::FwdParams p) {
  p.config = config_;
  p.bag = &bag_;
  const auto& v = variant_for<memory_layer::Fwd>(backend_, p);
  Registry<memory_layer::Fwd>::run(v, p);
  fwd_ = fmt::format("{}/{}", to_string(v.backend), v.name);
}

void ShardedMemoryLayer::backward(memory_layer::BwdParams p) {
  p.config = config_;
  memory_layer::Grads& g = p.grads;
  bag_.set_table_grads(g.value_rows, g.values_compact, g.num_value_rows, g.values_dense);
  g.value_rows = nullptr, g.values_compact = nullptr, g.num_value_rows = nullptr;
  g.values_dense = nullptr;
  p.bag = &bag_;
  const auto& v = variant_for<memory_layer::Bwd>(backend_, p);
  Registry<memory_layer::Bwd>::run(v, p);
  bag_.set_table_grads(nullptr, nullptr, nullptr);
  bwd_ = fmt::format("{}/{}", to_string(v.backend), v.name);
}

std::string ShardedMemoryLayer::variants() const {
  return fmt::format("memory_layer_fwd {}, memory_layer_bwd {}; sharded bag: {}", fwd_, bwd_,
                     bag_.op().variants());
}

}  // namespace memlayers::dist
