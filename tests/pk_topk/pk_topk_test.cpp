// The product-key top-k search against its definition: the reference equals a brute force over
// all N = n_keys² full keys; every registered forward variant (reference, cpu, simt, and cuda
// where a GPU is present) is exact against it (DESIGN.md §4: scores within tolerance, every
// returned index valid, distinct, scored as reported and no worse than the k-th best); the
// reference backward against central finite differences; every backward variant against the
// reference; bitwise determinism; planted bugs the checker must reject; error paths.
// Build and run: cmake --build build --target pk_topk_test && ctest --test-dir build -L pk_topk
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
#include <ostream>
#include <set>
#include <string>
#include <vector>

#include "common/bf16.h"
#include "common/parallel.h"
#include "pk_topk/pk_topk.h"
#include "reference/pk_topk.h"
#include "tests/common/buffer.h"
#include "tests/common/cases.h"
#include "tests/common/check.h"
#include "tests/common/random.h"

namespace memlayers::pk_topk {
namespace {

using test::CheckResult;
using test::DeviceBuffer;
using test::planted;
using test::short_name;
using test::variant_label;

// ---- problems ----

struct Shape {
  int64_t batch, heads, n_keys, k_dim, k;
  bool ties = false;  // pairs of identical sub-key rows: exact ties, broken by the lower index
};

std::string shape_label(const Shape& s) {
  return fmt::format("b{}_h{}_nk{}_n{}_k{}{}", s.batch, s.heads, s.n_keys, s.k_dim, s.k,
                     s.ties ? "_ties" : "");
}

struct Problem {
  Shape s;
  DType dt, it;
  bool norm;
  std::vector<unsigned char> q, k1, k2;  // dtype storage
  std::vector<float> grad_scores;        // (B, h, k)

