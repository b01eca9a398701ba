// The memory layer against its definition: the fp64 reference backward against central finite
// differences of the reference forward (selection held fixed) for every parameter and x, every
// kind, qk_norm and scalar gate on and off; every registered forward and backward variant against
// the reference on fresh random inputs (DESIGN.md §4: outputs poisoned first, every output
// compared, inputs and references non-trivial; the selection checked like pk_topk's, so near-ties
// may reorder); bitwise determinism; a planted bug the checker must reject; error paths.
// Build and run: cmake --build build --target memory_layer_test && ctest --test-dir build -L
// memory_layer
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <ostream>
#include <set>
#include <string>
#include <type_traits>
#include <vector>

#include "common/stages.h"
#include "embbag/embbag.h"
#include "memory_layer/cpu/v1_compose.h"
#include "memory_layer/memory_layer.h"
#include "memory_layer/parts.h"
#include "memory_layer/weights_io.h"
#include "pk_topk/pk_topk.h"
#include "reference/embbag.h"
#include "reference/memory_layer.h"
#include "reference/pk_topk.h"
#include "tests/common/buffer.h"
#include "tests/common/cases.h"
#include "tests/common/check.h"
#include "tests/common/random.h"

namespace memlayers::memory_layer {
namespace {

using test::CheckResult;
using test::DeviceBuffer;
using test::variant_label;

// ---- problems ----

struct Shape {
  int64_t batch, d, heads, n_keys, k_dim, k, value_dim;  // value_dim: memory+ only
};

std::string shape_label(const Shape& s) {
  return fmt::format("b{}_d{}_h{}_nk{}_n{}_k{}_v{}", s.batch, s.d, s.heads, s.n_keys, s.k_dim, s.k,
                     s.value_dim);
}

std::string kind_short(Kind k) {
  return k == Kind::memory ? "mem" : k == Kind::memory_plus ? "memplus" : "peer";
}

Config make_config(Kind kind, const Shape& s, bool norm, bool gate, DType vt) {
  Config c;
  c.kind = kind, c.d_model = s.d, c.heads = s.heads, c.n_keys = s.n_keys, c.k_dim = s.k_dim;
  c.k = s.k, c.value_dim = kind == Kind::memory_plus ? s.value_dim : s.d;
  c.qk_norm = norm, c.scalar_gate = gate, c.values_dtype = vt;
  return c;
}

std::string config_label(const Config& c) {
  return fmt::format("{}_{}{}{}", kind_short(c.kind), test::short_name(c.values_dtype),
                     c.qk_norm ? "_norm" : "", c.scalar_gate ? "_gate" : "");
}

struct Problem {
  Config c;
  int64_t batch;
  HostWeights w;
  std::vector<float> x, dout;
};

// Scales keep the scores O(1) (a softmax that is neither flat nor one-hot) and the PEER and
// memory+ pre-activations in the curved part of gelu and silu.
Problem make_problem(const std::string& seed, const Config& c, int64_t batch) {
  test::Rng rng(seed);
  Problem p{c, batch, {}, {}, {}};
  p.w.config = c;
  auto fill = [&](std::vector<float>& v, int64_t n, double scale) {
    v.resize(static_cast<std::size_t>(n));
    for (float& e : v) e = static_cast<float>(rng.signed_unit() * scale);
  };
  const int64_t d = c.d_model, hn = c.heads * c.k_dim, v = c.value_dim;
  fill(p.w.wq, d * hn, 1 / std::sqrt(double(d)));
  fill(p.w.bq, hn, 0.5);
  fill(p.w.keys1, c.heads * c.n_keys * c.k_dim / 2, 1 / std::sqrt(double(c.k_dim / 2)));
  fill(p.w.keys2, c.heads * c.n_keys * c.k_dim / 2, 1 / std::sqrt(double(c.k_dim / 2)));
  p.w.values = test::random_values(rng, c.values_dtype,
                                   static_cast<std::size_t>(c.num_values() * c.value_width()));
  if (c.kind == Kind::peer)
    p.w.down =
        test::random_values(rng, c.values_dtype, static_cast<std::size_t>(c.num_values() * d));
  if (c.kind == Kind::memory_plus) {
    fill(p.w.w1, d * v, 2 / std::sqrt(double(d)));
    fill(p.w.b1, v, 0.5);
    fill(p.w.w2, v * d, 1 / std::sqrt(double(v)));
    fill(p.w.b2, d, 0.5);
  }
  if (c.scalar_gate) fill(p.w.wg, d, 1 / std::sqrt(double(d)));
  fill(p.x, batch * d, 1.0);
  fill(p.dout, batch * d, 1.0);
  return p;
}

// Sizes of the Saved fields the config uses (0: not used).
struct SavedSizes {
  int64_t q, scores, indices, weights, y, hidden, peer_pre, gate;
};
SavedSizes saved_sizes(const Config& c, int64_t B) {
  const int64_t hk = c.heads * c.k;
  return {B * c.heads * c.k_dim,
          B * hk,
          B * hk,
          B * hk,
          B * (c.kind == Kind::memory_plus ? c.value_dim : c.d_model),
          c.kind == Kind::memory_plus ? B * c.value_dim : 0,
          c.kind == Kind::peer ? B * hk : 0,
          c.scalar_gate ? B : 0};
}

// Host copies of what a forward wrote.
struct FwdOut {
  std::vector<float> out, q, scores, weights, y, hidden, peer_pre, gate;
  std::vector<int64_t> indices;
};

// A problem in one backend's memory: weights, x, dout, out and the Saved buffers.
class Session {
 public:
  Session(Backend b, const Problem& pr) : mem_(*backend_info(b).memory), pr_(pr) {
    const HostWeights& h = pr.w;
    w_.wq = up(h.wq), w_.bq = up(h.bq), w_.keys1 = up(h.keys1), w_.keys2 = up(h.keys2);
    w_.values = up(h.values), w_.down = up(h.down);
    w_.w1 = up(h.w1), w_.b1 = up(h.b1), w_.w2 = up(h.w2), w_.b2 = up(h.b2), w_.wg = up(h.wg);
    x_ = up(pr.x);
    dout_ = up(pr.dout);
    out_ = alloc<float>(pr.batch * pr.c.d_model);
    const SavedSizes z = saved_sizes(pr.c, pr.batch);
    s_.q = alloc<float>(z.q), s_.scores = alloc<float>(z.scores);
    s_.indices = alloc<int64_t>(z.indices), s_.weights = alloc<float>(z.weights);
    s_.y = alloc<float>(z.y), s_.hidden = alloc<float>(z.hidden);
    s_.peer_pre = alloc<float>(z.peer_pre), s_.gate = alloc<float>(z.gate);
  }

