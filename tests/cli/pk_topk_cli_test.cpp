// Runs `memlayers pk-topk` on small random .npy files and checks what it writes against the CPU
// reference computed in this process: forward (fp32 and bf16 storage, int32 and int64 indices,
// qk-norm on and off) and backward (dense key gradients, indices from the file or from a forward
// run first), on every registered variant of the host backends (reference, cpu, simt); then the
// errors a user meets — k > n_keys, an odd k_dim, a NaN query, mismatched shapes, a missing file,
// an out-of-range index, missing flags.
// Build and run:
//   cmake --build build --target cli_test && build/tests/cli/cli_test --gtest_filter='PkTopkCli*'
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "cli_helpers.h"
#include "common/backend.h"
#include "common/bf16.h"
#include "common/registry.h"
#include "npy/npy.h"
#include "pk_topk/pk_topk.h"
#include "reference/pk_topk.h"

namespace {

namespace fs = std::filesystem;
namespace npy = memlayers::npy;
using memlayers::Backend;
using memlayers::DType;
using memlayers::Registry;
using namespace memlayers::cli_test;  // NOLINT: the shared CLI test helpers
using memlayers::pk_topk::Bwd;
using memlayers::pk_topk::Fwd;
using ::testing::HasSubstr;
using ::testing::StartsWith;

// ---- problems and their reference results ----

struct Problem {
  std::int64_t batch = 0, heads = 0, n_keys = 0, k_dim = 0, k = 0;
  std::vector<float> q, k1, k2, ds;
};

// Normal queries and keys (never zeros), and ds in [-1, 1).
Problem make_problem(std::int64_t batch, std::int64_t heads, std::int64_t n_keys,
                     std::int64_t k_dim, std::int64_t k, unsigned seed) {
  Problem p{batch, heads, n_keys, k_dim, k, {}, {}, {}, {}};
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> unit(-1.0f, 1.0f);
  for (std::int64_t i = 0; i < batch * heads * k_dim; ++i) p.q.push_back(normal(rng));
  for (std::int64_t i = 0; i < heads * n_keys * (k_dim / 2); ++i) {
    p.k1.push_back(normal(rng));
    p.k2.push_back(normal(rng));
  }
  for (std::int64_t i = 0; i < batch * heads * k; ++i) p.ds.push_back(unit(rng));
  return p;
}

// Data as the op stores it: fp32 as is, bf16 as rounded bit patterns.
struct Stored {
  std::vector<float> f32;
  std::vector<std::uint16_t> b16;
  const void* get(DType t) const {
    return t == DType::bf16 ? static_cast<const void*>(b16.data()) : f32.data();
  }
};
Stored stored(const std::vector<float>& v) {
  Stored s{v, {}};
  for (float x : v) s.b16.push_back(memlayers::float_to_bf16_bits(x));
  return s;
}

struct Inputs {
  Stored q, k1, k2;
  explicit Inputs(const Problem& p) : q(stored(p.q)), k1(stored(p.k1)), k2(stored(p.k2)) {}
};

// The inputs, sizes and types that FwdParams and BwdParams share (indices int64).
template <class Params>
Params shared_params(const Problem& pr, const Inputs& in, DType dtype, bool qk_norm) {
  Params p;
  p.queries = in.q.get(dtype);
  p.keys1 = in.k1.get(dtype);
  p.keys2 = in.k2.get(dtype);
  p.batch = pr.batch;
  p.heads = pr.heads;
  p.n_keys = pr.n_keys;
  p.k_dim = pr.k_dim;
  p.k = pr.k;
  p.dtype = dtype;
  p.index_dtype = DType::i64;
  p.qk_norm = qk_norm;
  return p;
}

memlayers::pk_topk::FwdParams fwd_params(const Problem& pr, const Inputs& in, DType dtype,
                                         bool qk_norm) {
  return shared_params<memlayers::pk_topk::FwdParams>(pr, in, dtype, qk_norm);
}

struct FwdResult {
  std::vector<float> scores;
  std::vector<std::int64_t> indices;
};

FwdResult reference_fwd(const Problem& pr, DType dtype, bool qk_norm) {
  const Inputs in(pr);
  FwdResult r{std::vector<float>(std::size_t(pr.batch * pr.heads * pr.k)),
              std::vector<std::int64_t>(std::size_t(pr.batch * pr.heads * pr.k))};
  auto p = fwd_params(pr, in, dtype, qk_norm);
  p.scores = r.scores.data();
  p.indices = r.indices.data();
  memlayers::reference::pk_topk_fwd(p);
  return r;
}

struct Grads {
  std::vector<float> dq, dk1, dk2;
};

Grads reference_bwd(const Problem& pr, DType dtype, bool qk_norm,
                    const std::vector<std::int64_t>& indices) {
  const Inputs in(pr);
  const std::int64_t keys = pr.heads * pr.n_keys * (pr.k_dim / 2);
  Grads g{std::vector<float>(std::size_t(pr.batch * pr.heads * pr.k_dim)),
          std::vector<float>(std::size_t(keys)), std::vector<float>(std::size_t(keys))};
  auto p = shared_params<memlayers::pk_topk::BwdParams>(pr, in, dtype, qk_norm);
  p.indices = indices.data();
  p.grad_scores = pr.ds.data();
  p.grad_queries = g.dq.data();
  p.grad_keys1.dense = g.dk1.data();
  p.grad_keys2.dense = g.dk2.data();
  memlayers::reference::pk_topk_bwd(p);
  return g;
}

// The top-k exactness rule (DESIGN.md §4): scores close to the reference's; every returned index
// distinct within its (token, head), in range, and its recomputed score within tolerance of the
// reference's k-th best (near-ties may reorder).
void expect_topk(const Problem& pr, DType dtype, bool qk_norm, const std::vector<float>& scores,
                 const std::vector<std::int64_t>& indices, const FwdResult& want,
                 const std::string& what) {
  expect_close(scores, want.scores, 1e-5, what + " scores");
  ASSERT_EQ(indices.size(), want.indices.size()) << what;
  const Inputs in(pr);
  const auto p = fwd_params(pr, in, dtype, qk_norm);
  std::int64_t bad = 0;
  std::ostringstream first;
  for (std::int64_t b = 0; b < pr.batch; ++b)
    for (std::int64_t h = 0; h < pr.heads; ++h) {
      const std::int64_t base = (b * pr.heads + h) * pr.k;
      const double kth = want.scores[base + pr.k - 1];
      std::set<std::int64_t> seen;
      for (std::int64_t t = 0; t < pr.k; ++t) {
        const std::int64_t m = indices[base + t];
        bool ok = m >= 0 && m < pr.n_keys * pr.n_keys && seen.insert(m).second;
        if (ok) {
          const double s = memlayers::reference::pk_topk_score(p, b, h, m);
          ok = s >= kth - 1e-5 * (1 + std::fabs(kth));
        }
        if (!ok) {
          if (bad < 5) first << " b=" << b << " h=" << h << " slot " << t << " index " << m << ";";
          ++bad;
        }
      }
    }
  EXPECT_EQ(bad, 0) << what << ": " << bad
                    << " returned indices are not among the k best:" << first.str();
}

std::vector<std::int64_t> read_indices(const fs::path& p, DType want,
                                       const std::vector<std::int64_t>& shape) {
  const npy::Array a = npy::read(p);
  EXPECT_EQ(a.dtype, want) << p;
  EXPECT_EQ(a.shape, shape) << p;
  if (a.dtype == DType::i32) {
    const auto v = a.to_vector<std::int32_t>();
    return {v.begin(), v.end()};
  }
  return a.to_vector<std::int64_t>();
}

// ---- the variants to run: every registered one on the host backends, by name ----

struct Target {
  std::string backend, variant;
};

template <class Op>
std::vector<Target> host_targets() {
  std::vector<Target> out;
  for (Backend b : {Backend::reference, Backend::cpu, Backend::simt})
    for (const auto* v : Registry<Op>::of(b))
      out.push_back({std::string(memlayers::to_string(b)), v->name});
  return out;
}

std::string flags(const Target& t) { return " --backend " + t.backend + " --variant " + t.variant; }

// ---- the fixture: a temp dir holding one problem's files ----

class PkTopkCli : public memlayers::cli_test::TempDirTest {
 protected:
  PkTopkCli() : TempDirTest("memlayers_pk_topk_cli_") {}