  FwdParams fwd(const void* q_, const void* k1_, const void* k2_, float* scores,
                void* indices) const {
    FwdParams p;
    p.queries = q_, p.keys1 = k1_, p.keys2 = k2_, p.scores = scores, p.indices = indices;
    p.batch = s.batch, p.heads = s.heads, p.n_keys = s.n_keys, p.k_dim = s.k_dim, p.k = s.k;
    p.dtype = dt, p.index_dtype = it, p.qk_norm = norm;
    return p;
  }
  FwdParams host_fwd(float* scores, void* indices) const {
    return fwd(q.data(), k1.data(), k2.data(), scores, indices);
  }
  int64_t rows() const { return s.batch * s.heads; }
  int64_t results() const { return rows() * s.k; }
};

Problem make_problem(const std::string& seed, const Shape& s, DType dt, DType it, bool norm) {
  test::Rng rng(seed);
  Problem p{s, dt, it, norm, {}, {}, {}, {}};
  const std::size_t half = static_cast<std::size_t>(s.k_dim / 2), es = dtype_size(dt);
  p.q = test::random_values(rng, dt, static_cast<std::size_t>(s.batch * s.heads * s.k_dim));
  p.k1 = test::random_values(rng, dt, static_cast<std::size_t>(s.heads * s.n_keys) * half);
  p.k2 = test::random_values(rng, dt, static_cast<std::size_t>(s.heads * s.n_keys) * half);
  if (s.ties)  // odd rows copy the even row before them, in both tables
    for (auto* t : {&p.k1, &p.k2})
      for (int64_t r = 1; r < s.heads * s.n_keys; r += 2)
        if (r % s.n_keys != 0)
          std::memcpy(t->data() + r * half * es, t->data() + (r - 1) * half * es, half * es);
  p.grad_scores.resize(static_cast<std::size_t>(p.results()));
  for (auto& g : p.grad_scores) g = rng.signed_unit();
  return p;
}

double storage_norm(const std::vector<unsigned char>& v, DType t) {
  return test::norm(test::to_doubles(v.data(), t, v.size() / dtype_size(t)));
}

void expect_nontrivial_inputs(const Problem& p) {
  EXPECT_GT(storage_norm(p.q, p.dt), 0);
  EXPECT_GT(storage_norm(p.k1, p.dt), 0);
  EXPECT_GT(storage_norm(p.k2, p.dt), 0);
}

int64_t index_at(const std::vector<unsigned char>& idx, DType t, int64_t i) {
  return t == DType::i32 ? int64_t{reinterpret_cast<const int32_t*>(idx.data())[i]}
                         : reinterpret_cast<const int64_t*>(idx.data())[i];
}

// ---- forward: launch and check ----

struct FwdOut {
  std::vector<float> scores;
  std::vector<unsigned char> indices;
};

std::string launch_fwd(const Variant<FwdParams>& v, const Problem& pr, FwdOut& out) {
  if (std::string why = usable(v.backend); !why.empty()) return why;
  const Memory& mem = *backend_info(v.backend).memory;
  DeviceBuffer Q(mem, pr.q), K1(mem, pr.k1), K2(mem, pr.k2);
  DeviceBuffer S(mem, static_cast<std::size_t>(pr.results()) * 4),
      I(mem, static_cast<std::size_t>(pr.results()) * dtype_size(pr.it));
  S.poison();
  I.poison();
  const FwdParams p = pr.fwd(Q.get(), K1.get(), K2.get(), S.as<float>(), I.get());
  if (std::string why = v.supports(p); !why.empty()) return "variant: " + why;
  Registry<Fwd>::run(v, p, nullptr);
  out.scores = S.to_host<float>();
  out.indices = I.bytes_to_host();
  return {};
}

// The truth: the brute force over all N full keys where that is cheap, else the reference (which
// equals the brute force: ReferenceEqualsBruteForce).
FwdOut truth(const Problem& pr) {
  FwdOut t{std::vector<float>(static_cast<std::size_t>(pr.results())),
           std::vector<unsigned char>(static_cast<std::size_t>(pr.results()) * dtype_size(pr.it))};
  const FwdParams p = pr.host_fwd(t.scores.data(), t.indices.data());
  if (pr.s.n_keys <= 128)
    reference::pk_topk_brute_force(p);
  else
    reference::pk_topk_fwd(p);
  return t;
}

// The largest ‖q̂‖·‖k̂‖ over the problem's rows and full keys (fp64, normalised when the case is),
// the magnitude against which a score's rounding error is measured.
double score_scale(const Problem& pr) {
  const int64_t half = pr.s.k_dim / 2;
  auto half_norm2 = [&](const std::vector<unsigned char>& data, int64_t row, int64_t stride,
                        int64_t off) {
    const auto x = test::to_doubles(data.data() + (row * stride + off) * dtype_size(pr.dt), pr.dt,
                                    static_cast<std::size_t>(half));
    double s = 0;
    for (double v : x) s += v * v;
    // Normalised, every half has mean square 1/(1 + eps/ms): ‖x̂‖² = half·ms / (ms + eps).
    return pr.norm ? double(half) * (s / double(half)) / (s / double(half) + kNormEps) : s;
  };
  double q2 = 0, k2 = 0;
  for (int64_t r = 0; r < pr.rows(); ++r)
    q2 = std::max(q2, half_norm2(pr.q, r, pr.s.k_dim, 0) + half_norm2(pr.q, r, pr.s.k_dim, half));
  for (int64_t h = 0; h < pr.s.heads; ++h) {
    double a = 0, b = 0;
    for (int64_t i = 0; i < pr.s.n_keys; ++i) {
      a = std::max(a, half_norm2(pr.k1, h * pr.s.n_keys + i, half, 0));
      b = std::max(b, half_norm2(pr.k2, h * pr.s.n_keys + i, half, 0));
    }
    k2 = std::max(k2, a + b);
  }
  return std::sqrt(q2 * k2);
}

// DESIGN.md §4 for top-k: the returned scores equal the true k best within tolerance; every
// returned index is in range, distinct within its row, recomputes (fp64, over the full key) to
// the score reported beside it, and is no worse than the true k-th best.
CheckResult check_fwd(const Problem& pr, const FwdOut& out) {
  const FwdOut want = truth(pr);
  const std::vector<double> got_s(out.scores.begin(), out.scores.end()),
      want_s(want.scores.begin(), want.scores.end());
  EXPECT_GT(test::norm(want_s), 0) << "true scores are all zeros: the case proves nothing";
  test::Tolerance tol = test::tolerance_for(pr.dt, want_s);
  // A score is a dot product: its fp32 rounding scales with ‖q̂‖·‖k̂‖, not with the score, which
  // cancellation can bring near zero (one element per half, normalised: ±1 ± 1).
  tol.atol = std::max(tol.atol, tol.rtol * score_scale(pr));
  // and so does the norm bound: what atol on every element allows, relative to ‖ref‖.
  tol.rel_norm =
      std::max(tol.rel_norm, tol.atol * std::sqrt(double(want_s.size())) / test::norm(want_s));
  CheckResult r = test::compare("scores", got_s, want_s, tol);
  const FwdParams host = pr.host_fwd(nullptr, nullptr);
  const int64_t n = pr.s.n_keys * pr.s.n_keys, k = pr.s.k;
  int64_t bad = 0;
  std::string first;
  for (int64_t row = 0; row < pr.rows() && bad < 5; ++row) {
    std::set<int64_t> seen;
    const double kth = want.scores[row * k + k - 1];
    for (int64_t t = 0; t < k; ++t) {
      const int64_t m = index_at(out.indices, pr.it, row * k + t);
      std::string why;
      if (m < 0 || m >= n)
        why = fmt::format("index {} out of range [0, {})", m, n);
      else if (!seen.insert(m).second)
        why = fmt::format("index {} returned twice", m);
      else {
        const double s = reference::pk_topk_score(host, row / pr.s.heads, row % pr.s.heads, m);
        const double slack = tol.atol + tol.rtol * std::abs(s);
        if (!(std::abs(s - out.scores[row * k + t]) <= slack))
          why =
              fmt::format("index {} scores {} but {} was reported", m, s, out.scores[row * k + t]);
        else if (!(s >= kth - slack))
          why = fmt::format("index {} scores {}, below the k-th best {}", m, s, kth);
      }
      if (!why.empty()) {
        ++bad;
        if (first.empty()) first = fmt::format("row {} slot {}: {}", row, t, why);
      }
    }
  }
  if (bad) {
    r.ok = false;
    r.message += fmt::format("{}indices: {}{} bad; first: {}", r.message.empty() ? "" : "\n", bad,
                             bad >= 5 ? "+" : "", first);
  }
  return r;
}

// ---- the forward sweep ----

std::vector<Shape> sweep_shapes() {
  return {
      {7, 1, 100, 14, 1},        // k = 1; half-width 7
      {5, 4, 100, 14, 7, true},  // exact ties
      {3, 4, 100, 38, 32},       // the paper's k; half-width 19
      {3, 1, 100, 38, 64},       // k = 64
      {2, 4, 100, 2, 100},       // k = n_keys; half-width 1
      {1, 1, 1, 2, 1},           // one key
      {2, 1, 37, 18, 37, true},  // k = n_keys, odd n_keys, ties
      {3, 4, 1024, 512, 32},     // the paper's widths
      {2, 1, 1000, 64, 1000},    // k = n_keys large: every candidate path at scale
      {20, 1, 300, 96, 8},       // 16-byte rows (v4/v5's cp.async ring, wrapping) over 3 key
                                 // tiles and 2 query tiles, small enough for the sanitizers
      {5, 2, 1100, 16, 32},      // more keys than the cpu searches' 1024-key chunk: the k best
                                 // of the chunks before filter a short last chunk
  };
}

// Cases per backend: the full dtype × index × norm cross except on simt (thousands of times
// slower than a GPU): there each shape gets two of the eight combinations, in turn. Under TSan
// every backend leaves out the two shapes with about a thousand keys (the cpu variants' threads
// split over heads and query blocks, as busy at h = 4 with 100 keys; simt's kernels take the same
// paths on the smaller shapes), and the reference (one thread) runs no case
// (tests/common/cases.h).
// `turn`: the variant's position among its backend's, where simt's rotation starts, so that the
// simt variants cover different combinations of a shape (the paper's widths in fp32 for one,
// bf16 for another).
bool in_sweep(Backend b, std::size_t shape_index, int combo, int turn) {
  const bool thousand_keys = sweep_shapes()[shape_index].n_keys >= 1000;
  if (test::kThreadSanitizer && (b == Backend::reference || thousand_keys)) return false;
  if (b != Backend::simt) return true;
  return (static_cast<int>(shape_index) + combo + turn) % 4 == 0;
}

// Each variant's position among its backend's registered variants.
template <class V>
std::map<const V*, int> turns(const std::vector<const V*>& variants) {
  std::map<const V*, int> out;
  std::map<Backend, int> seen;
  for (const V* v : variants) out[v] = seen[v->backend]++;
  return out;
}

struct FwdCase {
  const Variant<FwdParams>* v;
  Shape shape;
  DType dt, it;
  bool norm;
  std::string name;
};
void PrintTo(const FwdCase& c, std::ostream* os) { *os << c.name; }

std::vector<FwdCase> fwd_cases() {
  const auto shapes = sweep_shapes();
  std::vector<FwdCase> out;
  const auto variants = Registry<Fwd>::of();
  const auto turn = turns(variants);
  for (const auto* v : variants) {
    for (std::size_t si = 0; si < shapes.size(); ++si)
      for (int combo = 0; combo < 8; ++combo) {
        const DType dt = combo & 1 ? DType::bf16 : DType::f32;
        const DType it = combo & 2 ? DType::i32 : DType::i64;
        const bool norm = combo & 4;
        if (!in_sweep(v->backend, si, combo, turn.at(v))) continue;
        // The reference is O(B·h·n_keys·n) in fp64 and the truth beyond 128 keys: one combo.
        if (v->backend == Backend::reference && shapes[si].n_keys > 128 && combo != 5) continue;
        out.push_back(
            {v, shapes[si], dt, it, norm,
             fmt::format("{}_{}_{}{}_{}", variant_label(v->backend, v->name), short_name(dt),
                         short_name(it), norm ? "_norm" : "", shape_label(shapes[si]))});
      }
  }
  return out;
}

class PkTopkFwd : public ::testing::TestWithParam<FwdCase> {};

TEST_P(PkTopkFwd, ExactAgainstBruteForce) {
  const FwdCase& c = GetParam();
  const Problem pr = make_problem(c.name, c.shape, c.dt, c.it, c.norm);
  expect_nontrivial_inputs(pr);
  FwdOut out;
  if (std::string why = launch_fwd(*c.v, pr, out); !why.empty()) GTEST_SKIP() << why;
  const CheckResult r = check_fwd(pr, out);
  EXPECT_TRUE(r.ok) << r.message;
}

INSTANTIATE_TEST_SUITE_P(Sweep, PkTopkFwd, ::testing::ValuesIn(fwd_cases()),
                         [](const auto& i) { return i.param.name; });

// The product-key way and the brute force pick the same indices, in the same order, ties included
// (identical rows give bitwise identical fp64 sums, and both break ties by the lower index).
TEST(PkTopkReference, EqualsBruteForceIndexForIndex) {
  for (const Shape& s :
       {Shape{4, 2, 23, 10, 7, true}, Shape{3, 3, 16, 6, 16, true}, Shape{5, 1, 30, 8, 30}})
    for (bool norm : {false, true}) {
      const Problem pr = make_problem("ref_bf" + shape_label(s), s, DType::f32, DType::i64, norm);
      FwdOut a = truth(pr), b = a;
      reference::pk_topk_fwd(pr.host_fwd(b.scores.data(), b.indices.data()));
      EXPECT_TRUE(test::same_bytes(a.indices, b.indices)) << shape_label(s) << " norm " << norm;
      EXPECT_TRUE(test::same_bytes(a.scores, b.scores)) << shape_label(s) << " norm " << norm;
    }
}

TEST(PkTopkReference, TiesGoToTheLowerIndex) {
  // Every sub-key row equal: all N scores tie, so the k best are indices 0 .. k-1 in order
  // (pairs (0, 0..5): the lowest combined indices).
  Problem pr = make_problem("all_ties", {1, 1, 6, 4, 6}, DType::f32, DType::i64, false);
  for (auto* t : {&pr.k1, &pr.k2})
    for (std::size_t r = 1; r < 6; ++r) std::memcpy(t->data() + r * 8, t->data(), 8);
  for (int brute = 0; brute < 2; ++brute) {
    FwdOut o{std::vector<float>(6), std::vector<unsigned char>(6 * 8)};
    const FwdParams p = pr.host_fwd(o.scores.data(), o.indices.data());
    brute ? reference::pk_topk_brute_force(p) : reference::pk_topk_fwd(p);
    for (int64_t t = 0; t < 6; ++t) EXPECT_EQ(index_at(o.indices, DType::i64, t), t) << brute;
  }
}

// ---- backward ----

enum class Outputs { all, dq, dense, compact };
std::string to_string(Outputs o) {
  switch (o) {
    case Outputs::all:
      return "all";
    case Outputs::dq:
      return "dq";
    case Outputs::dense:
      return "dense";
    case Outputs::compact:
      return "compact";
  }
  return "?";
}

struct KeyGradOut {
  std::vector<float> dense, compact;
  std::vector<int64_t> rows, count;
};
struct BwdOut {
  std::vector<float> dq;
  KeyGradOut g1, g2;
};

// The forward's indices for the backward's input (the reference's, in index dtype).
std::vector<unsigned char> forward_indices(const Problem& pr) {
  FwdOut o{std::vector<float>(static_cast<std::size_t>(pr.results())),
           std::vector<unsigned char>(static_cast<std::size_t>(pr.results()) * dtype_size(pr.it))};
  reference::pk_topk_fwd(pr.host_fwd(o.scores.data(), o.indices.data()));
  return o.indices;
}

// Launches v (or, with v null, the reference on host memory) and reads every output back.
std::string launch_bwd(const Variant<BwdParams>* v, const Problem& pr,
                       const std::vector<unsigned char>& idx, Outputs o, BwdOut& out) {
  const Backend backend = v ? v->backend : Backend::reference;
  if (std::string why = usable(backend); !why.empty()) return why;
  const Memory& mem = *backend_info(backend).memory;
  const std::size_t half = static_cast<std::size_t>(pr.s.k_dim / 2);
  BwdParams p;
  p.batch = pr.s.batch, p.heads = pr.s.heads, p.n_keys = pr.s.n_keys, p.k_dim = pr.s.k_dim;
  p.k = pr.s.k, p.dtype = pr.dt, p.index_dtype = pr.it, p.qk_norm = pr.norm;
  const auto cap = static_cast<std::size_t>(compact_capacity(p));
  const std::size_t dense = static_cast<std::size_t>(pr.s.heads * pr.s.n_keys) * half;
  DeviceBuffer Q(mem, pr.q), K1(mem, pr.k1), K2(mem, pr.k2), I(mem, idx), DS(mem, pr.grad_scores);
  DeviceBuffer DQ(mem, static_cast<std::size_t>(pr.rows() * pr.s.k_dim) * 4);
  DeviceBuffer D1(mem, dense * 4), D2(mem, dense * 4), R1(mem, cap * 8), R2(mem, cap * 8),
      C1(mem, cap * half * 4), C2(mem, cap * half * 4), N1(mem, 8), N2(mem, 8);
  for (DeviceBuffer* b : {&DQ, &D1, &D2, &R1, &R2, &C1, &C2, &N1, &N2}) b->poison();
  p.queries = Q.get(), p.keys1 = K1.get(), p.keys2 = K2.get(), p.indices = I.get();
  p.grad_scores = DS.as<float>();
  if (o == Outputs::all || o == Outputs::dq) p.grad_queries = DQ.as<float>();
  if (o == Outputs::all || o == Outputs::dense) {
    p.grad_keys1.dense = D1.as<float>();
    p.grad_keys2.dense = D2.as<float>();
  }
  if (o == Outputs::all || o == Outputs::compact) {
    p.grad_keys1 = {p.grad_keys1.dense, R1.as<int64_t>(), C1.as<float>(), N1.as<int64_t>()};
    p.grad_keys2 = {p.grad_keys2.dense, R2.as<int64_t>(), C2.as<float>(), N2.as<int64_t>()};
  }
  if (v) {
    if (std::string why = v->supports(p); !why.empty()) return "variant: " + why;
    Registry<Bwd>::run(*v, p, nullptr);
  } else {
    reference::pk_topk_bwd(p);
  }
  if (p.grad_queries) out.dq = DQ.to_host<float>();
  if (p.grad_keys1.dense) out.g1.dense = D1.to_host<float>(), out.g2.dense = D2.to_host<float>();
  if (p.grad_keys1.rows) {
    out.g1 = {out.g1.dense, C1.to_host<float>(), R1.to_host<int64_t>(), N1.to_host<int64_t>()};
    out.g2 = {out.g2.dense, C2.to_host<float>(), R2.to_host<int64_t>(), N2.to_host<int64_t>()};
  }
  return {};
}

void merge(CheckResult& into, const CheckResult& r) {
  if (r.ok) return;
  into.ok = false;
  into.message += (into.message.empty() ? "" : "\n") + r.message;
}

CheckResult compare_floats(const std::string& what, const std::vector<float>& got,
                           const std::vector<float>& want, std::size_t count) {
  std::vector<double> g(got.begin(), got.begin() + count), w(want.begin(), want.begin() + count);
  EXPECT_GT(test::norm(w), 0) << what << ": reference is all zeros: the case proves nothing";
  return test::compare(what, g, w, test::tolerance_for(DType::f32, w));
}

// Compares the outputs `out` holds (those the case requested) with the reference's.
CheckResult check_bwd(const Problem& pr, const std::vector<unsigned char>& idx, const BwdOut& out) {
  BwdOut want;
  EXPECT_EQ(launch_bwd(nullptr, pr, idx, Outputs::all, want), "");
  CheckResult r;
  const std::size_t half = static_cast<std::size_t>(pr.s.k_dim / 2);
  if (!out.dq.empty()) merge(r, compare_floats("dq", out.dq, want.dq, want.dq.size()));
  for (int c = 0; c < 2; ++c) {
    const KeyGradOut &g = c ? out.g2 : out.g1, &w = c ? want.g2 : want.g1;
    const std::string name = c ? "dK2" : "dK1";
    if (!g.dense.empty())
      merge(r, compare_floats(name + " dense", g.dense, w.dense, w.dense.size()));
    if (g.count.empty()) continue;
    if (g.count[0] != w.count[0]) {
      merge(r, {false, 0, 0, 0, -1, 0,
                fmt::format("{} compact: {} rows, reference {}", name, g.count[0], w.count[0])});
      continue;
    }
    const auto u = static_cast<std::size_t>(w.count[0]);
    if (!std::equal(w.rows.begin(), w.rows.begin() + u, g.rows.begin()))
      merge(r, {false, 0, 0, 0, -1, 0, name + " compact: row ids differ from the reference"});
    else
      merge(r, compare_floats(name + " compact", g.compact, w.compact, u * half));
  }
  return r;
}

struct BwdCase {
  const Variant<BwdParams>* v;
  Shape shape;
  DType dt, it;
  bool norm;
  Outputs outputs;
  std::string name;
};
void PrintTo(const BwdCase& c, std::ostream* os) { *os << c.name; }

std::vector<BwdCase> bwd_cases() {
  const auto shapes = sweep_shapes();
  std::vector<BwdCase> out;
  const auto variants = Registry<Bwd>::of();
  const auto turn = turns(variants);
  for (const auto* v : variants)
    for (std::size_t si = 0; si < shapes.size(); ++si)
      for (int combo = 0; combo < 8; ++combo)
        for (Outputs o : {Outputs::all, Outputs::dq, Outputs::dense, Outputs::compact}) {
          const DType dt = combo & 1 ? DType::bf16 : DType::f32;
          const DType it = combo & 2 ? DType::i32 : DType::i64;
          const bool norm = combo & 4;
          if (!in_sweep(v->backend, si, combo, turn.at(v))) continue;
          if (v->backend == Backend::reference && combo != 5) continue;
          // Each output alone on two shapes: a variant may take another path for it.
          if (o != Outputs::all && si != 2 && si != 6) continue;
          out.push_back({v, shapes[si], dt, it, norm, o,
                         fmt::format("{}_{}_{}{}_{}_{}", variant_label(v->backend, v->name),
                                     short_name(dt), short_name(it), norm ? "_norm" : "",
                                     shape_label(shapes[si]), to_string(o))});
        }
  return out;
}

class PkTopkBwd : public ::testing::TestWithParam<BwdCase> {};

TEST_P(PkTopkBwd, MatchesReference) {
  const BwdCase& c = GetParam();
  const Problem pr = make_problem(c.name, c.shape, c.dt, c.it, c.norm);
  expect_nontrivial_inputs(pr);
  const auto idx = forward_indices(pr);
  BwdOut out;
  if (std::string why = launch_bwd(c.v, pr, idx, c.outputs, out); !why.empty()) GTEST_SKIP() << why;
  const CheckResult r = check_bwd(pr, idx, out);
  EXPECT_TRUE(r.ok) << r.message;
}

INSTANTIATE_TEST_SUITE_P(Sweep, PkTopkBwd, ::testing::ValuesIn(bwd_cases()),
                         [](const auto& i) { return i.param.name; });

// ---- the reference backward against central finite differences ----

// L(q, K1, K2) = Σ ds · score(b, h, index), the indices held at the forward's choice: the scores
// are what the backward differentiates (the selection is piecewise constant).
double loss(const Problem& pr, const std::vector<unsigned char>& idx) {
  const FwdParams p = pr.host_fwd(nullptr, nullptr);
  double l = 0;
  for (int64_t i = 0; i < pr.results(); ++i)
    l += double{pr.grad_scores[i]} * reference::pk_topk_score(p, i / pr.s.k / pr.s.heads,
                                                              i / pr.s.k % pr.s.heads,
                                                              index_at(idx, pr.it, i));
  return l;
}

TEST(PkTopkReference, BackwardMatchesFiniteDifferences) {
  for (bool norm : {false, true}) {
    Problem pr = make_problem("fd", {2, 2, 5, 6, 3}, DType::f32, DType::i64, norm);
    const auto idx = forward_indices(pr);
    BwdOut g;
    ASSERT_EQ(launch_bwd(nullptr, pr, idx, Outputs::all, g), "");
    struct Tensor {
      const char* name;
      std::vector<unsigned char>* data;
      const std::vector<float>* grad;
    } tensors[] = {{"q", &pr.q, &g.dq}, {"K1", &pr.k1, &g.g1.dense}, {"K2", &pr.k2, &g.g2.dense}};
    for (const Tensor& t : tensors) {
      auto* x = reinterpret_cast<float*>(t.data->data());
      const std::size_t n = t.data->size() / 4;
      double worst = 0, scale = 0;
      for (std::size_t i = 0; i < n; ++i) {
        const float x0 = x[i], h = 1e-2f;
        x[i] = x0 + h;
        const double up = loss(pr, idx);
        const double step_up = double{x[i]} - x0;
        x[i] = x0 - h;
        const double down = loss(pr, idx);
        const double step = step_up + (x0 - double{x[i]});
        x[i] = x0;
        const double fd = (up - down) / step, an = (*t.grad)[i];
        worst = std::max(worst, std::abs(fd - an));
        scale = std::max(scale, std::abs(fd));
      }
      EXPECT_GT(scale, 0) << t.name << ": all finite differences are zero";
      // Without the norm the loss is bilinear: central differences are exact to rounding.
      EXPECT_LE(worst, (norm ? 1e-3 : 1e-5) * scale) << t.name << " norm " << norm;
    }
  }
}

// ---- determinism ----

class PkTopkBwdDeterminism
    : public ::testing::TestWithParam<std::pair<const Variant<BwdParams>*, std::string>> {};

TEST_P(PkTopkBwdDeterminism, IdenticalBytes) {
  const auto& v = *GetParam().first;
  // Many tokens on few keys: rows repeat heavily, where an unordered sum would show.
  for (bool norm : {false, true}) {
    const Problem pr =
        make_problem(GetParam().second, {23, 2, 11, 10, 9}, DType::f32, DType::i64, norm);
    const auto idx = forward_indices(pr);
    BwdOut a, b;
    if (std::string why = launch_bwd(&v, pr, idx, Outputs::all, a); !why.empty())
      GTEST_SKIP() << why;
    if (!test::kRunTwice) continue;
    ASSERT_EQ(launch_bwd(&v, pr, idx, Outputs::all, b), "");
    EXPECT_TRUE(test::same_bytes(a.dq, b.dq)) << "dq differs between runs";
    for (auto [x, y] : {std::pair{&a.g1, &b.g1}, std::pair{&a.g2, &b.g2}}) {
      EXPECT_TRUE(test::same_bytes(x->dense, y->dense)) << "dense dK differs between runs";
      ASSERT_TRUE(test::same_bytes(x->count, y->count));
      const auto u = static_cast<std::size_t>(x->count[0]);
      EXPECT_TRUE(test::same_bytes(x->rows, y->rows, u));
      EXPECT_TRUE(test::same_bytes(x->compact, y->compact, u * 5)) << "compact dK differs";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Registered, PkTopkBwdDeterminism,
                         ::testing::ValuesIn(test::deterministic_variants(Registry<Bwd>::of())),
                         [](const auto& i) { return i.param.second; });

// v2_bwd_grouped sums each key row in bag order, whichever thread runs which of its chunks. Run
// inside a chunk of the pool, every parallel_for it calls runs serially on that one thread; the
// bytes must equal a threaded run's (and TSan watches the threaded one).
TEST(PkTopkBwdGrouped, SameBytesWhenItsLoopsRunOnOneThread) {
  const Variant<BwdParams>& v = Registry<Bwd>::find(Backend::cpu, "v2_bwd_grouped");
  for (bool norm : {false, true}) {
    const Problem pr =
        make_problem("grouped_one_thread", {3000, 2, 40, 16, 16}, DType::f32, DType::i64, norm);
    const auto idx = forward_indices(pr);
    BwdOut threaded, serial;
    ASSERT_EQ(launch_bwd(&v, pr, idx, Outputs::all, threaded), "");
    std::string why = "not run";
    parallel_for(1, 1,
                 [&](int64_t, int64_t) { why = launch_bwd(&v, pr, idx, Outputs::all, serial); });
    ASSERT_EQ(why, "");
    EXPECT_TRUE(test::same_bytes(threaded.dq, serial.dq)) << "dq, norm " << norm;
    for (auto [a, b] : {std::pair{&threaded.g1, &serial.g1}, std::pair{&threaded.g2, &serial.g2}}) {
      EXPECT_TRUE(test::same_bytes(a->dense, b->dense)) << "dense dK, norm " << norm;
      ASSERT_TRUE(test::same_bytes(a->count, b->count));
      const auto u = static_cast<std::size_t>(a->count[0]);
      EXPECT_TRUE(test::same_bytes(a->rows, b->rows, u));
      EXPECT_TRUE(
          test::same_bytes(a->compact, b->compact, u * static_cast<std::size_t>(pr.s.k_dim / 2)))
          << "compact dK, norm " << norm;
    }
  }
}

class PkTopkFwdDeterminism
    : public ::testing::TestWithParam<std::pair<const Variant<FwdParams>*, std::string>> {};

TEST_P(PkTopkFwdDeterminism, IdenticalBytes) {
  const Problem pr =
      make_problem(GetParam().second, {5, 4, 100, 14, 7, true}, DType::f32, DType::i64, true);
  FwdOut a, b;
  if (std::string why = launch_fwd(*GetParam().first, pr, a); !why.empty()) GTEST_SKIP() << why;
  if (!test::kRunTwice) return;
  ASSERT_EQ(launch_fwd(*GetParam().first, pr, b), "");
  EXPECT_TRUE(test::same_bytes(a.scores, b.scores));
  EXPECT_TRUE(test::same_bytes(a.indices, b.indices));
}

INSTANTIATE_TEST_SUITE_P(Registered, PkTopkFwdDeterminism,
                         ::testing::ValuesIn(test::deterministic_variants(Registry<Fwd>::of())),
                         [](const auto& i) { return i.param.second; });

// ---- planted bugs: the checker must reject them ----

// The combined index built the wrong way round (i2·n_keys + i1): every score is right, so only
// the index check can see it.
void planted_fwd(const FwdParams& p, Stream) {
  reference::pk_topk_fwd(p);
  for (int64_t i = 0; i < p.batch * p.heads * p.k; ++i) {
    auto swap = [&](int64_t m) { return m % p.n_keys * p.n_keys + m / p.n_keys; };
    if (p.index_dtype == DType::i32)
      static_cast<int32_t*>(p.indices)[i] =
          static_cast<int32_t>(swap(static_cast<int32_t*>(p.indices)[i]));
    else
      static_cast<int64_t*>(p.indices)[i] = swap(static_cast<int64_t*>(p.indices)[i]);
  }
}

// Ignores qk_norm in the key gradients (dq is right): the kind of slip a fused backward makes.
void planted_bwd(const BwdParams& p, Stream) {
  reference::pk_topk_bwd(p);
  BwdParams plain = p;
  plain.qk_norm = false;
  plain.grad_queries = nullptr;
  if (plain.grad_keys1.any() || plain.grad_keys2.any()) reference::pk_topk_bwd(plain);
}

MEMLAYERS_REGISTER(Fwd, Variant<FwdParams>{.name = "planted_swapped_index",
                                           .backend = Backend::cpu,
                                           .launch = planted_fwd,
                                           .summary = "planted bug: i2·n_keys + i1",
                                           .expected_wrong = true});
MEMLAYERS_REGISTER(Bwd, Variant<BwdParams>{.name = "planted_no_key_norm_grad",
                                           .backend = Backend::cpu,
                                           .launch = planted_bwd,
                                           .summary = "planted bug: key gradients ignore qk_norm",
                                           .expected_wrong = true});

TEST(PkTopkPlanted, CheckerRejectsSwappedIndex) {
  const Problem pr =
      make_problem("planted_fwd", {3, 4, 100, 38, 32}, DType::f32, DType::i64, false);
  FwdOut out;
  ASSERT_EQ(launch_fwd(planted<Fwd>(), pr, out), "");
  const CheckResult r = check_fwd(pr, out);
  EXPECT_FALSE(r.ok) << "the checker accepted swapped index halves";
  EXPECT_NE(r.message.find("indices:"), std::string::npos) << r.message;
  EXPECT_EQ(r.mismatches, 0) << "the planted scores are right; only the indices are wrong";
}

TEST(PkTopkPlanted, CheckerRejectsMissingNormGradient) {
  const Problem pr = make_problem("planted_bwd", {5, 4, 100, 14, 7}, DType::f32, DType::i64, true);
  const auto idx = forward_indices(pr);
  for (Outputs o : {Outputs::dense, Outputs::compact}) {
    BwdOut out;
    ASSERT_EQ(launch_bwd(&planted<Bwd>(), pr, idx, o, out), "");
    const CheckResult r = check_bwd(pr, idx, out);
    EXPECT_FALSE(r.ok) << to_string(o) << ": the checker accepted dK without the norm backward";
  }
}

// ---- errors ----

struct Valid {
  std::vector<float> q = std::vector<float>(2 * 4 * 8, 0.5f), k1 = std::vector<float>(4 * 10 * 4),
                     k2 = k1, scores = std::vector<float>(2 * 4 * 3);
  std::vector<int64_t> idx = std::vector<int64_t>(2 * 4 * 3);
  FwdParams fwd() {
    FwdParams p;
    p.queries = q.data(), p.keys1 = k1.data(), p.keys2 = k2.data(), p.scores = scores.data();
    p.indices = idx.data(), p.batch = 2, p.heads = 4, p.n_keys = 10, p.k_dim = 8, p.k = 3;
    return p;
  }
};

void expect_error(const FwdParams& p, const std::string& fragment) {
  const std::string why = validate(p);
  EXPECT_NE(why.find(fragment), std::string::npos) << "got: '" << why << "'";
  try {
    Registry<Fwd>::run(Registry<Fwd>::find(Backend::reference, "reference"), p);
    ADD_FAILURE() << "no error for: " << fragment;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
  }
}

TEST(PkTopkErrors, ShapesAndPointers) {
  Valid v;
  EXPECT_EQ(validate(v.fwd()), "");
  auto p = v.fwd();
  p.k = 11;
  expect_error(p, "k = 11: accepted 1 <= k <= min(n_keys = 10");
  p = v.fwd(), p.k = 0;
  expect_error(p, "k = 0");
  p = v.fwd(), p.k_dim = 7;
  expect_error(p, "k_dim = 7: accepted even k_dim");
  p = v.fwd(), p.batch = 0;
  expect_error(p, "batch = 0");
  p = v.fwd(), p.heads = 0;
  expect_error(p, "heads = 0");
  p = v.fwd(), p.n_keys = 0;
  expect_error(p, "n_keys = 0");
  p = v.fwd(), p.queries = nullptr;
  expect_error(p, "queries is null");
  p = v.fwd(), p.indices = nullptr;
  expect_error(p, "indices is null");
  p = v.fwd(), p.scores = reinterpret_cast<float*>(reinterpret_cast<char*>(v.scores.data()) + 1);
  expect_error(p, "scores = ");
  p = v.fwd(), p.dtype = DType::i32;
  expect_error(p, "dtype = int32: accepted fp32, bf16");
  p = v.fwd(), p.n_keys = 50000, p.index_dtype = DType::i32;
  expect_error(p, "index_dtype = int32 with n_keys = 50000");
}

TEST(PkTopkErrors, NanQueryIsRefused) {
  Valid v;
  v.q[1 * 4 * 8 + 2 * 8 + 5] = std::numeric_limits<float>::quiet_NaN();
  const std::string why = find_nonfinite(v.q.data(), DType::f32, 2, 4, 8);
  EXPECT_EQ(why, "queries[b=1, h=2, 5] is nan: the search needs finite queries");
  EXPECT_THROW(Registry<Fwd>::run(Registry<Fwd>::find(Backend::reference, "reference"), v.fwd()),
               Error);
  EXPECT_EQ(find_nonfinite(Valid().q.data(), DType::f32, 2, 4, 8), "");
}

TEST(PkTopkErrors, BackwardOutputsAndIndices) {
  Valid v;
  std::vector<float> ds(v.scores.size(), 1.0f), dq(v.q.size());
  std::vector<int64_t> rows(40);
  BwdParams p;
  p.queries = v.q.data(), p.keys1 = v.k1.data(), p.keys2 = v.k2.data(), p.indices = v.idx.data();
  p.grad_scores = ds.data(), p.batch = 2, p.heads = 4, p.n_keys = 10, p.k_dim = 8, p.k = 3;
  EXPECT_NE(validate(p).find("no output requested"), std::string::npos) << validate(p);
  p.grad_keys1.rows = rows.data();
  EXPECT_NE(validate(p).find("grad_keys1 needs rows, compact and num_rows together"),
            std::string::npos)
      << validate(p);
  p.grad_keys1.rows = nullptr, p.grad_queries = dq.data();
  EXPECT_EQ(validate(p), "");
  EXPECT_EQ(compact_capacity(p), 4 * 6);
  v.idx[7] = 100;
  EXPECT_EQ(find_bad_index(v.idx.data(), DType::i64, 2, 4, 3, 10),
            "index 100 out of range [0, 100) at b=0, h=2, slot 1");
  EXPECT_THROW(Registry<Bwd>::run(Registry<Bwd>::find(Backend::reference, "reference"), p), Error);
}

}  // namespace
}  // namespace memlayers::pk_topk
