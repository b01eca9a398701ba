// The memory layers of a harness model (harness/memory_block.h): buffers in the backend's memory,
// the registered variant per call, and the host merge of the compact table gradients.
#include "harness/memory_block.h"

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "common/error.h"
#include "dist/sharded_memory_layer.h"
#include "harness/arena.h"
#include "memory_layer/parts.h"

namespace memlayers::harness {

// ---- the merge ----

HostRows merge_rows(const std::vector<HostRows>& lists, int64_t width) {
  MEMLAYERS_CHECK(width >= 1, "merge_rows: width is {}: accepted are width ≥ 1", width);
  std::size_t total = 0;
  for (std::size_t l = 0; l < lists.size(); ++l) {
    const HostRows& r = lists[l];
    MEMLAYERS_CHECK(r.rows.size() == r.ids.size() * static_cast<std::size_t>(width),
                    "merge_rows: list {} has {} ids but {} floats: accepted are ids × width {} "
                    "floats",
                    l, r.ids.size(), r.rows.size(), width);
    for (std::size_t i = 0; i < r.ids.size(); ++i) {
      MEMLAYERS_CHECK(r.ids[i] >= 0,
                      "merge_rows: list {} holds row id {} at {}: accepted are ids "
                      "≥ 0",
                      l, r.ids[i], i);
      MEMLAYERS_CHECK(i == 0 || r.ids[i - 1] < r.ids[i],
                      "merge_rows: list {} is not strictly ascending at {} ({} after {}): "
                      "accepted are strictly ascending row ids",
                      l, i, r.ids[i], r.ids[i - 1]);
    }
    total += r.ids.size();
  }
  HostRows out;
  out.ids.reserve(total);
  out.rows.reserve(total * static_cast<std::size_t>(width));
  std::vector<std::size_t> next(lists.size(), 0);  // each list's first row not yet merged
  std::vector<double> sum(static_cast<std::size_t>(width));
  for (;;) {
    int64_t id = -1;
    for (std::size_t l = 0; l < lists.size(); ++l)
      if (next[l] < lists[l].ids.size() && (id < 0 || lists[l].ids[next[l]] < id))
        id = lists[l].ids[next[l]];
    if (id < 0) break;
    std::fill(sum.begin(), sum.end(), 0.0);
    for (std::size_t l = 0; l < lists.size(); ++l) {
      if (next[l] >= lists[l].ids.size() || lists[l].ids[next[l]] != id) continue;
      const float* row = lists[l].rows.data() + next[l] * static_cast<std::size_t>(width);
      for (int64_t j = 0; j < width; ++j) sum[j] += row[j];
      ++next[l];
    }
    out.ids.push_back(id);
    for (double v : sum) out.rows.push_back(static_cast<float>(v));
  }
  return out;
}

struct MemoryBlocks::Buffers {
  Arena arena;
  std::vector<memory_layer::Saved> saved;  // one per memory layer, in memory_layers order
  // The compact gradients of one backward call (values, and PEER's down experts), then the
  // merged list of the pass.
  int64_t *rows = nullptr, *count = nullptr, *down_rows = nullptr, *down_count = nullptr;
  float *compact = nullptr, *down_compact = nullptr;
  int64_t* merged_ids = nullptr;
  float* merged_rows = nullptr;
  int64_t merged_capacity = 0;