  FwdParams fwd(bool keep) const {
    FwdParams p;
    p.config = pr_.c, p.weights = w_, p.x = x_, p.out = out_, p.batch = pr_.batch;
    if (keep) p.saved = s_;
    return p;
  }
  BwdParams bwd(const Grads& g) const {
    BwdParams p;
    p.config = pr_.c, p.weights = w_, p.x = x_, p.grad_out = dout_, p.batch = pr_.batch;
    p.saved = s_, p.grads = g;
    return p;
  }
  void poison_outputs() {
    for (DeviceBuffer* b : outputs_) b->poison();
  }
  FwdOut read() const {
    FwdOut o;
    const SavedSizes z = saved_sizes(pr_.c, pr_.batch);
    o.out = down(out_, pr_.batch * pr_.c.d_model);
    o.q = down(s_.q, z.q), o.scores = down(s_.scores, z.scores);
    o.indices = down(s_.indices, z.indices), o.weights = down(s_.weights, z.weights);
    o.y = down(s_.y, z.y), o.hidden = down(s_.hidden, z.hidden);
    o.peer_pre = down(s_.peer_pre, z.peer_pre), o.gate = down(s_.gate, z.gate);
    return o;
  }
  template <class T>
  T* alloc(int64_t n, bool output = true) {
    if (n == 0) return nullptr;
    bufs_.push_back(std::make_unique<DeviceBuffer>(mem_, static_cast<std::size_t>(n) * sizeof(T)));
    if (output) outputs_.push_back(bufs_.back().get());
    bufs_.back()->poison();
    return bufs_.back()->as<T>();
  }
  template <class T>
  std::vector<T> down(const T* p, int64_t n) const {
    std::vector<T> out(static_cast<std::size_t>(n));
    if (n == 0) return out;
    mem_.synchronize();
    mem_.to_host(out.data(), p, out.size() * sizeof(T));
    return out;
  }

 private:
  template <class T>
  const T* up(const std::vector<T>& host) {
    if (host.empty()) return nullptr;
    bufs_.push_back(std::make_unique<DeviceBuffer>(mem_, host));
    return bufs_.back()->as<T>();
  }

