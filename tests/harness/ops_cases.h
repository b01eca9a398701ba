// Each harness::Ops entry's exercise, written once for the two tests that run it on two backends
// and compare: ops_test.cpp (cpu against the reference) and ops_simt_test.cpp (simt, and cuda where
// a GPU is usable, against cpu). A case draws its inputs from the Rng it is given, uploads them,
// declares its outputs on a BackendRun (poisoned, or starting from non-zero values where the entry
// accumulates) and calls the entry's forward and backward; the test's driver runs it on each
// backend from the same seed and compares every output it declared (DESIGN.md §4). The errors bad
// params get are checked here once too, for every backend whose memory is the host's.
// A header, not a *_test.cpp: every tests/harness/*_test.cpp is an executable of its own.
#pragma once
#include <gtest/gtest.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include "common/error.h"
#include "harness/ops.h"
#include "tests/common/buffer.h"
#include "tests/common/check.h"
#include "tests/common/mapped.h"
#include "tests/common/random.h"
#include "tests/harness/expect_error.h"

namespace memlayers::harness::ops_cases {

// ---- inputs and comparison ----

inline std::vector<float> random_floats(test::Rng& rng, int64_t n, float scale = 1.0f) {
  std::vector<float> v(static_cast<std::size_t>(n));
  for (float& x : v) x = scale * rng.signed_unit();
  return v;
}

inline std::vector<int32_t> random_ids(test::Rng& rng, int64_t n, int64_t range) {
  std::vector<int32_t> v(static_cast<std::size_t>(n));
  for (int32_t& x : v) x = static_cast<int32_t>(rng.index(range));
  return v;
}

// "Suite.Name" of the running test: the seed of its Rng, so a case reproduces alone.
inline std::string current_test() {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  return std::string(info->test_suite_name()) + "." + info->name();
}

// `got` against `want` at the fp32 policy; `want` must be non-trivial (`want_is` names its
// backend in the message when it is all zeros).
inline void expect_close(const std::string& what, const std::vector<float>& got,
                         const std::vector<float>& want, const std::string& want_is) {
  ASSERT_EQ(got.size(), want.size()) << what;
  const auto w = test::to_doubles(want.data(), DType::f32, want.size());
  const auto g = test::to_doubles(got.data(), DType::f32, got.size());
  ASSERT_GT(test::norm(w), 0) << what << ": the " << want_is << " output is all zeros";
  const test::CheckResult c = test::compare(what, g, w, test::tolerance_for(DType::f32, w));
  EXPECT_TRUE(c.ok) << c.message;
}

// ---- one run on a backend ----

using Outputs = std::vector<std::pair<std::string, std::vector<float>>>;

// The buffers of one run in a backend's memory: inputs uploaded, outputs poisoned (or set to
// given values where the entry accumulates), every output read back by results().
class BackendRun {
 public:
  explicit BackendRun(const Ops& ops) : ops_(ops) {}
  const Ops& ops() const { return ops_; }

  template <class T>
  T* input(const std::vector<T>& host) {
    held_.push_back(std::make_unique<test::DeviceBuffer>(*ops_.memory, host));
    return held_.back()->as<T>();
  }
  float* output(const std::string& name, int64_t n) {
    held_.push_back(std::make_unique<test::DeviceBuffer>(*ops_.memory, n * sizeof(float)));
    held_.back()->poison();
    outputs_.emplace_back(name, held_.back().get());
    return held_.back()->as<float>();
  }
  // An output the entry adds to: starts from `initial`.
  float* accumulated(const std::string& name, const std::vector<float>& initial) {
    float* p = input(initial);
    outputs_.emplace_back(name, held_.back().get());
    return p;
  }
  Outputs results() const {
    Outputs out;
    for (const auto& [name, buf] : outputs_) out.emplace_back(name, buf->to_host<float>());
    return out;
  }

