// The sharded EmbeddingBag (dist/sharded_embbag.h) on the group the test runs in (1 rank alone, 2
// or 4 under mpirun) against the unsharded op run by the same rank on the whole problem.
//
// Every rank builds the same full problem from the case's seed: the (num_rows, dim) table, every
// rank's bags (rank r owns 3 + 2r of them, or none in the cases that say so), their weights and
// dy. Each rank then runs the sharded op on its columns and its own bags, and the registered
// unsharded variant on all the group's bags, and compares:
//   y of its bags   bitwise (the same deterministic variant sums each column in the same order);
//   dV of its shard bitwise, dense and compact (the same row ids, the shard's columns of rows);
//                   on the cpu backend within 1e-6 of each element instead: a SIMD target that
//                   handles a row's last columns in a scalar tail (AVX2; the sanitizer builds'
//                   Highway targets) rounds them without FMA, and a shard moves columns from a
//                   row's middle to its tail (bitwise where the target masks the tail: AVX-512);
//   dw of its bags  relative norm <= 1e-5 (DESIGN.md §4): the shards split each dot product into
//                   partial sums, which changes the order of its additions.
// Small tables (61 rows) make duplicate indices within and across bags and ranks; weights take
// both signs. Every rank makes every collective before any check, so a failed check on one rank
// never leaves another waiting; an unexpected exception ends the group (abort_group).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "common/bf16.h"
#include "common/error.h"
#include "common/registry.h"
#include "dist/sharded_embbag.h"
#include "group.h"
#include "tests/common/mapped.h"