  const Memory& mem_;
  const Problem& pr_;
  std::vector<std::unique_ptr<DeviceBuffer>> bufs_;
  std::vector<DeviceBuffer*> outputs_;
  Weights w_;
  const float *x_, *dout_;
  float* out_;
  Saved s_;
};

// The reference forward on host memory, every Saved field the config uses kept.
FwdOut reference_fwd(const Problem& pr, const int64_t* fixed = nullptr) {
  const SavedSizes z = saved_sizes(pr.c, pr.batch);
  FwdOut o;
  auto sized = [](auto& v, int64_t n) {
    v.resize(static_cast<std::size_t>(n));
    return n ? v.data() : nullptr;
  };
  FwdParams p;
  p.config = pr.c, p.weights = pr.w.view(), p.x = pr.x.data(), p.batch = pr.batch;
  p.out = sized(o.out, pr.batch * pr.c.d_model);
  p.saved.q = sized(o.q, z.q), p.saved.scores = sized(o.scores, z.scores);
  p.saved.indices = sized(o.indices, z.indices), p.saved.weights = sized(o.weights, z.weights);
  p.saved.y = sized(o.y, z.y), p.saved.hidden = sized(o.hidden, z.hidden);
  p.saved.peer_pre = sized(o.peer_pre, z.peer_pre), p.saved.gate = sized(o.gate, z.gate);
  if (fixed)
    reference::memory_layer_fwd_fixed(p, fixed);
  else
    reference::memory_layer_fwd(p);
  return o;
}

void merge(CheckResult& into, const CheckResult& r) {
  if (r.ok) return;
  into.ok = false;
  into.message += (into.message.empty() ? "" : "\n") + r.message;
}

void fail_with(CheckResult& into, const std::string& why) {
  merge(into, CheckResult{false, 0, 0, 0, -1, 0, why});
}

// `may_be_zero`: the reference is zero by construction (then the output must be exactly zero).
CheckResult compare_floats(const std::string& what, const std::vector<float>& got,
                           const std::vector<float>& want, std::size_t count = SIZE_MAX,
                           bool may_be_zero = false) {
  count = std::min(count, want.size());
  if (got.size() < count) return {false, 0, 0, 0, -1, 0, what + ": output too short"};
  std::vector<double> g(got.begin(), got.begin() + count), w(want.begin(), want.begin() + count);
  if (!may_be_zero) {
    EXPECT_GT(test::norm(w), 0) << what << ": the reference is all zeros: the case proves nothing";
  }
  return test::compare(what, g, w, test::tolerance_for(DType::f32, w));
}

// ---- forward: the selection, then every output against the reference on that selection ----

// DESIGN.md §4 for top-k, per (token, head): indices in range and distinct, and each selected
// key's fp64 score (`fixed_scores`, the reference on this selection) no worse than the reference's
// own k-th best.
void check_selection(const Problem& pr, const FwdOut& got, const FwdOut& ref,
                     const std::vector<float>& fixed_scores, CheckResult& r) {
  const int64_t k = pr.c.k, rows = pr.batch * pr.c.heads, n = pr.c.num_values();
  const test::Tolerance tol =
      test::tolerance_for(DType::f32, std::vector<double>(ref.scores.begin(), ref.scores.end()));
  for (int64_t row = 0; row < rows; ++row) {
    std::set<int64_t> seen;
    const double kth = ref.scores[row * k + k - 1];
    for (int64_t t = 0; t < k; ++t) {
      const int64_t m = got.indices[row * k + t];
      std::string why;
      if (m < 0 || m >= n)
        why = fmt::format("index {} out of range [0, {})", m, n);
      else if (!seen.insert(m).second)
        why = fmt::format("index {} selected twice", m);
      else if (!(fixed_scores[row * k + t] >= kth - tol.atol - tol.rtol * std::abs(kth)))
        why = fmt::format("index {} scores {}, below the k-th best {}", m,
                          fixed_scores[row * k + t], kth);
      if (!why.empty())
        return fail_with(r, fmt::format("selection: token {} head {} slot {}: {}", row / pr.c.heads,
                                        row % pr.c.heads, t, why));
    }
  }
}

CheckResult check_fwd(const Problem& pr, const FwdOut& got, bool saved) {
  CheckResult r;
  const FwdOut ref = reference_fwd(pr);
  // With the saved indices, compare against the reference on the variant's own selection (equal
  // to the reference's up to near-ties); without them, on the reference's.
  const FwdOut want = saved ? reference_fwd(pr, got.indices.data()) : ref;
  if (saved) check_selection(pr, got, ref, want.scores, r);
  merge(r, compare_floats("out", got.out, want.out));
  if (!saved) return r;
  merge(r, compare_floats("saved.q", got.q, want.q));
  merge(r, compare_floats("saved.scores", got.scores, want.scores));
  merge(r, compare_floats("saved.weights", got.weights, want.weights));
  merge(r, compare_floats("saved.y", got.y, want.y));
  if (!want.hidden.empty()) merge(r, compare_floats("saved.hidden", got.hidden, want.hidden));
  if (!want.peer_pre.empty())
    merge(r, compare_floats("saved.peer_pre", got.peer_pre, want.peer_pre));
  if (!want.gate.empty()) merge(r, compare_floats("saved.gate", got.gate, want.gate));
  return r;
}

// ---- backward ----

enum class Outputs { all, x_only, sparse, params };
std::string to_string(Outputs o) {
  switch (o) {
    case Outputs::all:
      return "all";
    case Outputs::x_only:
      return "x";
    case Outputs::sparse:
      return "sparse";
    case Outputs::params:
      return "params";
  }
  return "?";
}

// Host copies of every gradient buffer (empty: not requested).
struct GradOut {
  std::vector<float> x, wq, bq, keys1, keys2, values_dense, values_compact, down_dense,
      down_compact, w1, b1, w2, b2, wg;
  std::vector<int64_t> value_rows, num_value_rows, down_rows, num_down_rows;
};

// Gradient buffers for `o` in session s (poisoned), and how to read them back.
struct GradBuffers {
  Grads g;
  GradOut read(const Session& s, const Config& c, int64_t B) const {
    GradOut o;
    const int64_t d = c.d_model, hn = c.heads * c.k_dim, v = c.value_dim,
                  keys = c.heads * c.n_keys * c.k_dim / 2, cap = compact_capacity(c, B),
                  nv = c.num_values() * c.value_width(), nd = c.num_values() * d;
    auto rd = [&](auto* p, int64_t n) {
      using T = std::remove_pointer_t<decltype(p)>;
      return p ? s.down(p, n) : std::vector<T>{};
    };
    o.x = rd(g.x, B * d), o.wq = rd(g.wq, d * hn), o.bq = rd(g.bq, hn);
    o.keys1 = rd(g.keys1, keys), o.keys2 = rd(g.keys2, keys);
    o.values_dense = rd(g.values_dense, nv);
    o.value_rows = rd(g.value_rows, cap),
    o.values_compact = rd(g.values_compact, cap * c.value_width());
    o.num_value_rows = rd(g.num_value_rows, 1);
    o.down_dense = rd(g.down_dense, nd);
    o.down_rows = rd(g.down_rows, cap), o.down_compact = rd(g.down_compact, cap * d);
    o.num_down_rows = rd(g.num_down_rows, 1);
    o.w1 = rd(g.w1, d * v), o.b1 = rd(g.b1, v), o.w2 = rd(g.w2, v * d), o.b2 = rd(g.b2, d);
    o.wg = rd(g.wg, d);
    return o;
  }
};

GradBuffers make_grads(Session& s, const Config& c, int64_t B, Outputs o) {
  GradBuffers gb;
  Grads& g = gb.g;
  const int64_t d = c.d_model, hn = c.heads * c.k_dim, v = c.value_dim,
                keys = c.heads * c.n_keys * c.k_dim / 2, cap = compact_capacity(c, B);
  const bool all = o == Outputs::all, dense = all || o == Outputs::params,
             compact = all || o == Outputs::sparse;
  if (all || o == Outputs::x_only) g.x = s.alloc<float>(B * d);
  if (dense) {
    g.wq = s.alloc<float>(d * hn), g.bq = s.alloc<float>(hn);
    g.values_dense = s.alloc<float>(c.num_values() * c.value_width());
    if (c.kind == Kind::peer) g.down_dense = s.alloc<float>(c.num_values() * d);
    if (c.kind == Kind::memory_plus) {
      g.w1 = s.alloc<float>(d * v), g.b1 = s.alloc<float>(v);
      g.w2 = s.alloc<float>(v * d), g.b2 = s.alloc<float>(d);
    }
    if (c.scalar_gate) g.wg = s.alloc<float>(d);
  }
  if (dense || compact) g.keys1 = s.alloc<float>(keys), g.keys2 = s.alloc<float>(keys);
  if (compact) {
    g.value_rows = s.alloc<int64_t>(cap), g.num_value_rows = s.alloc<int64_t>(1);
    g.values_compact = s.alloc<float>(cap * c.value_width());
    if (c.kind == Kind::peer) {
      g.down_rows = s.alloc<int64_t>(cap), g.num_down_rows = s.alloc<int64_t>(1);
      g.down_compact = s.alloc<float>(cap * d);
    }
  }
  return gb;
}

// The reference's gradients (every one, dense and compact) for the selection `indices`.
GradOut reference_bwd(const Problem& pr, const std::vector<int64_t>& indices) {
  const Config& c = pr.c;
  const int64_t B = pr.batch, d = c.d_model, hn = c.heads * c.k_dim, v = c.value_dim,
                keys = c.heads * c.n_keys * c.k_dim / 2, cap = compact_capacity(c, B);
  GradOut o;
  auto sized = [](auto& vec, int64_t n) {
    vec.resize(static_cast<std::size_t>(n));
    return n ? vec.data() : nullptr;
  };
  BwdParams p;
  p.config = c, p.weights = pr.w.view(), p.x = pr.x.data(), p.grad_out = pr.dout.data();
  p.batch = B, p.saved.indices = const_cast<int64_t*>(indices.data());
  Grads& g = p.grads;
  g.x = sized(o.x, B * d), g.wq = sized(o.wq, d * hn), g.bq = sized(o.bq, hn);
  g.keys1 = sized(o.keys1, keys), g.keys2 = sized(o.keys2, keys);
  g.values_dense = sized(o.values_dense, c.num_values() * c.value_width());
  g.value_rows = sized(o.value_rows, cap), g.num_value_rows = sized(o.num_value_rows, 1);
  g.values_compact = sized(o.values_compact, cap * c.value_width());
  if (c.kind == Kind::peer) {
    g.down_dense = sized(o.down_dense, c.num_values() * d);
    g.down_rows = sized(o.down_rows, cap), g.num_down_rows = sized(o.num_down_rows, 1);
    g.down_compact = sized(o.down_compact, cap * d);
  }
  if (c.kind == Kind::memory_plus) {
    g.w1 = sized(o.w1, d * v), g.b1 = sized(o.b1, v), g.w2 = sized(o.w2, v * d);
    g.b2 = sized(o.b2, d);
  }
  if (c.scalar_gate) g.wg = sized(o.wg, d);
  reference::memory_layer_bwd(p);
  return o;
}

void check_compact(const std::string& name, const std::vector<int64_t>& rows,
                   const std::vector<int64_t>& count, const std::vector<float>& grad,
                   const std::vector<int64_t>& want_rows, const std::vector<int64_t>& want_count,
                   const std::vector<float>& want, int64_t width, CheckResult& r) {
  if (count.empty()) return;
  if (count[0] != want_count[0])
    return fail_with(r, fmt::format("{}: {} rows, reference {}", name, count[0], want_count[0]));
  const auto u = static_cast<std::size_t>(want_count[0]);
  if (!std::equal(want_rows.begin(), want_rows.begin() + u, rows.begin()))
    return fail_with(r, name + ": row ids differ from the reference (ascending, unique)");
  merge(r, compare_floats(name, grad, want, u * static_cast<std::size_t>(width)));
}

CheckResult check_bwd(const Problem& pr, const std::vector<int64_t>& indices, const GradOut& got) {
  const GradOut want = reference_bwd(pr, indices);
  CheckResult r;
  const std::pair<const char*, std::pair<const std::vector<float>*, const std::vector<float>*>>
      dense[] = {{"dx", {&got.x, &want.x}},
                 {"dWq", {&got.wq, &want.wq}},
                 {"dbq", {&got.bq, &want.bq}},
                 {"dK1", {&got.keys1, &want.keys1}},
                 {"dK2", {&got.keys2, &want.keys2}},
                 {"dV dense", {&got.values_dense, &want.values_dense}},
                 {"dU dense", {&got.down_dense, &want.down_dense}},
                 {"dW1", {&got.w1, &want.w1}},
                 {"db1", {&got.b1, &want.b1}},
                 {"dW2", {&got.w2, &want.w2}},
                 {"db2", {&got.b2, &want.b2}},
                 {"dwg", {&got.wg, &want.wg}}};
  // With k = 1 every softmax weight is 1: nothing flows back into the search, so dq (and with
  // it dWq, dbq, dK, and dx of an ungated plain memory) is exactly zero.
  const bool no_search_grad = pr.c.k == 1;
  const bool dx_zero = no_search_grad && pr.c.kind == Kind::memory && !pr.c.scalar_gate;
  for (const auto& [name, pair] : dense) {
    const std::string n = name;
    const bool zero = no_search_grad && (n == "dWq" || n == "dbq" || n == "dK1" || n == "dK2" ||
                                         (n == "dx" && dx_zero));
    if (!pair.first->empty())
      merge(r, compare_floats(name, *pair.first, *pair.second, SIZE_MAX, zero));
  }
  check_compact("dV compact", got.value_rows, got.num_value_rows, got.values_compact,
                want.value_rows, want.num_value_rows, want.values_compact, pr.c.value_width(), r);
  check_compact("dU compact", got.down_rows, got.num_down_rows, got.down_compact, want.down_rows,
                want.num_down_rows, want.down_compact, pr.c.d_model, r);
  return r;
}

// The forward that produces a backward variant's Saved input: the forward variant of the same
// backend and name when there is one, else the reference.
const Variant<FwdParams>& forward_for(const Variant<BwdParams>& v) {
  for (const auto* f : Registry<Fwd>::of(v.backend))
    if (f->name == v.name) return *f;
  return Registry<Fwd>::find(Backend::reference, "reference");
}

// Runs v's forward (saved kept) then v on fresh poisoned gradients; "" or why it was skipped.
std::string run_bwd(const Variant<BwdParams>& v, const Problem& pr, Outputs o, GradOut& got,
                    std::vector<int64_t>& indices) {
  if (std::string why = usable(v.backend); !why.empty()) return why;
  const Variant<FwdParams>& f = forward_for(v);
  if (f.backend != v.backend && !usable(f.backend).empty()) return usable(f.backend);
  Session s(v.backend, pr);
  if (std::string why = f.supports(s.fwd(true)); !why.empty()) return "forward: " + why;
  Registry<Fwd>::run(f, s.fwd(true));
  indices = s.read().indices;
  GradBuffers gb = make_grads(s, pr.c, pr.batch, o);
  const BwdParams p = s.bwd(gb.g);
  if (std::string why = v.supports(p); !why.empty()) return "variant: " + why;
  Registry<Bwd>::run(v, p);
  got = gb.read(s, pr.c, pr.batch);
  return {};
}

// ---- the sweep ----

std::vector<Shape> sweep_shapes() {
  return {
      {5, 24, 2, 10, 14, 7, 20},    // odd half-width, k = 7
      {3, 40, 4, 33, 38, 32, 36},   // the paper's k and heads: a bag of 128 rows
      {4, 9, 1, 5, 2, 1, 3},        // k = 1, half-width 1: one row per bag
      {7, 16, 3, 4, 10, 4, 5},      // k = n_keys, few rows: duplicates within and across bags
      {300, 24, 2, 10, 14, 7, 20},  // enough tokens for the cpu composition's threads to split
  };
}

struct Case {
  Config c;
  int64_t batch;
  std::string name;
};

using test::kSanitized;

// Every kind × qk_norm × gate × values dtype on the first shape; the others take a rotating
// quarter of the combinations. Except on simt (thousands of times slower than a GPU), which takes
// a subset that still runs every kind × scalar gate (the composition's own paths) on the first
// shape, qk_norm and the values dtype (paths of the search and bag kernels, swept by their own
// tests) paired with them: (off, fp32) and (on, bf16). The later shapes take one or two of their
// quarter. Under a sanitizer simt leaves out the shape of 300 tokens (half a minute a case under
// TSan; the smaller shapes take the same paths).
bool in_sweep(Backend b, std::size_t si, int combo) {
  if (test::kThreadSanitizer && b == Backend::reference) return false;  // one thread
  if (si != 0 && combo % 4 != static_cast<int>(si) % 4) return false;
  if (b != Backend::simt) return true;
  const bool norm = combo / 3 % 2, bf16 = combo / 12;
  if (si == 0) return norm == bf16;
  const int i = combo / 4, first = static_cast<int>(si) % 6;  // i-th of the shape's quarter
  const Shape shape = sweep_shapes()[si];
  if (kSanitized && shape.batch >= 100) return false;
  return i == first || (shape.batch < 100 && i == (first + 1) % 6);
}

std::vector<Case> cases(Backend b, const std::string& variant) {
  std::vector<Case> out;
  const auto shapes = sweep_shapes();
  for (std::size_t si = 0; si < shapes.size(); ++si)
    for (int combo = 0; combo < 24; ++combo) {
      if (!in_sweep(b, si, combo)) continue;
      const Kind kind = static_cast<Kind>(combo % 3);
      const bool norm = combo / 3 % 2, gate = combo / 6 % 2;
      const DType vt = combo / 12 ? DType::bf16 : DType::f32;
      const Config c = make_config(kind, shapes[si], norm, gate, vt);
      out.push_back({c, shapes[si].batch,
                     fmt::format("{}_{}_{}", variant_label(b, variant), config_label(c),
                                 shape_label(shapes[si]))});
    }
  return out;
}

struct FwdCase {
  const Variant<FwdParams>* v;
  Case c;
};
void PrintTo(const FwdCase& c, std::ostream* os) { *os << c.c.name; }

std::vector<FwdCase> fwd_cases() {
  std::vector<FwdCase> out;
  for (const auto* v : Registry<Fwd>::of())
    for (const Case& c : cases(v->backend, v->name)) out.push_back({v, c});
  return out;
}

class MemoryLayerFwd : public ::testing::TestWithParam<FwdCase> {};

TEST_P(MemoryLayerFwd, MatchesReference) {
  const FwdCase& fc = GetParam();
  const Problem pr = make_problem(fc.c.name, fc.c.c, fc.c.batch);
  EXPECT_GT(test::norm(std::vector<double>(pr.x.begin(), pr.x.end())), 0);
  if (std::string why = usable(fc.v->backend); !why.empty()) GTEST_SKIP() << why;
  for (bool keep : {true, false}) {
    Session s(fc.v->backend, pr);
    const FwdParams p = s.fwd(keep);
    if (std::string why = fc.v->supports(p); !why.empty()) GTEST_SKIP() << "variant: " << why;
    Registry<Fwd>::run(*fc.v, p);
    const CheckResult r = check_fwd(pr, s.read(), keep);
    EXPECT_TRUE(r.ok) << (keep ? "saved kept: " : "nothing kept: ") << r.message;
  }
}

INSTANTIATE_TEST_SUITE_P(Sweep, MemoryLayerFwd, ::testing::ValuesIn(fwd_cases()),
                         [](const auto& i) { return i.param.c.name; });

struct BwdCase {
  const Variant<BwdParams>* v;
  Case c;
  Outputs o;
  std::string name;
};
void PrintTo(const BwdCase& c, std::ostream* os) { *os << c.name; }

std::vector<BwdCase> bwd_cases() {
  std::vector<BwdCase> out;
  for (const auto* v : Registry<Bwd>::of())
    for (const Case& c : cases(v->backend, v->name))
      for (Outputs o : {Outputs::all, Outputs::x_only, Outputs::sparse, Outputs::params}) {
        // Each subset of outputs on the gated fp32 configs of the first shape: a variant may
        // take another path when an output is not requested.
        if (o != Outputs::all && (c.c.values_dtype != DType::f32 || !c.c.scalar_gate ||
                                  c.name.find("_b5_") == std::string::npos))
          continue;
        out.push_back({v, c, o, c.name + "_" + to_string(o)});
      }
  return out;
}

class MemoryLayerBwd : public ::testing::TestWithParam<BwdCase> {};

TEST_P(MemoryLayerBwd, MatchesReference) {
  const BwdCase& bc = GetParam();
  const Problem pr = make_problem(bc.name, bc.c.c, bc.c.batch);
  EXPECT_GT(test::norm(std::vector<double>(pr.dout.begin(), pr.dout.end())), 0);
  GradOut got;
  std::vector<int64_t> indices;
  if (std::string why = run_bwd(*bc.v, pr, bc.o, got, indices); !why.empty()) GTEST_SKIP() << why;
  const CheckResult r = check_bwd(pr, indices, got);
  EXPECT_TRUE(r.ok) << r.message;
}

INSTANTIATE_TEST_SUITE_P(Sweep, MemoryLayerBwd, ::testing::ValuesIn(bwd_cases()),
                         [](const auto& i) { return i.param.name; });

// ---- determinism ----

class MemoryLayerDeterminism
    : public ::testing::TestWithParam<std::pair<const Variant<BwdParams>*, std::string>> {};

TEST_P(MemoryLayerDeterminism, IdenticalBytes) {
  const auto& v = *GetParam().first;
  // Many tokens on few rows: every row repeats, where an unordered sum would show.
  const int64_t tokens = 31;
  for (Kind kind : {Kind::memory, Kind::memory_plus, Kind::peer}) {
    const Config c = make_config(kind, {tokens, 12, 2, 3, 6, 3, 10}, true, true, DType::f32);
    const Problem pr = make_problem(GetParam().second + to_string(kind), c, tokens);
    GradOut a, b;
    std::vector<int64_t> ia, ib;
    if (std::string why = run_bwd(v, pr, Outputs::all, a, ia); !why.empty()) GTEST_SKIP() << why;
    if (!test::kRunTwice) continue;
    ASSERT_EQ(run_bwd(v, pr, Outputs::all, b, ib), "");
    EXPECT_TRUE(test::same_bytes(ia, ib)) << to_string(kind) << ": the selection differs";
    for (auto [x, y] : {std::pair{&a.x, &b.x}, std::pair{&a.wq, &b.wq},
                        std::pair{&a.keys1, &b.keys1}, std::pair{&a.values_dense, &b.values_dense},
                        std::pair{&a.values_compact, &b.values_compact},
                        std::pair{&a.down_compact, &b.down_compact}, std::pair{&a.w1, &b.w1},
                        std::pair{&a.wg, &b.wg}})
      // Not requested for this kind (w1 of peer): empty in both runs (memcmp takes no null).
      if (!x->empty() || !y->empty()) {
        EXPECT_TRUE(test::same_bytes(*x, *y)) << to_string(kind) << ": a gradient differs";
      }
  }
}

INSTANTIATE_TEST_SUITE_P(Registered, MemoryLayerDeterminism,
                         ::testing::ValuesIn(test::deterministic_variants(Registry<Bwd>::of())),
                         [](const auto& i) { return i.param.second; });

// ---- the reference backward against central finite differences ----

// L = Σ dout · out, the selection held at `sel`, in fp64.
double loss(const Problem& pr, const std::vector<int64_t>& sel) {
  FwdParams p;
  p.config = pr.c, p.weights = pr.w.view(), p.x = pr.x.data(), p.batch = pr.batch;
  std::vector<double> out;
  reference::memory_layer_fwd_fixed(p, sel.data(), &out);
  double l = 0;
  for (std::size_t i = 0; i < out.size(); ++i) l += double{pr.dout[i]} * out[i];
  return l;
}

// The selection the reference forward makes for the problem as it is now.
std::vector<int64_t> selection(const Problem& pr) { return reference_fwd(pr).indices; }

struct FdCase {
  Config c;
  std::string name;
};
void PrintTo(const FdCase& c, std::ostream* os) { *os << c.name; }

std::vector<FdCase> fd_cases() {
  std::vector<FdCase> out;
  for (Kind kind : {Kind::memory, Kind::memory_plus, Kind::peer})
    for (bool norm : {false, true})
      for (bool gate : {false, true}) {
        const Config c = make_config(kind, {3, 8, 2, 5, 6, 3, 6}, norm, gate, DType::f32);
        out.push_back({c, config_label(c)});
      }
  return out;
}

class MemoryLayerGradCheck : public ::testing::TestWithParam<FdCase> {};

TEST_P(MemoryLayerGradCheck, ReferenceBackwardMatchesFiniteDifferences) {
  const FdCase& fc = GetParam();
  Problem pr = make_problem("fd_" + fc.name, fc.c, 3);
  const std::vector<int64_t> sel = selection(pr);
  const GradOut g = reference_bwd(pr, sel);
  auto floats = [](std::vector<unsigned char>& raw) {
    return std::pair{reinterpret_cast<float*>(raw.data()), raw.size() / 4};
  };
  struct Tensor {
    const char* name;
    float* data;
    std::size_t n;
    const std::vector<float>* grad;
  };
  std::vector<Tensor> tensors = {
      {"x", pr.x.data(), pr.x.size(), &g.x},
      {"wq", pr.w.wq.data(), pr.w.wq.size(), &g.wq},
      {"bq", pr.w.bq.data(), pr.w.bq.size(), &g.bq},
      {"keys1", pr.w.keys1.data(), pr.w.keys1.size(), &g.keys1},
      {"keys2", pr.w.keys2.data(), pr.w.keys2.size(), &g.keys2},
      {"values", floats(pr.w.values).first, floats(pr.w.values).second, &g.values_dense}};
  if (fc.c.kind == Kind::peer)
    tensors.push_back({"down", floats(pr.w.down).first, floats(pr.w.down).second, &g.down_dense});
  if (fc.c.kind == Kind::memory_plus) {
    tensors.push_back({"w1", pr.w.w1.data(), pr.w.w1.size(), &g.w1});
    tensors.push_back({"b1", pr.w.b1.data(), pr.w.b1.size(), &g.b1});
    tensors.push_back({"w2", pr.w.w2.data(), pr.w.w2.size(), &g.w2});
    tensors.push_back({"b2", pr.w.b2.data(), pr.w.b2.size(), &g.b2});
  }
  if (fc.c.scalar_gate) tensors.push_back({"wg", pr.w.wg.data(), pr.w.wg.size(), &g.wg});

  for (const Tensor& t : tensors) {
    ASSERT_EQ(t.grad->size(), t.n) << t.name;
    double worst = 0, scale = 0;
    int64_t skipped = 0, worst_at = -1;
    for (std::size_t i = 0; i < t.n; ++i) {
      const float x0 = t.data[i], h = 1e-4f;
      t.data[i] = x0 + h;
      const double up = loss(pr, sel), step_up = double{t.data[i]} - x0;
      const bool same_up = selection(pr) == sel;
      t.data[i] = x0 - h;
      const double down = loss(pr, sel), step = step_up + (x0 - double{t.data[i]});
      const bool same_down = selection(pr) == sel;
      t.data[i] = x0;
      // The loss is piecewise smooth: where a step changes the selection, the difference
      // straddles a kink and says nothing about the gradient.
      if (!same_up || !same_down) {
        ++skipped;
        continue;
      }
      const double fd = (up - down) / step, an = (*t.grad)[i];
      if (std::abs(fd - an) > worst) worst = std::abs(fd - an), worst_at = int64_t(i);
      scale = std::max(scale, std::abs(fd));
    }
    EXPECT_GT(scale, 0) << t.name << ": every finite difference is zero";
    EXPECT_LE(skipped, int64_t(t.n) / 4) << t.name << ": most steps changed the selection";
    // fp64 loss, h = 1e-3: truncation O(h²) ≈ 1e-7 of the scale; the gradient is fp32-rounded.
    EXPECT_LE(worst, 2e-6 * scale + 1e-7) << t.name << ": worst |fd − analytic| at [" << worst_at
                                          << "], scale " << scale << ", skipped " << skipped;
  }

  // The compact value gradient lists exactly the non-zero dense rows, ascending, equal to them.
  const int64_t width = fc.c.value_width();
  std::vector<int64_t> touched;
  for (int64_t r = 0; r < fc.c.num_values(); ++r)
    for (int64_t e = 0; e < width; ++e)
      if (g.values_dense[r * width + e] != 0) {
        touched.push_back(r);
        break;
      }
  ASSERT_EQ(g.num_value_rows[0], int64_t(touched.size()));
  for (std::size_t i = 0; i < touched.size(); ++i) {
    ASSERT_EQ(g.value_rows[i], touched[i]);
    for (int64_t e = 0; e < width; ++e)
      ASSERT_EQ(g.values_compact[i * width + e], g.values_dense[touched[i] * width + e]);
  }
}

INSTANTIATE_TEST_SUITE_P(Kinds, MemoryLayerGradCheck, ::testing::ValuesIn(fd_cases()),
                         [](const auto& i) { return i.param.name; });

// ---- a planted bug: the checker must reject it ----

// Memory kind only: the bag backward and the search backward from the fp64 op references, with
// the softmax backward missing its Σ term (ds = w ⊙ dw). dV is right; everything upstream of the
// softmax (dx, dWq, dbq, dK) is wrong.
void planted_bwd(const BwdParams& p, Stream) {
  const Config& c = p.config;
  const int64_t B = p.batch, d = c.d_model, hn = c.heads * c.k_dim, hk = c.heads * c.k;
  std::vector<float> dw(static_cast<std::size_t>(B * hk)), dq(static_cast<std::size_t>(B * hn));
  embbag::BwdParams e;
  e.values = p.weights.values, e.indices = p.saved.indices, e.weights = p.saved.weights;
  e.grad_out = p.grad_out, e.batch = B, e.k = hk, e.dim = d, e.num_rows = c.num_values();
  e.values_dtype = c.values_dtype, e.index_dtype = DType::i64;
  e.grad_weights = dw.data(), e.grad_values_dense = p.grads.values_dense;
  e.unique_rows = p.grads.value_rows, e.grad_values_compact = p.grads.values_compact;
  e.num_unique = p.grads.num_value_rows;
  reference::embbag_bwd(e);
  for (std::size_t j = 0; j < dw.size(); ++j) dw[j] *= p.saved.weights[j];  // the bug
  pk_topk::BwdParams s;
  s.queries = p.saved.q, s.keys1 = p.weights.keys1, s.keys2 = p.weights.keys2;
  s.indices = p.saved.indices, s.grad_scores = dw.data();
  s.batch = B, s.heads = c.heads, s.n_keys = c.n_keys, s.k_dim = c.k_dim, s.k = c.k;
  s.qk_norm = c.qk_norm, s.grad_queries = dq.data();
  s.grad_keys1.dense = p.grads.keys1, s.grad_keys2.dense = p.grads.keys2;
  reference::pk_topk_bwd(s);
  const Grads& g = p.grads;
  if (g.x) std::fill(g.x, g.x + B * d, 0.0f);
  if (g.wq) std::fill(g.wq, g.wq + d * hn, 0.0f);
  if (g.bq) std::fill(g.bq, g.bq + hn, 0.0f);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = 0; j < hn; ++j) {
      const float dqj = dq[b * hn + j];
      if (g.bq) g.bq[j] += dqj;
      for (int64_t i = 0; i < d; ++i) {
        if (g.wq) g.wq[i * hn + j] += p.x[b * d + i] * dqj;
        if (g.x) g.x[b * d + i] += p.weights.wq[i * hn + j] * dqj;
      }
    }
}

MEMLAYERS_REGISTER(Bwd, Variant<BwdParams>{
                            .name = "planted_softmax_no_sum",
                            .backend = Backend::cpu,
                            .launch = planted_bwd,
                            .supports =
                                [](const BwdParams& p) {
                                  return p.config.kind == Kind::memory && !p.config.scalar_gate
                                             ? std::string()
                                             : std::string("planted for memory without gate");
                                },
                            .summary = "planted bug: softmax backward without the Σ w·dw term",
                            .expected_wrong = true,
                        });

TEST(MemoryLayerPlanted, CheckerRejectsSoftmaxWithoutSumTerm) {
  const Variant<BwdParams>* planted = nullptr;
  for (const auto* v : Registry<Bwd>::of(Backend::cpu, /*include_wrong=*/true))
    if (v->expected_wrong) planted = v;
  ASSERT_NE(planted, nullptr);
  for (bool norm : {false, true}) {
    const Config c = make_config(Kind::memory, sweep_shapes()[0], norm, false, DType::f32);
    const Problem pr = make_problem("planted", c, sweep_shapes()[0].batch);
    GradOut got;
    std::vector<int64_t> indices;
    ASSERT_EQ(run_bwd(*planted, pr, Outputs::all, got, indices), "");
    const CheckResult r = check_bwd(pr, indices, got);
    EXPECT_FALSE(r.ok) << "the checker accepted a softmax backward without its Σ term";
    EXPECT_NE(r.message.find("dWq"), std::string::npos) << r.message;
    EXPECT_EQ(r.message.find("dV"), std::string::npos) << "dV is right in the planted variant";
  }
}

// ---- the cpu composition says what it ran ----

TEST(MemoryLayerCompose, ReportsItsParts) {
  const Config c = make_config(Kind::peer, sweep_shapes()[0], false, true, DType::f32);
  const Problem pr = make_problem("parts", c, 2);
  Session s(Backend::cpu, pr);
  Registry<Fwd>::run(Registry<Fwd>::find(Backend::cpu, "v1_compose"), s.fwd(true));
  const std::string parts = cpu::v1_compose_parts();
  EXPECT_NE(parts.find("forward: pk_topk_fwd "), std::string::npos) << parts;
  EXPECT_NE(parts.find("embbag_fwd cpu/v2_hwy_threads"), std::string::npos) << parts;
  EXPECT_NE(parts.find("embbag_bwd cpu/v2_bwd_sorted"), std::string::npos) << parts;
}

// ---- every composition names its stages (bench_memory_layer's breakdown relies on it) ----

// Records the stages entered; fails on a stage outside `allowed`, or one left before it opens.
class RecordingClock : public StageClock {
 public:
  std::vector<std::string> allowed, seen, problems;
  int open = 0;
  void enter(std::string_view stage, Stream) override {
    if (open != 0) problems.push_back(fmt::format("'{}' opened inside another stage", stage));
    ++open;
    if (std::find(allowed.begin(), allowed.end(), stage) == allowed.end())
      problems.push_back(fmt::format("unknown stage '{}'", stage));
    if (seen.empty() || seen.back() != stage) seen.emplace_back(stage);
  }
  void leave(std::string_view stage, Stream) override {
    if (--open != 0) problems.push_back(fmt::format("'{}' left unbalanced", stage));
  }
};

struct InstallClock {
  explicit InstallClock(StageClock* c) { set_stage_clock(c); }
  ~InstallClock() { set_stage_clock(nullptr); }
};

TEST(MemoryLayerStages, EveryCompositionTimesItsStagesInOrder) {
  int checked = 0;
  for (const auto* f : Registry<Fwd>::of()) {
    if (f->backend == Backend::reference || !usable(f->backend).empty()) continue;
    for (int kind = 0; kind < 3; ++kind) {
      const Config c =
          make_config(static_cast<Kind>(kind), sweep_shapes()[0], false, true, DType::f32);
      const Problem pr = make_problem("stages", c, 3);
      Session s(f->backend, pr);
      RecordingClock fc;
      fc.allowed.assign(std::begin(kFwdStages), std::end(kFwdStages));
      {
        InstallClock install(&fc);
        Registry<Fwd>::run(*f, s.fwd(true));
      }
      const std::string what =
          fmt::format("{}/{} {}", to_string(f->backend), f->name, to_string(c.kind));
      EXPECT_TRUE(fc.problems.empty())
          << what << ": " << fmt::format("{}", fmt::join(fc.problems, "; "));
      EXPECT_EQ(fc.open, 0) << what;
      ASSERT_GE(fc.seen.size(), 4u) << what;
      EXPECT_EQ(fc.seen[0], "projection") << what;
      EXPECT_EQ(fc.seen[1], "search") << what;
      EXPECT_EQ(fc.seen[2], "softmax") << what;
      EXPECT_EQ(fc.seen.back(), "gating") << what << " (every kind here has the scalar gate)";
      for (const auto* b : Registry<Bwd>::of(f->backend)) {
        if (b->name != f->name) continue;
        GradBuffers gb = make_grads(s, pr.c, pr.batch, Outputs::all);
        RecordingClock bc;
        bc.allowed.assign(std::begin(kBwdStages), std::end(kBwdStages));
        {
          InstallClock install(&bc);
          Registry<Bwd>::run(*b, s.bwd(gb.g));
        }
        EXPECT_TRUE(bc.problems.empty())
            << what << ": " << fmt::format("{}", fmt::join(bc.problems, "; "));
        EXPECT_EQ(bc.open, 0) << what;
        ASSERT_FALSE(bc.seen.empty()) << what;
        EXPECT_EQ(bc.seen.front(), "gating_bwd") << what;
        EXPECT_EQ(bc.seen.back(), "projection_bwd") << what;
        std::set<std::string> distinct(bc.seen.begin(), bc.seen.end());
        EXPECT_EQ(distinct.size(), std::size(kBwdStages)) << what;
      }
      ++checked;
    }
  }
  EXPECT_GT(checked, 0) << "no composition registered";
}

// ---- errors ----

struct Valid {
  Config c = make_config(Kind::memory_plus, {2, 8, 2, 5, 6, 3, 6}, false, true, DType::f32);
  Problem pr = make_problem("errors", c, 2);
  std::vector<float> out = std::vector<float>(16), g = std::vector<float>(16);
  std::vector<float> q = std::vector<float>(24), w = std::vector<float>(12), y = q, hid = q,
                     gate = std::vector<float>(2);
  std::vector<int64_t> idx = std::vector<int64_t>(12);
  FwdParams fwd() {
    FwdParams p;
    p.config = c, p.weights = pr.w.view(), p.x = pr.x.data(), p.out = out.data(), p.batch = 2;
    return p;
  }
  BwdParams bwd() {
    BwdParams p;
    p.config = c, p.weights = pr.w.view(), p.x = pr.x.data(), p.grad_out = pr.dout.data();
    p.batch = 2;
    p.saved.q = q.data(), p.saved.indices = idx.data(), p.saved.weights = w.data();
    p.saved.y = y.data(), p.saved.hidden = hid.data(), p.saved.gate = gate.data();
    p.grads.x = g.data();
    return p;
  }
};

template <class Op>
void expect_error(const typename Op::Params& p, const std::string& fragment) {
  const std::string why = Op::validate(p);
  EXPECT_NE(why.find(fragment), std::string::npos) << "got: '" << why << "'";
  try {
    Registry<Op>::run(Registry<Op>::find(Backend::reference, "reference"), p);
    ADD_FAILURE() << "no error for: " << fragment;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
  }
}

TEST(MemoryLayerErrors, Config) {
  Valid v;
  EXPECT_EQ(validate(v.fwd()), "");
  auto p = v.fwd();
  p.config.kind = Kind::memory, p.config.value_dim = 6;
  expect_error<Fwd>(p, "value_dim = 6 with kind memory: the output is the bag itself");
  p = v.fwd(), p.config.k = 6;
  expect_error<Fwd>(p, "k = 6: accepted 1 <= k <= min(n_keys = 5");
  p = v.fwd(), p.config.k_dim = 7;
  expect_error<Fwd>(p, "k_dim = 7: accepted even k_dim");
  p = v.fwd(), p.config.d_model = 0;
  expect_error<Fwd>(p, "d_model = 0");
  p = v.fwd(), p.config.heads = 0;
  expect_error<Fwd>(p, "heads = 0");
  p = v.fwd(), p.config.values_dtype = DType::f16;
  expect_error<Fwd>(p, "values_dtype = fp16: accepted fp32, bf16");
  p = v.fwd(), p.config.kind = static_cast<Kind>(7);
  expect_error<Fwd>(p, "kind = 7: accepted memory, memory_plus, peer");
  p = v.fwd(), p.batch = 0;
  expect_error<Fwd>(p, "batch = 0");
}

TEST(MemoryLayerErrors, Pointers) {
  Valid v;
  auto p = v.fwd();
  p.x = nullptr;
  expect_error<Fwd>(p, "x is null");
  p = v.fwd(), p.out = nullptr;
  expect_error<Fwd>(p, "out is null");
  p = v.fwd(), p.weights.wq = nullptr;
  expect_error<Fwd>(p, "weights.wq is null");
  p = v.fwd(), p.weights.w1 = nullptr;
  expect_error<Fwd>(p, "weights.w1 is null: memory+'s (d_model, value_dim)");
  p = v.fwd(), p.weights.wg = nullptr;
  expect_error<Fwd>(p, "weights.wg is null: the scalar gate's");
  p = v.fwd(), p.config.kind = Kind::peer, p.config.value_dim = 8;
  expect_error<Fwd>(p, "weights.down is null: peer's");
  p = v.fwd(), p.saved.q = reinterpret_cast<float*>(reinterpret_cast<char*>(v.q.data()) + 2);
  expect_error<Fwd>(p, "saved.q = ");
  p = v.fwd(), p.weights.values = reinterpret_cast<const char*>(v.pr.w.values.data()) + 1;
  expect_error<Fwd>(p, "weights.values = ");
}

TEST(MemoryLayerErrors, BackwardNeedsSavedAndOutputs) {
  Valid v;
  EXPECT_EQ(validate(v.bwd()), "");
  auto p = v.bwd();
  p.saved.hidden = nullptr;
  expect_error<Bwd>(p, "saved.hidden is null: the backward of kind memory_plus with scalar_gate");
  p = v.bwd(), p.saved.indices = nullptr;
  expect_error<Bwd>(p, "saved.indices is null");
  p = v.bwd(), p.saved.gate = nullptr;
  expect_error<Bwd>(p, "saved.gate is null");
  p = v.bwd(), p.grads.x = nullptr;
  expect_error<Bwd>(p, "no gradient requested");
  p = v.bwd(), p.grads.value_rows = v.idx.data();
  expect_error<Bwd>(p, "the compact values gradient needs its rows, compact and count");
  p = v.bwd(), p.grads.down_dense = v.g.data();
  expect_error<Bwd>(p, "grads.down_* is set but kind = memory_plus");
  p = v.bwd(), p.config.scalar_gate = false, p.grads.wg = v.g.data();
  expect_error<Bwd>(p, "grads.wg is set but scalar_gate is off");
  p = v.bwd(), p.grad_out = nullptr;
  expect_error<Bwd>(p, "grad_out is null");
  p = v.bwd(), p.config.kind = Kind::memory, p.config.value_dim = 8, p.grads.w1 = v.g.data();
  expect_error<Bwd>(p, "grads.w1/b1/w2/b2 is set but kind = memory");
}

TEST(MemoryLayerErrors, CompositionLimitsAndBadSelection) {
  Valid v;
  auto p = v.fwd();
  p.config.heads = 9, p.config.n_keys = 40, p.config.k = 32;
  EXPECT_EQ(validate(p.config), "");
  EXPECT_NE(Registry<Fwd>::find(Backend::cpu, "v1_compose").supports(p).find("heads·k = 288"),
            std::string::npos);
  // The reference refuses an out-of-range saved index instead of reading past the table.
  auto b = v.bwd();
  std::vector<float> dwq(8 * 12);
  b.grads.wq = dwq.data();
  v.idx[4] = 25;
  try {
    Registry<Bwd>::run(Registry<Bwd>::find(Backend::reference, "reference"), b);
    ADD_FAILURE() << "no error for index 25";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("index 25 out of range [0, 25)"), std::string::npos)
        << e.what();
  }
}

