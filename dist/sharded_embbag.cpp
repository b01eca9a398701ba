// The EmbeddingBag sharded along the embedding dimension (dist/sharded_embbag.h): the control
// header, the collectives around the backend's registered variants, and the workspace.
//
// Every call starts with one small collective, the header: each rank's batch, the shape and
// whether its problem passed validation, all-reduced as fp64 host values (all_reduce_sum_host
// serves every engine, nccl included). From it every rank reaches the same verdict — a shape
// that differs, a refused problem, an empty group — and throws the same error before any data
// moves. What can still fail after it (a variant that refuses the gathered problem, an engine
// error) throws on that rank only; executables end the group then (comm.h: abort_group).
//
// Column slices move with Memory::copy_2d (one cudaMemcpy2D on the GPU rather than a copy per
// row). The forward's all-to-all needs no packing: rank r's (B_total, width(r)) partial output
// holds each destination's tokens as one contiguous block of rows.
#include "dist/sharded_embbag.h"

#include <algorithm>
#include <cstring>
#include <numeric>
#include <vector>

#include <fmt/format.h>

#include "common/error.h"
#include "common/registry.h"
#include "memory_layer/parts.h"

namespace memlayers::dist {

int64_t ColumnSplit::begin(int r) const {
  MEMLAYERS_CHECK(ranks >= 1 && dim >= 0 && r >= 0 && r <= ranks,
                  "ColumnSplit: rank {} of a split of dim {} over {} ranks: accepted dim >= 0, "
                  "ranks >= 1, 0 <= rank <= ranks",
                  r, dim, ranks);
  return r * (dim / ranks) + std::min<int64_t>(r, dim % ranks);
}

int64_t ColumnSplit::end(int r) const { return begin(r + 1); }

CommBytes comm_bytes_per_token(int64_t dim, int64_t k, DType index_dtype, int ranks) {
  MEMLAYERS_CHECK(ranks >= 1 && dim >= 1 && k >= 1,
                  "comm_bytes_per_token: dim {}, k {}, ranks {}: accepted dim, k, ranks >= 1", dim,
                  k, ranks);
  const double P = ranks, others = P - 1;
  const double bags = static_cast<double>(k) * (static_cast<double>(dtype_size(index_dtype)) + 4);
  const double columns = static_cast<double>(dim) * 4 * others / P;
  CommBytes c;
  c.fwd_all_gather = bags * others;
  c.fwd_all_to_all = columns;
  c.bwd_all_gather = bags * others;
  c.bwd_all_to_all = columns;
  c.bwd_reduce_scatter = static_cast<double>(k) * 4 * others;
  return c;
}

namespace {

using embbag::BwdParams;
using embbag::FwdParams;

// A stand-in for pointers a rank does not have yet (the gathered buffers before the header) or
// need not have (batch 0): validation checks only that they are set and aligned.
alignas(64) char placeholder[64];

// A buffer in the backend's memory that only grows.
class Workspace {
 public:
  explicit Workspace(const Memory& m) : mem_(m) {}
  ~Workspace() {
    if (ptr_) mem_.release(ptr_);
  }
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;
  template <class T = void>
  T* get(int64_t bytes) {
    const auto need = static_cast<std::size_t>(std::max<int64_t>(bytes, 64));
    if (need > cap_) {
      if (ptr_) mem_.release(ptr_);
      ptr_ = nullptr;
      ptr_ = mem_.alloc(need);
      cap_ = need;
    }
    return static_cast<T*>(ptr_);
  }