 private:
  const Ops& ops_;
  std::vector<std::unique_ptr<test::DeviceBuffer>> held_;
  std::vector<std::pair<std::string, test::DeviceBuffer*>> outputs_;
};

// What a driver runs on each backend: draw inputs from the Rng, run the entries on the BackendRun.
using Case = std::function<void(BackendRun&, test::Rng&)>;

// ---- shapes ----

// rows = batch·seq tokens of width d in `heads` heads; hidden is the MLP's width (linear's out,
// SwiGLU's), vocab the embedding's rows and the cross-entropy's classes.
struct OpsShape {
  int64_t batch, seq, heads, d, hidden, vocab;
};

inline std::string shape_name(const OpsShape& s) {
  return fmt::format("b{}_t{}_h{}_d{}_f{}_v{}", s.batch, s.seq, s.heads, s.d, s.hidden, s.vocab);
}

inline void PrintTo(const OpsShape& s, std::ostream* os) { *os << shape_name(s); }

// ---- the cases ----

// Forward into a poisoned output or onto `base` (accumulate); the backward scatters into a non-zero
// dtable, random ids repeating within the batch.
inline Case embedding(const OpsShape& s, bool accumulate) {
  return [=](BackendRun& run, test::Rng& rng) {
    const int64_t rows = s.batch * s.seq;
    const int32_t* ids = run.input(random_ids(rng, rows, s.vocab));
    const float* table = run.input(random_floats(rng, s.vocab * s.d));
    const std::vector<float> base = random_floats(rng, rows * s.d);
    float* out = accumulate ? run.accumulated("out", base) : run.output("out", rows * s.d);
    run.ops().embedding_fwd({ids, table, out, rows, s.vocab, s.d, accumulate});
    float* dtable = run.accumulated("dtable", random_floats(rng, s.vocab * s.d));
    run.ops().embedding_bwd(
        {ids, run.input(random_floats(rng, rows * s.d)), dtable, rows, s.vocab, s.d});
  };
}

// dx written or added to (accumulate); dscale always added to.
inline Case rmsnorm(const OpsShape& s, bool accumulate) {
  return [=](BackendRun& run, test::Rng& rng) {
    const int64_t rows = s.batch * s.seq;
    const float* x = run.input(random_floats(rng, rows * s.d));
    const float* scale = run.input(random_floats(rng, s.d));
    float* y = run.output("y", rows * s.d);
    float* inv = run.output("inv_rms", rows);
    run.ops().rmsnorm_fwd({x, scale, y, inv, rows, s.d});
    const float* dy = run.input(random_floats(rng, rows * s.d));
    const std::vector<float> dx0 = random_floats(rng, rows * s.d);
    float* dx = accumulate ? run.accumulated("dx", dx0) : run.output("dx", rows * s.d);
    float* dscale = run.accumulated("dscale", random_floats(rng, s.d));
    run.ops().rmsnorm_bwd({x, scale, inv, dy, dx, dscale, rows, s.d, accumulate});
  };
}

// d → hidden, w stored (in, out) or transposed; dw and db always added to, dx as `accumulate`.
inline Case linear(const OpsShape& s, bool transposed, bool bias, bool accumulate) {
  return [=](BackendRun& run, test::Rng& rng) {
    const int64_t rows = s.batch * s.seq, in = s.d, out = s.hidden;
    const float* x = run.input(random_floats(rng, rows * in));
    const float* w = run.input(random_floats(rng, in * out));
    const float* b = bias ? run.input(random_floats(rng, out)) : nullptr;
    float* y = run.output("y", rows * out);
    run.ops().linear_fwd({x, w, b, y, rows, in, out, transposed});
    const float* dy = run.input(random_floats(rng, rows * out));
    const std::vector<float> dx0 = random_floats(rng, rows * in);
    float* dx = accumulate ? run.accumulated("dx", dx0) : run.output("dx", rows * in);
    float* dw = run.accumulated("dw", random_floats(rng, in * out));
    float* db = bias ? run.accumulated("db", random_floats(rng, out)) : nullptr;
    run.ops().linear_bwd({x, w, dy, dx, dw, db, rows, in, out, transposed, accumulate});
  };
}

// q, k, v and their gradients packed in one (rows, 3d) buffer, or three (rows, d) buffers.
inline Case attention(const OpsShape& s, bool packed) {
  return [=](BackendRun& run, test::Rng& rng) {
    const int64_t rows = s.batch * s.seq;
    const int64_t ld = packed ? 3 * s.d : s.d;
    PackedQkv in{}, g{};
    if (packed) {
      in = packed_qkv(run.input(random_floats(rng, rows * 3 * s.d)), s.d);
      g = packed_qkv(run.output("dqkv", rows * 3 * s.d), s.d);
    } else {
      in = {run.input(random_floats(rng, rows * s.d)), run.input(random_floats(rng, rows * s.d)),
            run.input(random_floats(rng, rows * s.d)), s.d};
      g = {run.output("dq", rows * s.d), run.output("dk", rows * s.d), run.output("dv", rows * s.d),
           s.d};
    }
    float* out = run.output("out", rows * s.d);
    float* lse = run.output("lse", s.batch * s.heads * s.seq);
    run.ops().attention_fwd({in.q, in.k, in.v, ld, out, lse, s.batch, s.seq, s.heads, s.d});
    const float* dout = run.input(random_floats(rng, rows * s.d));
    run.ops().attention_bwd(
        {in.q, in.k, in.v, ld, out, lse, dout, g.q, g.k, g.v, s.batch, s.seq, s.heads, s.d});
  };
}

// a (scaled to ±3, so σ saturates on both sides) and b packed as [a | b] rows of 2·hidden, their
// gradients likewise; or a, b, da, db as four (rows, hidden) buffers.
inline Case swiglu(const OpsShape& s, bool packed) {
  return [=](BackendRun& run, test::Rng& rng) {
    const int64_t rows = s.batch * s.seq, H = s.hidden;
    const int64_t ld = packed ? 2 * H : H;
    float *a, *b, *da, *db;
    if (packed) {
      a = run.input(random_floats(rng, rows * 2 * H, 3.0f)), b = a + H;
      da = run.output("dab", rows * 2 * H), db = da + H;
    } else {
      a = run.input(random_floats(rng, rows * H, 3.0f));
      b = run.input(random_floats(rng, rows * H));
      da = run.output("da", rows * H), db = run.output("db", rows * H);
    }
    float* out = run.output("out", rows * H);
    run.ops().swiglu_fwd({a, b, ld, out, rows, H});
    run.ops().swiglu_bwd({a, b, ld, run.input(random_floats(rng, rows * H)), da, db, rows, H});
  };
}

// x += y in place over batch·seq·d elements; with `out_of_place`, then out = z + x as well.
inline Case add(const OpsShape& s, bool out_of_place) {
  return [=](BackendRun& run, test::Rng& rng) {
    const int64_t n = s.batch * s.seq * s.d;
    float* x = run.accumulated("x", random_floats(rng, n));
    run.ops().add({x, run.input(random_floats(rng, n)), x, n});
    if (!out_of_place) return;
    float* out = run.output("out", n);
    run.ops().add({run.input(random_floats(rng, n)), x, out, n});
  };
}

// Logits scaled to ±4; `weighted`: per-row weights with every third row (from row 1) a padding
// row of weight 0, and with `padding_target` row 1's target out of range (a padding row may hold
// any target).
inline Case cross_entropy(const OpsShape& s, bool weighted, bool padding_target) {
  return [=](BackendRun& run, test::Rng& rng) {
    const int64_t rows = s.batch * s.seq;
    const float* logits = run.input(random_floats(rng, rows * s.vocab, 4.0f));
    std::vector<int32_t> t = random_ids(rng, rows, s.vocab);
    std::vector<float> w(static_cast<std::size_t>(rows));
    for (std::size_t r = 0; r < w.size(); ++r) w[r] = r % 3 == 1 ? 0.0f : 0.5f + float(r % 4);
    if (weighted && padding_target && rows > 1) t[1] = -7;
    const int32_t* targets = run.input(t);
    const float* weights = weighted ? run.input(w) : nullptr;
    float* loss = run.output("loss", 1);
    run.ops().cross_entropy_fwd({logits, targets, weights, loss, rows, s.vocab});
    float* dlogits = run.output("dlogits", rows * s.vocab);
    run.ops().cross_entropy_bwd({logits, targets, weights, 0.5f, dlogits, rows, s.vocab});
  };
}

// ---- the variants both drivers run ----
// (SwiGLU's layouts, the out-of-place add and the padding target are chosen by each test.)

// A driver: runs a case on its backends and compares them.
using Driver = std::function<void(const Case&)>;

inline void embedding_variants(const OpsShape& s, const Driver& expect) {
  for (bool accumulate : {false, true}) {
    SCOPED_TRACE(fmt::format("accumulate {}", accumulate));
    expect(embedding(s, accumulate));
  }
}

inline void rmsnorm_variants(const OpsShape& s, const Driver& expect) {
  for (bool accumulate : {false, true}) {
    SCOPED_TRACE(fmt::format("accumulate_dx {}", accumulate));
    expect(rmsnorm(s, accumulate));
  }
}

inline void linear_variants(const OpsShape& s, const Driver& expect) {
  for (bool transposed : {false, true})
    for (bool bias : {false, true})
      for (bool accumulate : {false, true}) {
        SCOPED_TRACE(
            fmt::format("transposed_w {} bias {} accumulate_dx {}", transposed, bias, accumulate));
        expect(linear(s, transposed, bias, accumulate));
      }
}

inline void attention_variants(const OpsShape& s, const Driver& expect) {
  for (bool packed : {true, false}) {
    SCOPED_TRACE(packed ? "packed qkv" : "separate q, k, v");
    expect(attention(s, packed));
  }
}

// ---- errors ----

// Bad params to each entry of `ops` (host pointers: a backend whose memory is the host's) are
// refused with a message saying what is wrong, before anything is written.
inline void expect_bad_params_refused(const Ops& ops) {
  std::vector<float> buf(64, 1.0f), out(64);
  std::vector<int32_t> ids = {0, 4, 5, 1};
  test::MappedHost mapped(buf, out, ids);  // the calls that are not refused run simt's kernels
  float* f = buf.data();
  test::expect_error(
      [&] {
        ops.attention_fwd({f, f, f, 12, out.data(), nullptr, 1, 2, 5, 12});
      },
      "d 12 is not divisible by heads 5");
  test::expect_error(
      [&] {
        ops.attention_fwd({f, f, f, 8, out.data(), nullptr, 1, 2, 3, 12});
      },
      "ld_qkv 8 is narrower than d 12");
  test::expect_error(
      [&] {
        ops.attention_bwd({f, f, f, 12, f, nullptr, f, f, f, f, 1, 2, 3, 12});
      },
      "attention_bwd: lse is null");
  test::expect_error(
      [&] {
        ops.rmsnorm_fwd({f, f, out.data(), nullptr, 0, 4});
      },
      "rmsnorm_fwd: rows is 0: accepted are rows ≥ 1");
  test::expect_error(
      [&] {
        ops.embedding_fwd({ids.data(), f, out.data(), 4, 5, 2});
      },
      "id 5 out of range [0, 5) at row 2");
  test::expect_error(
      [&] {
        ops.embedding_bwd({ids.data(), f, out.data(), 4, 5, 2});
      },
      "id 5 out of range [0, 5) at row 2");
  test::expect_error(
      [&] {
        ops.linear_fwd({f, nullptr, nullptr, out.data(), 2, 3, 4});
      },
      "linear_fwd: w is null");
  test::expect_error(
      [&] {
        ops.linear_bwd({f, f, f, nullptr, nullptr, nullptr, 2, 3, 4});
      },
      "dx, dw and db are all null");
  test::expect_error(
      [&] {
        ops.swiglu_fwd({f, f, 3, out.data(), 2, 4});
      },
      "ld_ab 3 is narrower than hidden 4");
  test::expect_error([&] { ops.add({f, f, out.data(), -1}); }, "add: n is -1");
  float loss = 0;
  test::expect_error(
      [&] {
        ops.cross_entropy_fwd({f, ids.data(), nullptr, &loss, 4, 5});
      },
      "target 5 out of range [0, 5) at row 2");
  mapped.add_object(&loss);
  std::vector<float> zeros(4, 0.0f), negative = {1.0f, -0.5f, 1.0f, 1.0f};
  test::expect_error(
      [&] {
        ops.cross_entropy_fwd({f, ids.data(), zeros.data(), &loss, 4, 6});
      },
      "the weights of all 4 rows are 0");
  test::expect_error(
      [&] {
        ops.cross_entropy_bwd({f, ids.data(), negative.data(), 1.0f, out.data(), 4, 6});
      },
      "weight -0.5 at row 1: accepted are finite weights ≥ 0");
  // Nothing was written by the refused calls: out still holds what it held.
  EXPECT_EQ(out, std::vector<float>(64, 0.0f));
  // A padding row (weight 0) may hold any target.
  std::vector<float> pad = {1.0f, 1.0f, 0.0f, 1.0f};
  mapped.add(pad);
  EXPECT_NO_THROW(ops.cross_entropy_fwd({f, ids.data(), pad.data(), &loss, 4, 5}));
}

}  // namespace memlayers::harness::ops_cases