  void write(const Problem& p) {
    npy::write(file("q.npy"), npy::Array::from<float>({p.batch, p.heads, p.k_dim}, p.q));
    const std::vector<std::int64_t> keys{p.heads, p.n_keys, p.k_dim / 2};
    npy::write(file("K1.npy"), npy::Array::from<float>(keys, p.k1));
    npy::write(file("K2.npy"), npy::Array::from<float>(keys, p.k2));
    npy::write(file("ds.npy"), npy::Array::from<float>({p.batch, p.heads, p.k}, p.ds));
  }
  void write_indices(const Problem& p, const std::vector<std::int64_t>& idx) {
    npy::write(file("i.npy"), npy::Array::from<std::int64_t>({p.batch, p.heads, p.k}, idx));
  }
  std::string inputs(std::int64_t k) const {
    return "pk-topk --queries " + arg("q.npy") + " --keys1 " + arg("K1.npy") + " --keys2 " +
           arg("K2.npy") + " --k " + std::to_string(k) + " --indices " + arg("i.npy");
  }
  std::string forward(std::int64_t k) const { return inputs(k) + " --scores " + arg("s.npy"); }
  std::string backward(std::int64_t k) const {
    return inputs(k) + " --backward --grad-scores " + arg("ds.npy");
  }
  std::string all_grads() const {
    return " --grad-queries " + arg("dq.npy") + " --grad-keys1 " + arg("dK1.npy") +
           " --grad-keys2 " + arg("dK2.npy");
  }