namespace memlayers::dist {
namespace {

using embbag::BwdParams;
using embbag::FwdParams;
using testing::group;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

struct Case {
  Backend backend;
  DType values, index;
  int64_t dim, k;
  bool view = false;         // the shard is a strided view of the full table, not a copy
  int64_t out_pad = 0;       // out_stride = dim + out_pad
  bool rank1_empty = false;  // rank 1 owns no bags
};

void PrintTo(const Case& c, std::ostream* os) {
  *os << fmt::format("{} {} {} dim {} k {}{}, out pad {}{}", to_string(c.backend),
                     to_string(c.values), to_string(c.index), c.dim, c.k,
                     c.view ? ", shard as a view" : "", c.out_pad,
                     c.rank1_empty ? ", rank 1 without bags" : "");
}

std::string case_name(const ::testing::TestParamInfo<Case>& info) {
  const Case& c = info.param;
  return fmt::format("{}_{}_{}_dim{}_k{}{}{}{}", to_string(c.backend), to_string(c.values),
                     to_string(c.index), c.dim, c.k, c.view ? "_view" : "",
                     c.out_pad ? "_padded" : "", c.rank1_empty ? "_rank1empty" : "");
}

int64_t batch_of(const Case& c, int r) { return c.rank1_empty && r == 1 ? 0 : 3 + 2 * r; }

// The whole problem, the same on every rank.
struct Problem {
  int64_t rows = 61, total = 0;
  std::vector<int64_t> batch, first;  // per rank: its bags and where they start
  std::vector<float> table;           // (rows, dim), bf16-representable when values are bf16
  std::vector<int64_t> idx;           // (total, k)
  std::vector<float> w, dy;           // (total, k), (total, dim)
};

Problem make_problem(const Case& c, int P, uint64_t seed) {
  Problem pr;
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  for (int r = 0; r < P; ++r) {
    pr.first.push_back(pr.total);
    pr.batch.push_back(batch_of(c, r));
    pr.total += pr.batch.back();
  }
  pr.table.resize(static_cast<std::size_t>(pr.rows * c.dim));
  for (auto& x : pr.table) x = c.values == DType::bf16 ? round_to_bf16(u(rng)) : u(rng);
  std::uniform_int_distribution<int64_t> row(0, pr.rows - 1);
  pr.idx.resize(static_cast<std::size_t>(pr.total * c.k));
  for (int64_t b = 0; b < pr.total; ++b)
    for (int64_t j = 0; j < c.k; ++j)  // every third slot repeats the bag's first row
      pr.idx[b * c.k + j] = (j % 3 == 2) ? pr.idx[b * c.k] : row(rng);
  pr.w.resize(pr.idx.size());
  for (auto& x : pr.w) x = u(rng);
  pr.dy.resize(static_cast<std::size_t>(pr.total * c.dim));
  for (auto& x : pr.dy) x = u(rng);
  return pr;
}

// Values in the case's dtype: fp32 as is, bf16 as bits (the floats are bf16-representable).
std::vector<unsigned char> as_values(const std::vector<float>& v, DType t) {
  std::vector<unsigned char> out(v.size() * dtype_size(t));
  if (t == DType::f32) {
    std::memcpy(out.data(), v.data(), out.size());
  } else {
    auto* o = reinterpret_cast<uint16_t*>(out.data());
    for (std::size_t i = 0; i < v.size(); ++i) o[i] = float_to_bf16_bits(v[i]);
  }
  return out;
}
std::vector<unsigned char> as_indices(const int64_t* idx, int64_t n, DType t) {
  std::vector<unsigned char> out(static_cast<std::size_t>(n) * dtype_size(t));
  for (int64_t i = 0; i < n; ++i) {
    if (t == DType::i64)
      std::memcpy(out.data() + i * 8, idx + i, 8);
    else
      reinterpret_cast<int32_t*>(out.data())[i] = static_cast<int32_t>(idx[i]);
  }
  return out;
}

double norm(const std::vector<float>& v) {
  double s = 0;
  for (float x : v) s += double(x) * double(x);
  return std::sqrt(s);
}

// Counts elements whose bits differ (NaN-poisoned ones included), with the first five; and, of
// those, the ones beyond 1e-6 (relative, absolute near 0) and NaNs.
struct Diff {
  int64_t mismatches = 0, beyond = 0;
  std::string first;
  void add(const std::string& where, float got, float want) {
    if (std::memcmp(&got, &want, 4) == 0) return;
    if (++mismatches <= 5) first += fmt::format(" {}: {} vs {};", where, got, want);
    if (!(std::abs(double(got) - want) <= 1e-6 * std::max(1.0, std::abs(double(want))))) ++beyond;
  }
  // Bitwise where the backend sums each column in the same order whatever its position; on the
  // cpu backend within 1e-6 (the file's header says why).
  int64_t failures(Backend b) const { return b == Backend::cpu ? beyond : mismatches; }
};

const Variant<FwdParams>& unsharded_fwd(Backend b, const std::string& shard_variant,
                                        const FwdParams& p) {
  if (!shard_variant.empty()) {
    const auto& v = Registry<embbag::Fwd>::find(b, shard_variant);
    if (v.supports(p).empty()) return v;
  }
  // A width-0 shard ran nothing: the rule (highest-numbered deterministic) on the full problem.
  auto all = Registry<embbag::Fwd>::of(b);
  std::stable_sort(all.begin(), all.end(),
                   [](const auto* x, const auto* y) { return x->name > y->name; });
  for (const auto* v : all)
    if (v->deterministic && v->supports(p).empty()) return *v;
  fail("no deterministic embbag_fwd variant on {} supports the full problem", to_string(b));
}
const Variant<BwdParams>& unsharded_bwd(Backend b, const std::string& shard_variant,
                                        const BwdParams& p) {
  if (!shard_variant.empty()) {
    const auto& v = Registry<embbag::Bwd>::find(b, shard_variant);
    if (v.supports(p).empty()) return v;
  }
  auto all = Registry<embbag::Bwd>::of(b);
  std::stable_sort(all.begin(), all.end(),
                   [](const auto* x, const auto* y) { return x->name > y->name; });
  for (const auto* v : all)
    if (v->deterministic && v->supports(p).empty()) return *v;
  fail("no deterministic embbag_bwd variant on {} supports the full problem", to_string(b));
}

class Sharded : public ::testing::TestWithParam<Case> {};

TEST_P(Sharded, EqualsUnsharded) {
  const Case c = GetParam();
  Comm& g = group();
  const int P = g.size(), me = g.rank();
  const ColumnSplit cs{c.dim, P};
  const int64_t width = cs.width(me), begin = cs.begin(me), k = c.k, dim = c.dim;
  const uint64_t seed = 7919 * static_cast<uint64_t>(dim) + 131 * static_cast<uint64_t>(k) +
                        (c.values == DType::bf16 ? 17 : 0) + (c.index == DType::i32 ? 3 : 0);
  const Problem pr = make_problem(c, P, seed);
  const int64_t B = pr.batch[me], off = pr.first[me];
  const std::size_t sv = dtype_size(c.values);

  // ---- the sharded op on this rank's share (every collective happens here) ----
  const auto full_values = as_values(pr.table, c.values);
  std::vector<unsigned char> shard_values;  // a (rows, width) copy unless the case takes a view
  const void* shard_ptr = full_values.data() + static_cast<std::size_t>(begin) * sv;
  int64_t shard_stride = dim;
  if (!c.view) {
    shard_values.resize(static_cast<std::size_t>(pr.rows * width) * sv + 1);
    for (int64_t r = 0; r < pr.rows; ++r)
      std::memcpy(shard_values.data() + r * width * sv,
                  full_values.data() + (r * dim + begin) * static_cast<int64_t>(sv), width * sv);
    shard_ptr = width > 0 ? shard_values.data() : nullptr;
    shard_stride = width;
  }
  const auto my_idx = as_indices(pr.idx.data() + off * k, B * k, c.index);
  const std::vector<float> my_w(pr.w.begin() + off * k, pr.w.begin() + (off + B) * k);
  const std::vector<float> my_dy(pr.dy.begin() + off * dim, pr.dy.begin() + (off + B) * dim);
  const int64_t os = dim + c.out_pad;
  std::vector<float> y(static_cast<std::size_t>(B * os), kNaN), y_again = y;

  FwdParams f;
  f.values = shard_ptr, f.indices = B ? my_idx.data() : nullptr,
  f.weights = B ? my_w.data() : nullptr;
  f.out = B ? y.data() : nullptr;
  f.batch = B, f.k = k, f.dim = dim, f.num_rows = pr.rows;
  f.values_stride = shard_stride, f.out_stride = os;
  f.values_dtype = c.values, f.index_dtype = c.index;

  const int64_t cap = pr.total * k;
  std::vector<float> dw(static_cast<std::size_t>(B * k), kNaN);
  std::vector<float> dv_dense(static_cast<std::size_t>(pr.rows * width), kNaN);
  std::vector<int64_t> ids(static_cast<std::size_t>(cap), -1);
  std::vector<float> dv_compact(static_cast<std::size_t>(cap * width), kNaN);
  int64_t n_unique = -1;
  BwdParams bp;
  bp.values = shard_ptr, bp.indices = f.indices, bp.weights = f.weights;
  bp.grad_out = B ? my_dy.data() : nullptr;
  bp.batch = B, bp.k = k, bp.dim = dim, bp.num_rows = pr.rows, bp.values_stride = shard_stride;
  bp.values_dtype = c.values, bp.index_dtype = c.index;
  bp.grad_weights = B ? dw.data() : nullptr;
  bp.grad_values_dense = width ? dv_dense.data() : nullptr;
  bp.unique_rows = ids.data(), bp.grad_values_compact = width ? dv_compact.data() : nullptr;
  bp.num_unique = &n_unique;
  // A width-0 shard has no compact rows to write; its trio is still complete for validation.
  std::vector<float> no_columns(1);
  if (!width) bp.grad_values_compact = no_columns.data();
  // Host buffers for the simt backend's kernels, as registered host memory on a GPU.
  test::MappedHost mapped(full_values, shard_values, my_idx, my_w, my_dy, y, y_again, dw, dv_dense,
                          ids, dv_compact, no_columns);
  mapped.add_object(&n_unique);

  std::string fwd_variant, bwd_variant;
  int64_t total_seen = 0;
  try {
    ShardedEmbBag op(g, c.backend);
    op.forward(f);
    fwd_variant = op.fwd_variant();
    total_seen = op.total_batch();
    f.out = B ? y_again.data() : nullptr;
    op.forward(f);  // deterministic: the same bits again
    op.backward(bp);
    bwd_variant = op.bwd_variant();
  } catch (const std::exception& e) {
    g.abort_group(fmt::format("sharded embbag on {}: {}", case_name({c, 0}), e.what()));
  }

  // ---- the unsharded op on the whole problem, and the checks (no collectives from here) ----
  EXPECT_EQ(total_seen, pr.total);
  const auto all_idx = as_indices(pr.idx.data(), pr.total * k, c.index);
  FwdParams uf;
  uf.values = full_values.data(), uf.indices = all_idx.data(), uf.weights = pr.w.data();
  std::vector<float> y_full(static_cast<std::size_t>(pr.total * dim), kNaN);
  uf.out = y_full.data();
  uf.batch = pr.total, uf.k = k, uf.dim = dim, uf.num_rows = pr.rows;
  uf.values_dtype = c.values, uf.index_dtype = c.index;
  mapped.add(all_idx), mapped.add(pr.w), mapped.add(y_full);
  const auto& vf = unsharded_fwd(c.backend, fwd_variant, uf);
  Registry<embbag::Fwd>::run(vf, uf);

  BwdParams ub;
  ub.values = uf.values, ub.indices = uf.indices, ub.weights = uf.weights,
  ub.grad_out = pr.dy.data();
  ub.batch = pr.total, ub.k = k, ub.dim = dim, ub.num_rows = pr.rows;
  ub.values_dtype = c.values, ub.index_dtype = c.index;
  std::vector<float> dw_full(static_cast<std::size_t>(cap), kNaN);
  std::vector<float> dv_full(static_cast<std::size_t>(pr.rows * dim), kNaN);
  std::vector<int64_t> ids_full(static_cast<std::size_t>(cap), -1);
  std::vector<float> dvc_full(static_cast<std::size_t>(cap * dim), kNaN);
  int64_t n_full = -1;
  ub.grad_weights = dw_full.data(), ub.grad_values_dense = dv_full.data();
  ub.unique_rows = ids_full.data(), ub.grad_values_compact = dvc_full.data(),
  ub.num_unique = &n_full;
  mapped.add(pr.dy), mapped.add(dw_full), mapped.add(dv_full), mapped.add(ids_full);
  mapped.add(dvc_full), mapped.add_object(&n_full);
  const auto& vb = unsharded_bwd(c.backend, bwd_variant, ub);
  Registry<embbag::Bwd>::run(vb, ub);

  SCOPED_TRACE(fmt::format(
      "rank {} of {}, columns [{}, {}), {} of {} bags; shard variants "
      "'{}' / '{}', unsharded {} / {}",
      me, P, begin, begin + width, B, pr.total, fwd_variant, bwd_variant, vf.name, vb.name));
  ASSERT_GT(norm(y_full), 0.0);
  ASSERT_GT(norm(dw_full), 0.0);
  ASSERT_GT(norm(dv_full), 0.0);

  Diff y_bits, again_bits;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t d = 0; d < os; ++d) {
      const float got = y[b * os + d];
      if (d >= dim) {  // the padding is not written
        EXPECT_TRUE(std::isnan(got)) << "out padding written at bag " << b << ", column " << d;
        continue;
      }
      y_bits.add(fmt::format("y[{},{}]", b, d), got, y_full[(off + b) * dim + d]);
      again_bits.add(fmt::format("y[{},{}]", b, d), y_again[b * os + d], got);
    }
  EXPECT_EQ(y_bits.failures(c.backend), 0)
      << "forward differs from the unsharded op:" << y_bits.first;
  EXPECT_EQ(again_bits.mismatches, 0) << "forward not bitwise repeatable:" << again_bits.first;