TEST(MemoryLayerDeclared, BytesAndFlops) {
  Config c;  // the paper's shape: d 1024, h 4, n_keys 1024, n 512, k 32, memory
  FwdParams p;
  p.config = c, p.batch = 1000;
  const double B = 1000, d = 1024, hn = 4 * 512, hk = 128;
  EXPECT_DOUBLE_EQ(Fwd::flops(p), 2 * B * d * hn + 2 * B * 4 * 1024 * 512 + 2 * B * hk * d);
  const double params = d * hn + hn + 2 * 4 * 1024 * 256;
  EXPECT_DOUBLE_EQ(Fwd::bytes_moved(p), params * 4 + 2 * B * d * 4 + B * hk * d * 4);
  EXPECT_EQ(activation_floats(c, 10), 10 * (hn + hk * 4 + d));
  BwdParams q;
  q.config = c, q.batch = 1000;
  EXPECT_DOUBLE_EQ(Bwd::flops(q), 2 * (2 * B * d * hn) + 4 * B * hk * 512 + 2 * (2 * B * hk * d));
}

// ---- the bag override (memory_layer.h, BagOverride) ----

// An override that runs the value read itself, through the EmbeddingBag variant the composition
// of `backend` prefers, over a table only it holds (the composition is given weights.values
// null), and counts its calls.
class TableBag final : public BagOverride {
 public:
  TableBag(Backend b, const void* table) : backend_(b), table_(table) {}
  void forward(const embbag::FwdParams& p) override {
    ++forwards;
    embbag::FwdParams q = p;
    q.values = table_;
    run<embbag::Fwd>(q, backend_ == Backend::cpu ? "v2_hwy_threads" : "v4_persistent_stream");
  }
  void backward(const embbag::BwdParams& p) override {
    ++backwards;
    embbag::BwdParams q = p;
    q.values = table_;
    run<embbag::Bwd>(q, backend_ == Backend::cpu ? "v2_bwd_sorted" : "v3_bwd_sorted_fused");
  }
  int forwards = 0, backwards = 0;