  // A run that must fail with `code`, writing no output and nothing on stdout.
  Result fails(const std::string& args, int code) {
    return fails_writing_none(args, code, {"s.npy", "dq.npy", "dK1.npy", "dK2.npy"});
  }
};

// ---- forward ----

TEST_F(PkTopkCli, ForwardMatchesReference) {
  // n_keys 20 (not a power of two), k_dim 14 (halves of 7: ragged against every vector width).
  const Problem p = make_problem(5, 2, 20, 14, 7, 1);
  write(p);
  for (const bool qk_norm : {false, true}) {
    const FwdResult want = reference_fwd(p, DType::f32, qk_norm);
    for (const DType it : {DType::i64, DType::i32}) {
      for (const Target& t : host_targets<Fwd>()) {
        const std::string what = t.backend + "/" + t.variant + " " +
                                 std::string(memlayers::to_string(it)) +
                                 (qk_norm ? " qk-norm" : "");
        SCOPED_TRACE(what);
        fs::remove(file("i.npy"));
        const std::string args = forward(7) + flags(t) + (qk_norm ? " --qk-norm" : "") +
                                 " --index " + (it == DType::i32 ? "int32" : "int64");
        const Result r = ok(args, {"s.npy", "i.npy"});
        EXPECT_THAT(r.err, StartsWith("pk-topk forward: " + t.backend + "/" + t.variant +
                                      ", queries (5, 2, 14) fp32, keys (2, 20, 7) fp32, k 7"));
        EXPECT_THAT(r.err, HasSubstr("-> scores (5, 2, 7) fp32, indices (5, 2, 7) " +
                                     std::string(memlayers::to_string(it))));
        expect_topk(p, DType::f32, qk_norm, read_floats(file("s.npy"), {5, 2, 7}),
                    read_indices(file("i.npy"), it, {5, 2, 7}), want, what);
      }
    }
  }
}

TEST_F(PkTopkCli, ForwardEqualsBruteForceAndDefaultsToCpu) {
  const Problem p = make_problem(3, 4, 100, 38, 32, 2);
  write(p);
  // The brute force over all n_keys² full keys is the definition the product-key search meets.
  const Inputs in(p);
  FwdResult brute{std::vector<float>(3 * 4 * 32), std::vector<std::int64_t>(3 * 4 * 32)};
  auto bp = fwd_params(p, in, DType::f32, false);
  bp.scores = brute.scores.data();
  bp.indices = brute.indices.data();
  memlayers::reference::pk_topk_brute_force(bp);
  const auto cpu = Registry<Fwd>::of(Backend::cpu);
  const bool have_cpu = !cpu.empty();
  const Result r = ok(forward(32) + (have_cpu ? "" : " --backend reference"), {"s.npy", "i.npy"});
  if (have_cpu) {
    EXPECT_THAT(r.err, StartsWith("pk-topk forward: cpu/" + cpu.front()->name + ", "));
  }
  expect_topk(p, DType::f32, false, read_floats(file("s.npy"), {3, 4, 32}),
              read_indices(file("i.npy"), DType::i64, {3, 4, 32}), brute, "vs brute force");
}

TEST_F(PkTopkCli, ForwardBf16Storage) {
  const Problem p = make_problem(4, 2, 24, 16, 7, 3);
  write(p);
  const FwdResult bf16 = reference_fwd(p, DType::bf16, false);
  const FwdResult exact = reference_fwd(p, DType::f32, false);
  for (const Target& t : host_targets<Fwd>()) {
    const std::string what = t.backend + "/" + t.variant;
    SCOPED_TRACE(what);
    const Result r = ok(forward(7) + flags(t) + " --dtype bf16", {"s.npy", "i.npy"});
    EXPECT_THAT(r.err, HasSubstr("queries (4, 2, 16) bf16, keys (2, 24, 8) bf16"));
    const auto s = read_floats(file("s.npy"), {4, 2, 7});
    // bf16 products are exact in fp32, so the op on the rounded inputs matches its reference
    // tightly, and differs from the fp32 inputs' result by about bf16's precision.
    expect_topk(p, DType::bf16, false, s, read_indices(file("i.npy"), DType::i64, {4, 2, 7}), bf16,
                what);
    EXPECT_GT(relative_error(s, exact.scores), 1e-6) << "--dtype bf16 did not round the inputs";
    EXPECT_LT(relative_error(s, exact.scores), 5e-2);
  }
}

// ---- backward ----

TEST_F(PkTopkCli, BackwardMatchesReference) {
  const Problem p = make_problem(6, 2, 30, 14, 7, 4);
  write(p);
  for (const bool qk_norm : {false, true}) {
    // The indices a forward returns, as a training step would feed them back.
    const FwdResult fwd = reference_fwd(p, DType::f32, qk_norm);
    const Grads want = reference_bwd(p, DType::f32, qk_norm, fwd.indices);
    for (const Target& t : host_targets<Bwd>()) {
      const std::string what = t.backend + "/" + t.variant + (qk_norm ? " qk-norm" : "");
      SCOPED_TRACE(what);
      write_indices(p, fwd.indices);
      const Result r = ok(backward(7) + all_grads() + flags(t) + (qk_norm ? " --qk-norm" : ""),
                          {"dq.npy", "dK1.npy", "dK2.npy"});
      EXPECT_THAT(r.err, StartsWith("pk-topk backward: " + t.backend + "/" + t.variant + ", "));
      EXPECT_THAT(r.err, HasSubstr("indices (6, 2, 7) int64 from the file"));
      EXPECT_THAT(r.err, HasSubstr("-> grad-queries (6, 2, 14) fp32, grad-keys1 (2, 30, 7) fp32, "
                                   "grad-keys2 (2, 30, 7) fp32"));
      EXPECT_THAT(r.err, ::testing::Not(HasSubstr("pk-topk forward"))) << "indices exist: no fwd";
      expect_close(read_floats(file("dq.npy"), {6, 2, 14}), want.dq, 1e-5, what + " dq");
      expect_close(read_floats(file("dK1.npy"), {2, 30, 7}), want.dk1, 1e-5, what + " dK1");
      expect_close(read_floats(file("dK2.npy"), {2, 30, 7}), want.dk2, 1e-5, what + " dK2");
    }
  }
}

TEST_F(PkTopkCli, BackwardRunsTheForwardWhenIndicesAreMissing) {
  const Problem p = make_problem(4, 2, 20, 10, 5, 5);
  write(p);
  fs::remove(file("i.npy"));
  const Result r = ok(backward(5) + " --backend reference --index int32 --scores " + arg("s.npy") +
                          " --grad-keys2 " + arg("dK2.npy"),
                      {"i.npy", "s.npy", "dK2.npy"});
  EXPECT_THAT(r.err, StartsWith("pk-topk forward: reference/reference"));
  EXPECT_THAT(r.err, HasSubstr("pk-topk backward: reference/reference"));
  EXPECT_THAT(r.err, HasSubstr("indices (4, 2, 5) int32 from the forward"));
  EXPECT_FALSE(fs::exists(file("dq.npy")));
  EXPECT_FALSE(fs::exists(file("dK1.npy")));
  const FwdResult fwd = reference_fwd(p, DType::f32, false);
  const auto idx = read_indices(file("i.npy"), DType::i32, {4, 2, 5});
  expect_topk(p, DType::f32, false, read_floats(file("s.npy"), {4, 2, 5}), idx, fwd, "forward");
  expect_close(read_floats(file("dK2.npy"), {2, 20, 5}),
               reference_bwd(p, DType::f32, false, idx).dk2, 1e-5, "dK2");

  // The indices now exist: a second backward reads them, and refuses a --scores nothing writes.
  const Result again =
      ok(backward(5) + " --backend reference --grad-queries " + arg("dq.npy"), {"dq.npy"});
  EXPECT_THAT(again.err, HasSubstr("int32 from the file"));
  const Result stale =
      fails(backward(5) + " --scores " + arg("s.npy") + " --grad-queries " + arg("dq.npy"), 1);
  EXPECT_THAT(stale.err, HasSubstr("no forward runs to write it"));
}

// ---- errors ----

TEST_F(PkTopkCli, KLargerThanNKeysIsRefused) {
  write(make_problem(2, 1, 10, 8, 3, 6));
  const Result r = fails(forward(11), 1);
  EXPECT_THAT(r.err, StartsWith("memlayers: error: pk_topk_fwd: k = 11: accepted 1 <= k <= "
                                "min(n_keys = 10, 1024)"));
  EXPECT_FALSE(fs::exists(file("i.npy")));
  // Refused before anything is sized by k, in the backward too.
  EXPECT_THAT(fails(forward(-1), 1).err, HasSubstr("pk_topk_fwd: k = -1: accepted 1 <= k"));
  EXPECT_THAT(fails(backward(0) + all_grads(), 1).err, HasSubstr("k = 0: accepted 1 <= k"));
}

TEST_F(PkTopkCli, OddKDimIsRefused) {
  Problem p = make_problem(2, 1, 10, 8, 3, 7);
  write(p);
  npy::write(file("q.npy"), npy::Array::from<float>({2, 1, 7}, std::vector<float>(14, 0.5f)));
  const Result r = fails(forward(3), 1);
  EXPECT_THAT(r.err, HasSubstr("--queries (" + arg("q.npy") + "): k_dim = 7"));
  EXPECT_THAT(r.err, HasSubstr("is odd"));
}

TEST_F(PkTopkCli, NonFiniteQueriesAreRefused) {
  Problem p = make_problem(3, 2, 10, 8, 3, 8);
  p.q[(1 * 2 + 1) * 8 + 5] = std::numeric_limits<float>::quiet_NaN();
  write(p);
  const std::string want = "memlayers: error: --queries (" + arg("q.npy") +
                           "): queries[b=1, h=1, 5] is nan: the search needs finite queries\n";
  EXPECT_EQ(fails(forward(3) + " --backend reference", 1).err, want);
  EXPECT_EQ(fails(forward(3) + " --backend simt", 1).err, want);
  write_indices(p, std::vector<std::int64_t>(3 * 2 * 3, 1));
  EXPECT_EQ(fails(backward(3) + all_grads(), 1).err, want);

  // Finite in fp32, infinite once stored as bf16.
  Problem big = make_problem(3, 2, 10, 8, 3, 8);
  big.q[7] = 3.4e38f;
  write(big);
  ok(forward(3) + " --backend reference", {"s.npy", "i.npy"});
  const Result r = fails(forward(3) + " --backend reference --dtype bf16", 1);
  EXPECT_THAT(r.err, HasSubstr("queries[b=0, h=0, 7] is inf: the search needs finite queries "
                               "(after rounding to bf16 for --dtype bf16)"));
}

TEST_F(PkTopkCli, ShapeMismatchesNameTheFile) {
  const Problem p = make_problem(5, 2, 12, 10, 4, 9);
  write(p);
  npy::write(file("K1.npy"), npy::Array::zeros(DType::f32, {2, 12, 4}));
  Result r = fails(forward(4), 1);
  EXPECT_THAT(r.err, HasSubstr("--keys1 (" + arg("K1.npy") +
                               "): shape (2, 12, 4) does not match the expected (2, 12, 5)"));
  write(p);

  npy::write(file("K2.npy"), npy::Array::zeros(DType::f32, {2, 13, 5}));
  r = fails(forward(4), 1);
  EXPECT_THAT(r.err, HasSubstr("--keys2 (" + arg("K2.npy") +
                               "): shape (2, 13, 5) does not match the expected (2, 12, 5)"));
  write(p);

  npy::write(file("K1.npy"), npy::Array::zeros(DType::f32, {3, 12, 5}));
  r = fails(forward(4), 1);
  EXPECT_THAT(r.err, HasSubstr("does not match the expected (2, 12, 5)"));
  write(p);

  npy::write(file("q.npy"), npy::Array::zeros(DType::f32, {5, 20}));
  r = fails(forward(4), 1);
  EXPECT_THAT(r.err, HasSubstr("--queries (" + arg("q.npy") + "): has rank 2"));
  write(p);

  npy::write(file("ds.npy"), npy::Array::zeros(DType::f32, {5, 2, 3}));
  write_indices(p, std::vector<std::int64_t>(5 * 2 * 4, 0));
  r = fails(backward(4) + all_grads(), 1);
  EXPECT_THAT(r.err, HasSubstr("--grad-scores (" + arg("ds.npy") +
                               "): shape (5, 2, 3) does not match the expected (5, 2, 4)"));
  write(p);

  npy::write(file("i.npy"), npy::Array::zeros(DType::i64, {5, 2, 3}));
  r = fails(backward(4) + all_grads(), 1);
  EXPECT_THAT(r.err, HasSubstr("--indices (" + arg("i.npy") +
                               "): shape (5, 2, 3) does not match the expected (5, 2, 4)"));
  npy::write(file("i.npy"), npy::Array::zeros(DType::f32, {5, 2, 4}));
  r = fails(backward(4) + all_grads(), 1);
  EXPECT_THAT(r.err, HasSubstr("dtype fp32 is not accepted here; accepted: int32, int64"));
}

TEST_F(PkTopkCli, MissingFileIsNamed) {
  write(make_problem(2, 1, 10, 8, 3, 10));
  fs::remove(file("K2.npy"));
  const Result r = fails(forward(3), 1);
  EXPECT_THAT(r.err, StartsWith("memlayers: error: "));
  EXPECT_THAT(r.err, HasSubstr(file("K2.npy").string()));
  EXPECT_FALSE(fs::exists(file("i.npy")));
}

TEST_F(PkTopkCli, OutOfRangeIndexIsRefusedBeforeTheRun) {
  const Problem p = make_problem(3, 2, 10, 8, 4, 11);
  write(p);
  std::vector<std::int64_t> idx(3 * 2 * 4, 5);
  idx[(2 * 2 + 1) * 4 + 3] = 100;  // N = 10² = 100
  write_indices(p, idx);
  const Result r = fails(backward(4) + all_grads() + " --backend reference", 1);
  EXPECT_EQ(r.err, "memlayers: error: --indices (" + arg("i.npy") +
                       "): index 100 out of range [0, 100) at b=2, h=1, slot 3\n");
}

TEST_F(PkTopkCli, UsageErrors) {
  write(make_problem(2, 1, 10, 8, 3, 12));
  struct Case {
    std::string args, says;
  };
  const Case cases[] = {
      {inputs(3), "--scores is required"},
      {backward(3), "at least one of --grad-queries, --grad-keys1, --grad-keys2"},
      {inputs(3) + " --backward --grad-queries " + arg("dq.npy"), "--grad-scores"},
      {forward(3) + " --grad-queries " + arg("dq.npy"), "--backward"},
      {forward(3) + " --index int16", "--index"},
      {forward(3) + " --backend gpu", "--backend"},
      {"pk-topk --queries " + arg("q.npy") + " --keys1 " + arg("K1.npy") + " --keys2 " +
           arg("K2.npy") + " --scores " + arg("s.npy") + " --indices " + arg("i.npy"),
       "--k"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.args);
    const Result r = fails(c.args, 2);
    EXPECT_THAT(r.err, StartsWith("memlayers: usage error:"));
    EXPECT_THAT(r.err, HasSubstr(c.says));
  }
}

TEST_F(PkTopkCli, UnknownVariantListsTheRegisteredOnes) {
  write(make_problem(2, 1, 10, 8, 3, 13));
  const Result r = fails(forward(3) + " --backend reference --variant v9_bogus", 1);
  EXPECT_THAT(r.err, HasSubstr("pk_topk_fwd: no variant 'v9_bogus' on backend reference; "
                               "registered there: reference"));
}

}  // namespace