 private:
  const Memory& mem_;
  void* ptr_ = nullptr;
  std::size_t cap_ = 0;
};

// The highest-numbered deterministic variant of Op on `b` that supports p (memory_layer/parts.h
// find_part's rule), or the one named. Null, with `why`, when none will do.
template <class Op>
const Variant<typename Op::Params>* choose(Backend b, const std::string& name,
                                           const typename Op::Params& p, std::string& why) {
  if (!name.empty()) {
    const Variant<typename Op::Params>* v = nullptr;
    try {
      v = &Registry<Op>::find(b, name);
    } catch (const Error& e) {
      why = e.what();
      return nullptr;
    }
    if (std::string r = v->supports(p); !r.empty()) {
      why = fmt::format("{}/{} does not support the shard: {}", Op::name, name, r);
      return nullptr;
    }
    return v;
  }
  return memory_layer::parts::find_part<Op>(b, p, nullptr, why);
}

// Every rank's text, in rank order (the error path only: fp64 host values serve every engine).
std::vector<std::string> gather_texts(Comm& comm, const std::string& mine) {
  const int P = comm.size(), me = comm.rank();
  std::vector<double> lens(static_cast<std::size_t>(P), 0.0);
  lens[me] = static_cast<double>(mine.size());
  comm.all_reduce_sum_host(lens.data(), P);
  std::vector<int64_t> off(static_cast<std::size_t>(P) + 1, 0);
  for (int r = 0; r < P; ++r) off[r + 1] = off[r] + static_cast<int64_t>(lens[r]);
  std::vector<double> chars(static_cast<std::size_t>(off[P]), 0.0);
  for (std::size_t i = 0; i < mine.size(); ++i)
    chars[off[me] + i] = static_cast<unsigned char>(mine[i]);
  comm.all_reduce_sum_host(chars.data(), off[P]);
  std::vector<std::string> out(static_cast<std::size_t>(P));
  for (int r = 0; r < P; ++r)
    for (int64_t i = off[r]; i < off[r + 1]; ++i) out[r] += static_cast<char>(chars[i]);
  return out;
}

// The header's fields, one row of kHeaderValues per rank.
enum Field { kBatch, kDim, kK, kRows, kValuesDtype, kIndexDtype, kWantsDw, kRefused };
static_assert(kRefused + 1 == ShardedEmbBag::kHeaderValues);

struct Group {
  std::vector<int64_t> batch;  // every rank's
  int64_t total = 0;
  bool any_dw = false;
};

// The header exchange and the verdict every rank reaches from it (see the file comment).
Group agree(Comm& comm, const char* op, const std::string& local_error, int64_t batch, int64_t dim,
            int64_t k, int64_t num_rows, DType values_dtype, DType index_dtype, bool wants_dw) {
  constexpr int H = ShardedEmbBag::kHeaderValues;
  const int P = comm.size(), me = comm.rank();
  std::vector<double> h(static_cast<std::size_t>(P) * H, 0.0);
  double* row = h.data() + static_cast<std::size_t>(me) * H;
  row[kBatch] = static_cast<double>(batch);
  row[kDim] = static_cast<double>(dim);
  row[kK] = static_cast<double>(k);
  row[kRows] = static_cast<double>(num_rows);
  row[kValuesDtype] = static_cast<double>(values_dtype);
  row[kIndexDtype] = static_cast<double>(index_dtype);
  row[kWantsDw] = wants_dw ? 1.0 : 0.0;
  row[kRefused] = local_error.empty() ? 0.0 : 1.0;
  comm.all_reduce_sum_host(h.data(), static_cast<int64_t>(h.size()));

  auto at = [&](int r, Field f) { return h[static_cast<std::size_t>(r) * H + f]; };
  bool same_shape = true, refused = false;
  Group g;
  for (int r = 0; r < P; ++r) {
    for (Field f : {kDim, kK, kRows, kValuesDtype, kIndexDtype})
      same_shape = same_shape && at(r, f) == at(0, f);
    refused = refused || at(r, kRefused) != 0;
    g.batch.push_back(static_cast<int64_t>(at(r, kBatch)));
    g.any_dw = g.any_dw || at(r, kWantsDw) != 0;
  }
  if (!same_shape)  // every rank sees it: check_agreement throws the same error on each
    check_agreement(comm, fmt::format("the shape of the sharded {}", op),
                    fmt::format("dim {} k {} num_rows {} values {} indices {}", dim, k, num_rows,
                                to_string(values_dtype), to_string(index_dtype)));
  if (refused) {
    const auto why = gather_texts(comm, local_error);
    std::string all;
    for (int r = 0; r < P; ++r)
      if (!why[r].empty())
        all += fmt::format("{}rank {} of {}: {}", all.empty() ? "" : "; ", r, P, why[r]);
    fail("sharded {}: {}", op, all);
  }
  for (int64_t b : g.batch) g.total += b;  // each batch >= 0: a negative one was refused
  MEMLAYERS_CHECK(g.total >= 1,
                  "sharded {}: the group has no bags (every rank's batch is 0): accepted a total "
                  "of at least 1 over the group",
                  op);
  return g;
}

}  // namespace

struct ShardedEmbBag::State {
  State(Comm& c, Backend b, std::string f, std::string w)
      : comm(c),
        backend(b),
        mem(*backend_info(b).memory),
        fwd_name(std::move(f)),
        bwd_name(std::move(w)),
        idx(mem),
        weights(mem),
        part(mem),
        blocks(mem),
        dw(mem),
        dw_mine(mem) {}
  Comm& comm;
  Backend backend;
  const Memory& mem;
  std::string fwd_name, bwd_name;            // requested ("" = the rule)
  std::string fwd_used, bwd_used;            // "<backend>/<variant>" of the last calls
  std::string fwd_name_used, bwd_name_used;  // the variant alone; "" without columns
  int64_t total = 0;
  Workspace idx, weights;  // the gathered (B_total, k) bags
  Workspace part;          // (B_total, width): the forward's partial outputs, the backward's dy
  Workspace blocks;        // (batch, dim) in per-rank column blocks: the all-to-all's other side
  Workspace dw;            // (B_total, k) dw partial sums
  Workspace dw_mine;       // (batch, k) dw of a rank that did not ask for it