  // `tokens` this rank's; the compact gradients hold rows of the `group_tokens` whose bags the
  // layers read (the group's with a communicator, else tokens), `width` columns each.
  Buffers(const memory_layer::Config& mc, int64_t layers, int64_t table_rows, const Memory& mem,
          int64_t tokens, int64_t group_tokens, int64_t width)
      : arena(mem) {
    auto floats = [&](int64_t n) { return arena.floats(n); };
    auto ints = [&](int64_t n) { return arena.alloc<int64_t>(n); };
    const int64_t hk = tokens * mc.heads * mc.k;
    const bool peer = mc.kind == memory_layer::Kind::peer,
               plus = mc.kind == memory_layer::Kind::memory_plus;
    for (int64_t s = 0; s < layers; ++s) {
      memory_layer::Saved v;
      v.q = floats(tokens * mc.heads * mc.k_dim);
      v.indices = ints(hk);
      v.weights = floats(hk);
      if (plus) v.y = floats(tokens * mc.value_dim), v.hidden = floats(tokens * mc.value_dim);
      if (peer) v.peer_pre = floats(hk);
      saved.push_back(v);
    }
    const int64_t cap = memory_layer::compact_capacity(mc, group_tokens);
    rows = ints(cap), count = ints(1), compact = floats(cap * width);
    if (peer) down_rows = ints(cap), down_count = ints(1), down_compact = floats(cap * width);
    merged_capacity = std::min(table_rows, layers * cap * (peer ? 2 : 1));
    merged_ids = ints(merged_capacity), merged_rows = floats(merged_capacity * width);
  }
};

// ---- the layers ----

MemoryBlocks::MemoryBlocks(const Config& c, const ParamLayout& layout, const Ops& ops,
                           dist::Comm* comm)
    : config_(c), layout_(layout), ops_(ops), mc_(c.layer_config()), comm_(comm) {
  width_ = mc_.value_width();
  if (!comm_) return;
  MEMLAYERS_CHECK(mc_.kind != memory_layer::Kind::peer,
                  "model: memory parallelism splits the value table of memory and memory+ "
                  "layers; peer reads two tables (accepted: --model memory, memory+)");
  const dist::ColumnSplit split{mc_.value_width(), comm_->size()};
  width_ = split.width(comm_->rank());
  MEMLAYERS_CHECK(width_ >= 1,
                  "model: a value table of {} columns cannot be split over {} ranks: accepted "
                  "are at most as many ranks as columns",
                  mc_.value_width(), comm_->size());
  shard_ = std::make_unique<dist::ShardBag>(*comm_, ops_.backend, width_);
}

MemoryBlocks::~MemoryBlocks() = default;

void MemoryBlocks::resize(int64_t tokens) {
  int64_t group = tokens;
  if (comm_) {  // collective on every call: another rank's count may change when this one's not
    double n = static_cast<double>(tokens);
    comm_->all_reduce_sum_host(&n, 1);
    group = static_cast<int64_t>(n);
  }
  if (buf_ && tokens_ == tokens && group_tokens_ == group) return;
  buf_.reset();  // release the old buffers first
  buf_ = std::make_unique<Buffers>(mc_, static_cast<int64_t>(config_.memory_layers.size()),
                                   config_.table_rows(), *ops_.memory, tokens, group, width_);
  tokens_ = tokens, group_tokens_ = group;
}

int64_t MemoryBlocks::slot(int64_t layer) const {
  const auto& m = config_.memory_layers;
  const auto it = std::find(m.begin(), m.end(), layer);
  MEMLAYERS_CHECK(it != m.end(), "model: layer {} has no memory layer (memory_layers: {})", layer,
                  fmt::join(m, ", "));
  return it - m.begin();
}

memory_layer::Weights MemoryBlocks::weights(int64_t layer, const float* params,
                                            const void* values) const {
  const std::string p = "layer" + std::to_string(layer) + ".mem.";
  auto P = [&](const char* name) { return params + layout_.at(p + name).offset; };
  memory_layer::Weights w;
  w.wq = P("wq"), w.bq = P("bq"), w.keys1 = P("keys1"), w.keys2 = P("keys2");
  w.values = values;
  if (mc_.kind == memory_layer::Kind::peer)  // rows [N, 2N) of the table, in its dtype
    w.down = static_cast<const unsigned char*>(values) +
             mc_.num_values() * mc_.d_model * static_cast<int64_t>(dtype_size(mc_.values_dtype));
  if (mc_.kind == memory_layer::Kind::memory_plus)
    w.w1 = P("w1"), w.b1 = P("b1"), w.w2 = P("w2"), w.b2 = P("b2");
  return w;
}

namespace {

// The memory layer's own pick for the backend (memory_block.h).
template <class Op>
const Variant<typename Op::Params>& variant_for(Backend b, const typename Op::Params& p) {
  std::string why;
  const auto* v = memory_layer::parts::find_part<Op>(b, p, nullptr, why);
  MEMLAYERS_CHECK(v != nullptr, "model: the memory layer cannot run on backend {}: {}",
                  to_string(b), why);
  return *v;
}

}  // namespace

void MemoryBlocks::forward(int64_t layer, const float* params, const void* values, const float* x,
                           float* out) {
  MEMLAYERS_CHECK(buf_ != nullptr, "model: memory layer forward before resize()");
  memory_layer::FwdParams p;
  p.config = mc_;
  p.weights = weights(layer, params, values);
  p.x = x, p.out = out, p.batch = tokens_;
  p.saved = buf_->saved[slot(layer)];
  p.bag = shard_.get();
  const auto& v = variant_for<memory_layer::Fwd>(ops_.backend, p);
  Registry<memory_layer::Fwd>::run(v, p);
  fwd_variant_ = fmt::format("{}/{}", to_string(v.backend), v.name);
}

void MemoryBlocks::begin_backward() { pending_.clear(); }

void MemoryBlocks::backward(int64_t layer, const float* params, const void* values, const float* x,
                            const float* dout, float* dx, float* grads, bool table_grad) {
  MEMLAYERS_CHECK(buf_ != nullptr, "model: memory layer backward before resize()");
  const std::string p = "layer" + std::to_string(layer) + ".mem.";
  auto G = [&](const char* name) { return grads + layout_.at(p + name).offset; };
  const bool peer = mc_.kind == memory_layer::Kind::peer,
             plus = mc_.kind == memory_layer::Kind::memory_plus;
  memory_layer::BwdParams b;
  b.config = mc_;
  b.weights = weights(layer, params, values);
  b.x = x, b.grad_out = dout, b.batch = tokens_;
  b.saved = buf_->saved[slot(layer)];
  memory_layer::Grads& g = b.grads;
  g.x = dx, g.wq = G("wq"), g.bq = G("bq"), g.keys1 = G("keys1"), g.keys2 = G("keys2");
  if (plus) g.w1 = G("w1"), g.b1 = G("b1"), g.w2 = G("w2"), g.b2 = G("b2");
  b.bag = shard_.get();
  if (shard_) {  // the shard's compact gradient comes from the override, not the layer's Grads
    if (table_grad)
      shard_->set_table_grads(buf_->rows, buf_->compact, buf_->count);
    else
      shard_->set_table_grads(nullptr, nullptr, nullptr);
  } else if (table_grad) {
    g.value_rows = buf_->rows, g.values_compact = buf_->compact, g.num_value_rows = buf_->count;
    if (peer)
      g.down_rows = buf_->down_rows, g.down_compact = buf_->down_compact,
      g.num_down_rows = buf_->down_count;
  }
  const auto& v = variant_for<memory_layer::Bwd>(ops_.backend, b);
  Registry<memory_layer::Bwd>::run(v, b);
  bwd_variant_ = fmt::format("{}/{}", to_string(v.backend), v.name);
  if (!table_grad) return;

  // The compact lists to the host; PEER's down experts are rows [N, 2N) of the table.
  const Memory& mem = *ops_.memory;
  mem.synchronize();
  const int64_t width = width_, cap = memory_layer::compact_capacity(mc_, group_tokens_);
  auto fetch = [&](const int64_t* rows, const float* compact, const int64_t* count,
                   int64_t offset) {
    int64_t n = 0;
    mem.to_host(&n, count, sizeof(n));
    MEMLAYERS_CHECK(n >= 0 && n <= cap,
                    "model: the memory layer returned {} compact rows: accepted are 0 to {}", n,
                    cap);
    HostRows h;
    h.ids.resize(static_cast<std::size_t>(n));
    h.rows.resize(static_cast<std::size_t>(n * width));
    mem.to_host(h.ids.data(), rows, h.ids.size() * sizeof(int64_t));
    mem.to_host(h.rows.data(), compact, h.rows.size() * sizeof(float));
    for (int64_t& id : h.ids) id += offset;
    pending_.push_back(std::move(h));
  };
  fetch(buf_->rows, buf_->compact, buf_->count, 0);
  if (peer) fetch(buf_->down_rows, buf_->down_compact, buf_->down_count, mc_.num_values());
}

SparseRows MemoryBlocks::finish_backward() {
  MEMLAYERS_CHECK(buf_ != nullptr, "model: memory layer backward before resize()");
  const int64_t width = width_;
  const HostRows merged = merge_rows(pending_, width);
  pending_.clear();
  const auto n = static_cast<int64_t>(merged.ids.size());
  MEMLAYERS_CHECK(n <= buf_->merged_capacity,
                  "model: {} merged table rows exceed the {} the buffers hold", n,
                  buf_->merged_capacity);
  MEMLAYERS_CHECK(n == 0 || merged.ids.back() < config_.table_rows(),
                  "model: table row {} out of range [0, {})", merged.ids.back(),
                  config_.table_rows());
  const Memory& mem = *ops_.memory;
  mem.to_device(buf_->merged_ids, merged.ids.data(), merged.ids.size() * sizeof(int64_t));
  mem.to_device(buf_->merged_rows, merged.rows.data(), merged.rows.size() * sizeof(float));
  return {buf_->merged_ids, buf_->merged_rows, n};
}

std::vector<int64_t> MemoryBlocks::selection(int64_t layer) const {
  const int64_t s = slot(layer);
  MEMLAYERS_CHECK(buf_ != nullptr, "model selection: no loss() has run yet");
  std::vector<int64_t> out(static_cast<std::size_t>(tokens_ * mc_.heads * mc_.k));
  ops_.memory->synchronize();
  ops_.memory->to_host(out.data(), buf_->saved[s].indices, out.size() * sizeof(int64_t));
  return out;
}

std::string MemoryBlocks::variants() const {
  return fmt::format("memory_layer_fwd {}, memory_layer_bwd {}", fwd_variant_, bwd_variant_);
}

}  // namespace memlayers::harness
