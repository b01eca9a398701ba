// The memory layer with its value table sharded along the columns (dist/sharded_memory_layer.h),
// on the group the test runs in (1 rank alone, 2 or 4 under mpirun), against the registered
// composition run by each rank itself on the whole table: every rank builds the same full problem
// from one seed (rank r owns 3 + 2r tokens), runs the sharded layer on its tokens and its columns,
// and compares
//   - its output with the unsharded layer on its own tokens: bitwise (cpu: within 1e-6, see
//     the test);
//   - its shard's table gradient (compact and dense) with the unsharded layer's on the group's
//     tokens, restricted to its columns: the same rows, values within 1e-6 (bitwise with one
//     rank; see the test for why not with more);
//   - dx and the dense parameter gradients (its tokens' share) with the unsharded layer on its
//     own tokens: within fp32 tolerance (dw, which they depend on, is summed over shards).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/registry.h"
#include "dist/sharded_memory_layer.h"
#include "group.h"
#include "memory_layer/memory_layer.h"
#include "memory_layer/parts.h"
#include "tests/common/mapped.h"
#include "tests/common/random.h"

namespace memlayers::dist {
namespace {

using memory_layer::Config;
using memory_layer::Kind;
using testing::group;

std::vector<float> randoms(test::Rng& rng, int64_t n, float scale) {
  std::vector<float> v(static_cast<std::size_t>(n));
  for (float& x : v) x = scale * rng.signed_unit();
  return v;
}

// A full problem, host memory (the backends here are host ones).
struct Problem {
  Config c;
  std::vector<float> wq, bq, keys1, keys2, w1, b1, w2, b2, x, dout;
  std::vector<unsigned char> values;  // (N, v) in c.values_dtype
  std::vector<int64_t> first;         // rank r's tokens are [first[r], first[r + 1])
};

Problem make_problem(Kind kind, DType vt, int P) {
  Problem p;
  Config& c = p.c;
  c.kind = kind, c.d_model = 12, c.heads = 2, c.n_keys = 6, c.k_dim = 8, c.k = 3;
  c.value_dim = kind == Kind::memory ? c.d_model : 10, c.values_dtype = vt;
  test::Rng rng(fmt::format("sharded_memory_layer_{}_{}", to_string(kind), to_string(vt)));
  const int64_t d = c.d_model, hn = c.heads * c.k_dim, v = c.value_dim;
  p.first = {0};
  for (int r = 0; r < P; ++r) p.first.push_back(p.first.back() + 3 + 2 * r);
  const int64_t B = p.first.back();
  p.wq = randoms(rng, d * hn, 0.3f), p.bq = randoms(rng, hn, 0.1f);
  p.keys1 = randoms(rng, c.heads * c.n_keys * c.k_dim / 2, 0.5f);
  p.keys2 = randoms(rng, c.heads * c.n_keys * c.k_dim / 2, 0.5f);
  p.values = test::random_values(rng, vt, static_cast<std::size_t>(c.num_values() * v));
  if (kind == Kind::memory_plus) {
    p.w1 = randoms(rng, d * v, 0.3f), p.b1 = randoms(rng, v, 0.1f);
    p.w2 = randoms(rng, v * d, 0.3f), p.b2 = randoms(rng, d, 0.1f);
  }
  p.x = randoms(rng, B * d, 1.0f), p.dout = randoms(rng, B * d, 1.0f);
  return p;
}

// Columns [first, first + width) of the (rows, full) table of `size`-byte elements.
std::vector<unsigned char> columns(const std::vector<unsigned char>& t, int64_t rows, int64_t full,
                                   int64_t first, int64_t width, std::size_t size) {
  std::vector<unsigned char> out;
  for (int64_t r = 0; r < rows; ++r) {
    const auto* row = t.data() + (r * full + first) * static_cast<int64_t>(size);
    out.insert(out.end(), row, row + width * static_cast<int64_t>(size));
  }
  return out;
}

struct Result {
  std::vector<float> out, x, wq, bq, keys1, w1, w2, dense, compact;
  std::vector<int64_t> rows;
};

// The layer on tokens [t0, t1) of the problem, over `table` (width columns): unsharded (bag
// null: the registered composition picked as memory_layer/parts.h does) or sharded.
Result run(Backend b, const Problem& pr, int64_t t0, int64_t t1, const void* table, int64_t width,
           ShardedMemoryLayer* sharded, int64_t group_tokens) {
  const Config& c = pr.c;
  const int64_t B = t1 - t0, d = c.d_model, hn = c.heads * c.k_dim, hk = c.heads * c.k,
                v = c.value_dim;
  Result r;
  std::vector<float> q(B * hn), scores(B * hk), w(B * hk), y(B * v), hid(B * v);
  std::vector<int64_t> idx(B * hk);
  memory_layer::Weights W;
  W.wq = pr.wq.data(), W.bq = pr.bq.data(), W.keys1 = pr.keys1.data(), W.keys2 = pr.keys2.data(),
  W.values = table;
  if (c.kind == Kind::memory_plus)
    W.w1 = pr.w1.data(), W.b1 = pr.b1.data(), W.w2 = pr.w2.data(), W.b2 = pr.b2.data();
  memory_layer::Saved s;
  s.q = q.data(), s.scores = scores.data(), s.indices = idx.data(), s.weights = w.data();
  if (c.kind == Kind::memory_plus) s.y = y.data(), s.hidden = hid.data();
  r.out.assign(B * d, NAN);
  memory_layer::FwdParams f;
  f.config = c, f.weights = W, f.x = pr.x.data() + t0 * d, f.out = r.out.data(), f.batch = B;
  f.saved = s;
  const int64_t cap = group_tokens * hk;
  r.x.assign(B * d, NAN), r.wq.assign(d * hn, NAN), r.bq.assign(hn, NAN);
  r.keys1.assign(c.heads * c.n_keys * c.k_dim / 2, NAN);
  std::vector<float> keys2(r.keys1.size());
  r.dense.assign(c.num_values() * width, NAN), r.compact.assign(cap * width, NAN);
  r.rows.assign(cap, -1);
  int64_t count = -1;
  memory_layer::BwdParams g;
  g.config = c, g.weights = W, g.x = f.x, g.grad_out = pr.dout.data() + t0 * d, g.batch = B;
  g.saved = s;
  g.grads.x = r.x.data(), g.grads.wq = r.wq.data(), g.grads.bq = r.bq.data();
  g.grads.keys1 = r.keys1.data(), g.grads.keys2 = keys2.data();
  g.grads.values_dense = r.dense.data();
  g.grads.value_rows = r.rows.data(), g.grads.values_compact = r.compact.data();
  g.grads.num_value_rows = &count;
  std::vector<float> b1(v), b2(d);
  if (c.kind == Kind::memory_plus) {
    r.w1.assign(d * v, NAN), r.w2.assign(v * d, NAN);
    g.grads.w1 = r.w1.data(), g.grads.b1 = b1.data(), g.grads.w2 = r.w2.data();
    g.grads.b2 = b2.data();
  }
  // Host buffers for the simt backend's kernels, as registered host memory on a GPU.
  test::MappedHost mapped(pr.wq, pr.bq, pr.keys1, pr.keys2, pr.w1, pr.b1, pr.w2, pr.b2, pr.x,
                          pr.dout, q, scores, w, y, hid, idx, r.out, r.x, r.wq, r.bq, r.keys1,
                          keys2, r.dense, r.compact, r.rows, b1, b2, r.w1, r.w2);
  mapped.add(table, static_cast<std::size_t>(c.num_values() * width) * dtype_size(c.values_dtype));
  mapped.add_object(&count);
  if (sharded) {
    sharded->forward(f);
    sharded->backward(g);
  } else {
    std::string why;
    Registry<memory_layer::Fwd>::run(
        *memory_layer::parts::find_part<memory_layer::Fwd>(b, f, nullptr, why), f);
    Registry<memory_layer::Bwd>::run(
        *memory_layer::parts::find_part<memory_layer::Bwd>(b, g, nullptr, why), g);
  }
  r.rows.resize(static_cast<std::size_t>(std::max<int64_t>(count, 0)));
  r.compact.resize(r.rows.size() * static_cast<std::size_t>(width));
  return r;
}

double rel_diff(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return INFINITY;
  double num = 0, den = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (std::isnan(a[i]) || std::isnan(b[i])) return INFINITY;
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(b[i]) * b[i];
  }
  return den > 0 ? std::sqrt(num / den) : INFINITY;  // a zero reference is no test
}

std::vector<float> floats(const std::vector<unsigned char>& b) {
  std::vector<float> f(b.size() / sizeof(float));
  std::memcpy(f.data(), b.data(), f.size() * sizeof(float));
  return f;
}

bool same_bytes(const std::vector<float>& a, const std::vector<float>& b) {
  // memcmp takes no null pointer, which an empty vector's data() may be.
  return a.size() == b.size() &&
         (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

struct Case {
  Backend backend;
  Kind kind;
  DType values;
};

class ShardedMemoryLayerTest : public ::testing::TestWithParam<Case> {};

TEST_P(ShardedMemoryLayerTest, EqualsTheUnshardedLayer) {
  const Case k = GetParam();
  const int P = group().size(), me = group().rank();
  // simt runs a CUDA block on a pool of CPU threads: four such ranks on two cores take long
  // enough that one and two ranks cover it.
  if (k.backend == Backend::simt && P > 2) GTEST_SKIP() << "simt at 1 and 2 ranks only";
  const Problem pr = make_problem(k.kind, k.values, P);
  const Config& c = pr.c;
  const int64_t t0 = pr.first[me], t1 = pr.first[me + 1], total = pr.first.back();
  const std::size_t sv = dtype_size(c.values_dtype);

  ShardedMemoryLayer layer(group(), k.backend, c);
  const std::vector<unsigned char> shard =
      columns(pr.values, c.num_values(), c.value_dim, layer.column(), layer.width(), sv);
  const Result got = run(k.backend, pr, t0, t1, shard.data(), layer.width(), &layer, total);
  // The same layer unsharded: on this rank's tokens, and on the group's for the table gradient.
  const Result mine = run(k.backend, pr, t0, t1, pr.values.data(), c.value_dim, nullptr, t1 - t0);
  const Result all = run(k.backend, pr, 0, total, pr.values.data(), c.value_dim, nullptr, total);

  // Bitwise on simt; on cpu within 1e-6 (tests/dist/sharded_embbag_test.cpp says why: a SIMD
  // tail rounds a row's last columns without FMA, and a shard moves columns into the tail).
  if (k.backend == Backend::cpu) {
    EXPECT_LT(rel_diff(got.out, mine.out), 1e-6) << "the output differs";
  } else {
    EXPECT_TRUE(same_bytes(got.out, mine.out))
        << "the output differs (relative " << rel_diff(got.out, mine.out) << ")";
  }
  if (P == 1) {
    EXPECT_TRUE(same_bytes(got.out, mine.out));
  }
  // The table gradient against the group's tokens run unsharded: the same rows, and values
  // within rounding (each rank projects its own tokens, and OpenBLAS's GEMM rounds a row
  // differently in a GEMM of another height, so the weights of the bags may differ in the last
  // bit).
  std::vector<unsigned char> dense_bytes(all.dense.size() * sizeof(float));
  std::memcpy(dense_bytes.data(), all.dense.data(), dense_bytes.size());
  const std::vector<float> want_dense = floats(columns(
      dense_bytes, c.num_values(), c.value_dim, layer.column(), layer.width(), sizeof(float)));
  EXPECT_LT(rel_diff(got.dense, want_dense), 1e-6) << "the shard's dense table gradient";
  EXPECT_EQ(got.rows, all.rows) << "the compact gradient's rows differ";
  std::vector<unsigned char> compact_bytes(all.compact.size() * sizeof(float));
  std::memcpy(compact_bytes.data(), all.compact.data(), compact_bytes.size());
  const std::vector<float> want_compact =
      floats(columns(compact_bytes, static_cast<int64_t>(all.rows.size()), c.value_dim,
                     layer.column(), layer.width(), sizeof(float)));
  EXPECT_LT(rel_diff(got.compact, want_compact), 1e-6) << "the shard's compact table gradient";
  if (P == 1) {  // one rank projects the same tokens as the unsharded run: the same bits
    EXPECT_TRUE(same_bytes(got.dense, want_dense));
    EXPECT_TRUE(same_bytes(got.compact, want_compact));
  }
  for (auto [name, a, b] :
       {std::tuple{"dx", &got.x, &mine.x}, std::tuple{"dwq", &got.wq, &mine.wq},
        std::tuple{"dbq", &got.bq, &mine.bq}, std::tuple{"dkeys1", &got.keys1, &mine.keys1},
        std::tuple{"dw1", &got.w1, &mine.w1}, std::tuple{"dw2", &got.w2, &mine.w2}})
    if (!b->empty()) {
      EXPECT_LT(rel_diff(*a, *b), 1e-5) << name;
    }
}

std::vector<Case> cases() {
  std::vector<Case> out;
  for (Kind kind : {Kind::memory, Kind::memory_plus})
    for (DType vt : {DType::f32, DType::bf16}) out.push_back({Backend::cpu, kind, vt});
  out.push_back({Backend::simt, Kind::memory_plus, DType::bf16});
  return out;
}

INSTANTIATE_TEST_SUITE_P(Cases, ShardedMemoryLayerTest, ::testing::ValuesIn(cases()),
                         [](const auto& i) {
                           return fmt::format("{}_{}_{}", to_string(i.param.backend),
                                              to_string(i.param.kind), to_string(i.param.values));
                         });

TEST(ShardedMemoryLayerErrors, PeerAndTooFewColumns) {
  Config c;
  c.kind = Kind::peer, c.d_model = 8, c.heads = 1, c.n_keys = 4, c.k_dim = 4, c.k = 2;
  c.value_dim = 8;
  try {
    ShardedMemoryLayer l(group(), Backend::cpu, c);
    ADD_FAILURE() << "peer accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("kind peer reads two tables"), std::string::npos);
  }
  c.kind = Kind::memory_plus, c.value_dim = 1;
  if (group().size() > 1) {
    try {
      ShardedMemoryLayer l(group(), Backend::cpu, c);
      ADD_FAILURE() << "a 1-column table accepted over several ranks";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("at most as many ranks as columns"), std::string::npos);
    }
  }
}

}  // namespace
}  // namespace memlayers::dist

MEMLAYERS_DIST_TEST_MAIN()