  Diff dense, compact;
  for (int64_t r = 0; r < pr.rows; ++r)
    for (int64_t d = 0; d < width; ++d)
      dense.add(fmt::format("dV[{},{}]", r, begin + d), dv_dense[r * width + d],
                dv_full[r * dim + begin + d]);
  EXPECT_EQ(dense.failures(c.backend), 0) << "dense dV shard differs:" << dense.first;
  ASSERT_EQ(n_unique, n_full) << "compact dV: a different number of touched rows";
  ASSERT_GT(n_full, 1);
  for (int64_t i = 0; i < n_full; ++i) {
    EXPECT_EQ(ids[i], ids_full[i]) << "compact row " << i;
    for (int64_t d = 0; d < width; ++d)
      compact.add(fmt::format("compact[{},{}]", i, begin + d), dv_compact[i * width + d],
                  dvc_full[i * dim + begin + d]);
  }
  EXPECT_EQ(compact.failures(c.backend), 0) << "compact dV shard differs:" << compact.first;

  double err = 0, ref = 0;
  int64_t nan = 0;
  for (int64_t i = 0; i < B * k; ++i) {
    const double want = dw_full[off * k + i];
    nan += std::isnan(dw[i]);
    err += (dw[i] - want) * (dw[i] - want);
    ref += want * want;
  }
  EXPECT_EQ(nan, 0) << "dw elements not written";
  if (B > 0) {
    EXPECT_GT(ref, 0.0) << "dw of this rank's bags is all zero: the check would be empty";
    EXPECT_LE(std::sqrt(err / ref), 1e-5) << "dw relative norm error";
  }
}

// The cpu backend takes every shape; simt six of them, one of each dtype pair and the widest at
// k 32; reference one (it is the truth elsewhere, here only a backend like the others). dim 1 and
// 3 leave ranks without columns at P = 2 and 4.
const Case kCases[] = {
    {Backend::cpu, DType::f32, DType::i64, 1, 1},
    {Backend::cpu, DType::f32, DType::i32, 3, 7},
    {Backend::cpu, DType::bf16, DType::i64, 3, 32, false, 0, true},
    {Backend::cpu, DType::f32, DType::i64, 100, 7, true},
    {Backend::cpu, DType::bf16, DType::i32, 100, 32},
    {Backend::cpu, DType::f32, DType::i32, 1000, 32, false, 5},
    {Backend::cpu, DType::bf16, DType::i64, 1000, 7, true, 3},
    {Backend::cpu, DType::f32, DType::i64, 37, 32, false, 0, true},
    {Backend::simt, DType::f32, DType::i64, 3, 7},
    {Backend::simt, DType::bf16, DType::i32, 100, 7, true, 2},
    {Backend::simt, DType::f32, DType::i32, 37, 1, false, 0, true},
    {Backend::simt, DType::f32, DType::i64, 1, 1},
    {Backend::simt, DType::f32, DType::i32, 1000, 32, false, 5},
    {Backend::simt, DType::bf16, DType::i64, 37, 32, false, 0, true},
    {Backend::reference, DType::f32, DType::i64, 100, 7},
};
INSTANTIATE_TEST_SUITE_P(EmbBag, Sharded, ::testing::ValuesIn(kCases), case_name);

// ---- refusals: the same error on every rank, before any data moves ----

// Runs a forward whose params `tweak` may change on some ranks; returns the error or "".
std::string forward_error(const std::function<void(FwdParams&, int)>& tweak) {
  Comm& g = group();
  const int64_t k = 4, dim = 8, rows = 10, B = 2;
  std::vector<float> values(static_cast<std::size_t>(rows * dim), 0.5f), w(B * k, 1.0f),
      out(B * dim);
  std::vector<int64_t> idx(B * k, 3);
  const ColumnSplit cs{dim, g.size()};
  FwdParams f;
  f.values = values.data() + cs.begin(g.rank()), f.values_stride = dim;
  f.indices = idx.data(), f.weights = w.data(), f.out = out.data();
  f.batch = B, f.k = k, f.dim = dim, f.num_rows = rows;
  tweak(f, g.rank());
  try {
    ShardedEmbBag op(g, Backend::cpu);
    op.forward(f);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(ShardedRefuses, ShapeThatDiffersAcrossRanks) {
  if (group().size() == 1) GTEST_SKIP() << "one rank: nothing can differ";
  const std::string e = forward_error([](FwdParams& f, int r) {
    if (r == 1) f.num_rows = 9;
  });
  EXPECT_NE(e.find("the shape of the sharded embbag_fwd differs across ranks: rank 0 has 'dim 8 "
                   "k 4 num_rows 10 values fp32 indices int64', rank 1 has 'dim 8 k 4 num_rows 9"),
            std::string::npos)
      << e;
}

TEST(ShardedRefuses, ProblemRefusedOnOneRankStopsEveryRank) {
  const int last = group().size() - 1;
  const std::string e = forward_error([last](FwdParams& f, int r) {
    if (r == last) f.weights = nullptr;
  });
  EXPECT_NE(e.find(fmt::format("sharded embbag_fwd: rank {} of {}: this rank's bags: weights is "
                               "null",
                               last, last + 1)),
            std::string::npos)
      << e;
}

TEST(ShardedRefuses, Bf16OutputAndEmptyGroup) {
  std::string e = forward_error([](FwdParams& f, int) { f.out_dtype = DType::bf16; });
  EXPECT_NE(e.find("out_dtype = bf16: accepted fp32"), std::string::npos) << e;
  e = forward_error([](FwdParams& f, int) { f.batch = 0; });
  EXPECT_NE(e.find("the group has no bags (every rank's batch is 0)"), std::string::npos) << e;
  e = forward_error([](FwdParams& f, int) { f.batch = -1; });
  EXPECT_NE(e.find("batch = -1: accepted batch >= 0"), std::string::npos) << e;
}

TEST(ShardedRefuses, CommunicatorThatDoesNotServeTheBackend) {
  try {
    ShardedEmbBag op(group(), Backend::cuda);
    FAIL() << "a host communicator was accepted for the cuda backend";
  } catch (const Error& e) {
    // Without a GPU the backend is refused first; with one, the communicator.
    const std::string m = e.what();
    EXPECT_TRUE(m.find("backend cuda cannot run here") != std::string::npos ||
                m.find("accepted nccl with cuda") != std::string::npos)
        << m;
  }
}

TEST(ColumnSplitTest, FirstRanksTakeTheRemainder) {
  const ColumnSplit s{10, 4};
  EXPECT_EQ(s.width(0), 3);
  EXPECT_EQ(s.width(1), 3);
  EXPECT_EQ(s.width(2), 2);
  EXPECT_EQ(s.begin(3), 8);
  EXPECT_EQ(s.end(3), 10);
  const ColumnSplit narrow{3, 4};
  EXPECT_EQ(narrow.width(3), 0);
  EXPECT_EQ(narrow.begin(3), 3);
}

TEST(CommBytes, Declared) {
  const CommBytes one = comm_bytes_per_token(1024, 32, DType::i64, 1);
  EXPECT_EQ(one.fwd() + one.bwd(), 0.0);
  const CommBytes c = comm_bytes_per_token(1024, 32, DType::i32, 4);
  EXPECT_EQ(c.fwd_all_gather, 32 * 8 * 3);
  EXPECT_EQ(c.fwd_all_to_all, 1024 * 4 * 3 / 4.0);
  EXPECT_EQ(c.bwd_reduce_scatter, 32 * 4 * 3);
  EXPECT_EQ(c.bwd(), c.fwd() + c.bwd_reduce_scatter);
}

}  // namespace
}  // namespace memlayers::dist

MEMLAYERS_DIST_TEST_MAIN()