  ColumnSplit split(int64_t dim) const { return {dim, comm.size()}; }
};

ShardedEmbBag::ShardedEmbBag(Comm& comm, Backend backend, std::string fwd_variant,
                             std::string bwd_variant) {
  const BackendInfo& info = backend_info(backend);
  if (std::string why = usable(backend); !why.empty() || !info.memory)
    fail("ShardedEmbBag: backend {} cannot run here: {}", to_string(backend),
         why.empty() ? "it has no memory operations" : why);
  const bool device = backend == Backend::cuda, nccl = comm.name() == "nccl";
  MEMLAYERS_CHECK(device == nccl,
                  "ShardedEmbBag: backend {} with communicator '{}': the communicator must serve "
                  "the backend's memory; accepted nccl with cuda, and mpi or single with "
                  "reference, cpu and simt",
                  to_string(backend), comm.name());
  s_ = std::make_unique<State>(comm, backend, std::move(fwd_variant), std::move(bwd_variant));
}

ShardedEmbBag::~ShardedEmbBag() = default;

int64_t ShardedEmbBag::total_batch() const { return s_->total; }

std::string ShardedEmbBag::variants() const {
  return fmt::format("embbag_fwd {}, embbag_bwd {}",
                     s_->fwd_used.empty() ? "(not run)" : s_->fwd_used,
                     s_->bwd_used.empty() ? "(not run)" : s_->bwd_used);
}

std::string ShardedEmbBag::fwd_variant() const { return s_->fwd_name_used; }
std::string ShardedEmbBag::bwd_variant() const { return s_->bwd_name_used; }

// ---- forward ----

void ShardedEmbBag::forward(const FwdParams& p) {
  State& s = *s_;
  Comm& comm = s.comm;
  const int P = comm.size(), me = comm.rank();
  const ColumnSplit cs = s.split(std::max<int64_t>(p.dim, 0));
  const int64_t width = p.dim >= 1 ? cs.width(me) : 0, begin = p.dim >= 1 ? cs.begin(me) : 0;

  // This rank's checks, before the header: its own bags and outputs at the full dim, then the
  // shard (the gathered buffers do not exist yet: placeholders stand in for them).
  std::string error;
  const Variant<FwdParams>* v = nullptr;
  FwdParams own = p;
  own.values_stride = 0;
  if (!own.values && width == 0) own.values = placeholder;
  if (p.batch == 0) {
    own.batch = 1;
    if (!own.indices) own.indices = placeholder;
    if (!own.weights) own.weights = reinterpret_cast<const float*>(placeholder);
    if (!own.out) own.out = placeholder;
  }
  if (p.batch < 0)
    error =
        fmt::format("batch = {}: accepted batch >= 0 on each rank (at least 1 in all)", p.batch);
  else if (std::string e = embbag::validate(own); !e.empty())
    error = "this rank's bags: " + e;
  else if (p.out_dtype != DType::f32)
    error = fmt::format(
        "out_dtype = {}: accepted fp32 (the all-to-all carries the shards' fp32 partial sums)",
        to_string(p.out_dtype));
  FwdParams shard = p;
  shard.dim = width;
  shard.batch = std::max<int64_t>(p.batch, 1);
  shard.indices = placeholder;
  shard.weights = reinterpret_cast<const float*>(placeholder);
  shard.out = placeholder;
  shard.out_stride = 0;
  shard.out_dtype = DType::f32;
  if (error.empty() && width > 0) {
    if (std::string e = embbag::validate(shard); !e.empty())
      error =
          fmt::format("the shard (columns [{}, {}) of dim {}): {}", begin, begin + width, p.dim, e);
    else if (!(v = choose<embbag::Fwd>(s.backend, s.fwd_name, shard, error)))
      error = fmt::format("the shard (columns [{}, {}) of dim {}): {}", begin, begin + width, p.dim,
                          error);
  }

  const Group g = agree(comm, "embbag_fwd", error, p.batch, p.dim, p.k, p.num_rows, p.values_dtype,
                        p.index_dtype, false);
  s.total = g.total;
  s.fwd_name_used = v ? v->name : "";
  s.fwd_used = v ? fmt::format("{}/{}", to_string(s.backend), v->name)
                 : fmt::format("{}/(no columns on rank {})", to_string(s.backend), me);

  if (P == 1) {  // the whole table: the unsharded op, no copies
    Registry<embbag::Fwd>::run(*v, p);
    return;
  }

  // The bags of the whole group.
  const int64_t k = p.k, s_idx = static_cast<int64_t>(dtype_size(p.index_dtype));
  std::vector<int64_t> idx_bytes(P), w_bytes(P);
  for (int r = 0; r < P; ++r) {
    idx_bytes[r] = g.batch[r] * k * s_idx;
    w_bytes[r] = g.batch[r] * k * 4;
  }
  void* idx = s.idx.get(g.total * k * s_idx);
  auto* weights = s.weights.get<float>(g.total * k * 4);
  comm.all_gather(p.indices, idx, idx_bytes);
  comm.all_gather(p.weights, weights, w_bytes);

  // This rank's columns of every bag.
  auto* part = s.part.get<float>(g.total * width * 4);
  if (width > 0) {
    shard.batch = g.total;
    shard.indices = idx;
    shard.weights = weights;
    shard.out = part;
    Registry<embbag::Fwd>::run(*v, shard);
  }

  // Rows [off_r, off_r + b_r) of the partial output go to rank r; from rank t come its columns of
  // this rank's bags, (batch, width(t)), one block after the other.
  std::vector<int64_t> send_bytes(P), recv_bytes(P);
  for (int r = 0; r < P; ++r) {
    send_bytes[r] = g.batch[r] * width * 4;
    recv_bytes[r] = p.batch * cs.width(r) * 4;
  }
  auto* blocks = s.blocks.get<float>(p.batch * p.dim * 4);
  comm.all_to_all(part, send_bytes, blocks, recv_bytes);
  const int64_t os = p.out_stride ? p.out_stride : p.dim;
  int64_t off = 0;
  for (int t = 0; t < P; ++t) {
    const int64_t wt = cs.width(t);
    if (wt > 0 && p.batch > 0)
      s.mem.copy_2d(static_cast<float*>(p.out) + cs.begin(t), static_cast<std::size_t>(os) * 4,
                    blocks + off, static_cast<std::size_t>(wt) * 4,
                    static_cast<std::size_t>(wt) * 4, static_cast<std::size_t>(p.batch));
    off += p.batch * wt;
  }
}

// ---- backward ----

void ShardedEmbBag::backward(const BwdParams& p) {
  State& s = *s_;
  Comm& comm = s.comm;
  const int P = comm.size(), me = comm.rank();
  const ColumnSplit cs = s.split(std::max<int64_t>(p.dim, 0));
  const int64_t width = p.dim >= 1 ? cs.width(me) : 0, begin = p.dim >= 1 ? cs.begin(me) : 0;

  std::string error;
  const Variant<BwdParams>* v = nullptr;
  BwdParams own = p;
  own.values_stride = 0;
  if (!own.values && width == 0) own.values = placeholder;
  if (p.batch == 0) {
    own.batch = 1;
    if (!own.indices) own.indices = placeholder;
    if (!own.weights) own.weights = reinterpret_cast<const float*>(placeholder);
    if (!own.grad_out) own.grad_out = reinterpret_cast<const float*>(placeholder);
  }
  if (p.batch < 0)
    error =
        fmt::format("batch = {}: accepted batch >= 0 on each rank (at least 1 in all)", p.batch);
  else if (std::string e = embbag::validate(own); !e.empty())
    error = "this rank's bags: " + e;
  // The shard's problem with dw always on: whether any rank wants it is known after the header.
  BwdParams shard = p;
  shard.dim = width;
  shard.batch = std::max<int64_t>(p.batch, 1);
  shard.indices = placeholder;
  shard.weights = reinterpret_cast<const float*>(placeholder);
  shard.grad_out = reinterpret_cast<const float*>(placeholder);
  shard.grad_weights = reinterpret_cast<float*>(placeholder);
  if (error.empty() && width > 0) {
    if (std::string e = embbag::validate(shard); !e.empty())
      error =
          fmt::format("the shard (columns [{}, {}) of dim {}): {}", begin, begin + width, p.dim, e);
    else if (!(v = choose<embbag::Bwd>(s.backend, s.bwd_name, shard, error)))
      error = fmt::format("the shard (columns [{}, {}) of dim {}): {}", begin, begin + width, p.dim,
                          error);
  }

  const Group g = agree(comm, "embbag_bwd", error, p.batch, p.dim, p.k, p.num_rows, p.values_dtype,
                        p.index_dtype, p.grad_weights != nullptr);
  s.total = g.total;
  s.bwd_name_used = v ? v->name : "";
  s.bwd_used = v ? fmt::format("{}/{}", to_string(s.backend), v->name)
                 : fmt::format("{}/(no columns on rank {})", to_string(s.backend), me);

  if (P == 1) {
    Registry<embbag::Bwd>::run(*v, p);
    return;
  }

  const int64_t k = p.k, s_idx = static_cast<int64_t>(dtype_size(p.index_dtype));
  std::vector<int64_t> idx_bytes(P), w_bytes(P);
  for (int r = 0; r < P; ++r) {
    idx_bytes[r] = g.batch[r] * k * s_idx;
    w_bytes[r] = g.batch[r] * k * 4;
  }
  void* idx = s.idx.get(g.total * k * s_idx);
  auto* weights = s.weights.get<float>(g.total * k * 4);
  comm.all_gather(p.indices, idx, idx_bytes);
  comm.all_gather(p.weights, weights, w_bytes);

  // dy's columns of rank s, (batch, width(s)), one block after the other, go to rank s; from
  // rank t come this rank's columns of t's bags: together the (B_total, width) dy of the shard.
  auto* blocks = s.blocks.get<float>(p.batch * p.dim * 4);
  std::vector<int64_t> send_bytes(P), recv_bytes(P);
  int64_t off = 0;
  for (int r = 0; r < P; ++r) {
    const int64_t wr = cs.width(r);
    if (wr > 0 && p.batch > 0)
      s.mem.copy_2d(blocks + off, static_cast<std::size_t>(wr) * 4, p.grad_out + cs.begin(r),
                    static_cast<std::size_t>(p.dim) * 4, static_cast<std::size_t>(wr) * 4,
                    static_cast<std::size_t>(p.batch));
    off += p.batch * wr;
    send_bytes[r] = p.batch * wr * 4;
    recv_bytes[r] = g.batch[r] * width * 4;
  }
  auto* dy = s.part.get<float>(g.total * width * 4);
  comm.all_to_all(blocks, send_bytes, dy, recv_bytes);

  float* dw = g.any_dw ? s.dw.get<float>(g.total * k * 4) : nullptr;
  if (width > 0) {
    shard.batch = g.total;
    shard.indices = idx;
    shard.weights = weights;
    shard.grad_out = dy;
    shard.grad_weights = dw;
    if (dw || shard.grad_values_dense || shard.unique_rows) Registry<embbag::Bwd>::run(*v, shard);
  } else {
    // No columns: the dot products are empty (zero partial sums), the dense dV has no elements,
    // and the compact dV lists the touched rows with no columns (computed on the host: the
    // degenerate case dim < P is not worth a kernel).
    if (dw) s.mem.fill_bytes(dw, 0, static_cast<std::size_t>(g.total * k * 4));
    if (p.unique_rows) {
      std::vector<int64_t> rows(static_cast<std::size_t>(g.total * k));
      if (p.index_dtype == DType::i64) {
        s.mem.to_host(rows.data(), idx, rows.size() * 8);
      } else {
        std::vector<int32_t> r32(rows.size());
        s.mem.to_host(r32.data(), idx, r32.size() * 4);
        std::copy(r32.begin(), r32.end(), rows.begin());
      }
      std::sort(rows.begin(), rows.end());
      rows.erase(std::unique(rows.begin(), rows.end()), rows.end());
      const int64_t n = static_cast<int64_t>(rows.size());
      s.mem.to_device(p.unique_rows, rows.data(), rows.size() * 8);
      s.mem.to_device(p.num_unique, &n, 8);
    }
  }

  if (dw) {
    std::vector<int64_t> counts(P);
    for (int r = 0; r < P; ++r) counts[r] = g.batch[r] * k;
    float* mine = p.grad_weights ? p.grad_weights : s.dw_mine.get<float>(p.batch * k * 4);
    comm.reduce_scatter_sum(dw, mine, counts);
  }
}

}  // namespace memlayers::dist