 private:
  template <class Op>
  void run(const typename Op::Params& p, const char* preferred) {
    std::string why;
    const auto* v = parts::find_part<Op>(backend_, p, preferred, why);
    if (!v) throw Error(why);
    Registry<Op>::run(*v, p);
  }
  Backend backend_;
  const void* table_;
};

// A composition with the override gives the same bytes as without it: the override sees the
// EmbeddingBag problems the composition would have run, and the softmax backward reads its dw.
TEST(MemoryLayerBagOverride, CompositionsGiveTheSameBytes) {
  for (Backend b : {Backend::cpu, Backend::simt}) {
    if (!usable(b).empty()) continue;
    const Variant<FwdParams>& f = Registry<Fwd>::find(b, "v1_compose");
    const Variant<BwdParams>& v = Registry<Bwd>::find(b, "v1_compose");
    for (Kind kind : {Kind::memory, Kind::memory_plus}) {
      // simt (seconds per search) runs memory+, whose path has both the bag and the gating.
      if (b == Backend::simt && kind == Kind::memory) continue;
      SCOPED_TRACE(fmt::format("{} {}", to_string(b), to_string(kind)));
      const Config c = make_config(kind, {7, 12, 2, 5, 6, 3, 10}, false, false, DType::f32);
      const Problem pr = make_problem("override" + to_string(kind), c, 7);
      GradOut plain, over;
      std::vector<FwdOut> outs;
      for (bool use : {false, true}) {
        Session s(b, pr);
        FwdParams fp = s.fwd(true);
        TableBag bag(b, fp.weights.values);
        if (use) fp.weights.values = nullptr, fp.bag = &bag;
        Registry<Fwd>::run(f, fp);
        outs.push_back(s.read());
        GradBuffers gb = make_grads(s, c, pr.batch, Outputs::all);
        BwdParams bp = s.bwd(gb.g);
        if (use) bp.weights.values = nullptr, bp.bag = &bag;
        Registry<Bwd>::run(v, bp);
        (use ? over : plain) = gb.read(s, c, pr.batch);
        if (use) {
          EXPECT_EQ(bag.forwards, 1);
          EXPECT_EQ(bag.backwards, 1);
        }
      }
      EXPECT_TRUE(
          std::any_of(outs[0].out.begin(), outs[0].out.end(), [](float x) { return x != 0; }));
      EXPECT_TRUE(test::same_bytes(outs[0].out, outs[1].out)) << "the output differs";
      EXPECT_TRUE(test::same_bytes(outs[0].y, outs[1].y)) << "the bag sum differs";
      for (auto [x, y] : {std::pair{&plain.x, &over.x}, std::pair{&plain.wq, &over.wq},
                          std::pair{&plain.keys1, &over.keys1}, std::pair{&plain.w1, &over.w1},
                          std::pair{&plain.values_dense, &over.values_dense},
                          std::pair{&plain.values_compact, &over.values_compact}})
        if (!x->empty() || !y->empty()) {
          EXPECT_TRUE(test::same_bytes(*x, *y)) << "a gradient differs";
        }
      EXPECT_TRUE(test::same_bytes(plain.value_rows, over.value_rows));
    }
  }
}

TEST(MemoryLayerBagOverride, PeerAndTheReferenceRefuseIt) {
  Valid v;
  TableBag bag(Backend::reference, v.pr.w.values.data());
  auto p = v.fwd();
  p.bag = &bag;
  EXPECT_EQ(validate(p), "");  // memory+ with its table: valid
  p.weights.values = nullptr;
  EXPECT_EQ(validate(p), "");  // the override holds the table
  EXPECT_NE(Registry<Fwd>::find(Backend::reference, "reference")
                .supports(p)
                .find("the fp64 reference reads the whole value table: no bag override"),
            std::string::npos);
  auto q = v.bwd();
  q.bag = &bag;
  EXPECT_NE(
      Registry<Bwd>::find(Backend::reference, "reference").supports(q).find("no bag override"),
      std::string::npos);
  p.config.kind = Kind::peer, p.config.value_dim = p.config.d_model;
  EXPECT_NE(validate(p).find("a bag override (BagOverride) is set with kind = peer"),
            std::string::npos)
      << validate(p);
}

TEST(MemoryLayerKind, Names) {
  for (Kind k : {Kind::memory, Kind::memory_plus, Kind::peer})
    EXPECT_EQ(parse_kind(to_string(k)), k);
  EXPECT_EQ(parse_kind("swilu"), std::nullopt);
}

}  // namespace
}  // namespace memlayers::memory_layer
