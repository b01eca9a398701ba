// Runs `memlayers embbag` on small .npy files and checks what it writes against the CPU reference
// computed in this process (and, where python3 has numpy, against numpy): forward and backward,
// fp32 and bf16 storage, int32 and int64 indices, backends reference, cpu and simt; then the
// errors a user meets — a bad index, mismatched shapes, missing flags, an unknown variant, a
// float64 file, a backend this machine cannot run.
// Build and run:
//   cmake --build build --target cli_test && build/tests/cli/cli_test --gtest_filter='EmbbagCli*'
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "cli_helpers.h"
#include "common/backend.h"
#include "common/bf16.h"
#include "common/registry.h"
#include "embbag/embbag.h"
#include "npy/npy.h"
#include "reference/embbag.h"

namespace {

namespace fs = std::filesystem;
using memlayers::Backend;
using memlayers::DType;
using memlayers::Registry;
using namespace memlayers::cli_test;  // NOLINT: the shared CLI test helpers
using memlayers::embbag::Bwd;
using memlayers::embbag::Fwd;
using ::testing::ContainsRegex;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;

// ---- problems and their reference results ----

struct Problem {
  std::int64_t batch = 0, k = 0, num_rows = 0, dim = 0;
  DType index_dtype = DType::i64;
  std::vector<std::int64_t> idx;
  std::vector<float> w, V, dy;
};

// Random inputs with duplicate rows inside a bag and across bags, and negative weights.
Problem make_problem(std::int64_t batch, std::int64_t k, std::int64_t num_rows, std::int64_t dim,
                     DType index_dtype, unsigned seed) {
  Problem p{batch, k, num_rows, dim, index_dtype, {}, {}, {}, {}};
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<std::int64_t> row(0, num_rows - 1);
  std::uniform_real_distribution<float> weight(-1.0f, 1.0f);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (std::int64_t i = 0; i < batch * k; ++i) p.idx.push_back(row(rng));
  if (k > 1) p.idx[1] = p.idx[0];      // inside a bag
  if (batch > 1) p.idx[k] = p.idx[0];  // across bags
  p.idx.back() = num_rows - 1;         // the last row is reachable
  for (std::int64_t i = 0; i < batch * k; ++i) p.w.push_back(weight(rng));
  for (std::int64_t i = 0; i < num_rows * dim; ++i) p.V.push_back(normal(rng));
  for (std::int64_t i = 0; i < batch * dim; ++i) p.dy.push_back(normal(rng));
  return p;
}

memlayers::npy::Array index_array(const Problem& p) {
  if (p.index_dtype == DType::i64)
    return memlayers::npy::Array::from<std::int64_t>({p.batch, p.k}, p.idx);
  std::vector<std::int32_t> narrow(p.idx.begin(), p.idx.end());
  return memlayers::npy::Array::from<std::int32_t>({p.batch, p.k}, narrow);
}

// V as the op stores it: fp32 as is, bf16 as rounded bit patterns.
std::vector<std::uint16_t> bf16_bits(const std::vector<float>& v) {
  std::vector<std::uint16_t> out;
  for (float x : v) out.push_back(memlayers::float_to_bf16_bits(x));
  return out;
}

std::vector<float> reference_fwd(const Problem& pr, DType values_dtype, DType out_dtype) {
  const memlayers::npy::Array idx = index_array(pr);
  const std::vector<std::uint16_t> vb = bf16_bits(pr.V);
  std::vector<float> y32(static_cast<std::size_t>(pr.batch * pr.dim));
  std::vector<std::uint16_t> y16(y32.size());
  memlayers::embbag::FwdParams p;
  p.values = values_dtype == DType::bf16 ? static_cast<const void*>(vb.data()) : pr.V.data();
  p.indices = idx.bytes.data();
  p.weights = pr.w.data();
  p.out = out_dtype == DType::bf16 ? static_cast<void*>(y16.data()) : y32.data();
  p.batch = pr.batch;
  p.k = pr.k;
  p.dim = pr.dim;
  p.num_rows = pr.num_rows;
  p.values_dtype = values_dtype;
  p.index_dtype = pr.index_dtype;
  p.out_dtype = out_dtype;
  memlayers::reference::embbag_fwd(p);
  if (out_dtype == DType::bf16)
    for (std::size_t i = 0; i < y16.size(); ++i) y32[i] = memlayers::bf16_bits_to_float(y16[i]);
  return y32;
}

struct Grads {
  std::vector<float> dv, dw;
};

Grads reference_bwd(const Problem& pr, DType values_dtype) {
  const memlayers::npy::Array idx = index_array(pr);
  const std::vector<std::uint16_t> vb = bf16_bits(pr.V);
  Grads g{std::vector<float>(static_cast<std::size_t>(pr.num_rows * pr.dim)),
          std::vector<float>(static_cast<std::size_t>(pr.batch * pr.k))};
  memlayers::embbag::BwdParams p;
  p.values = values_dtype == DType::bf16 ? static_cast<const void*>(vb.data()) : pr.V.data();
  p.indices = idx.bytes.data();
  p.weights = pr.w.data();
  p.grad_out = pr.dy.data();
  p.batch = pr.batch;
  p.k = pr.k;
  p.dim = pr.dim;
  p.num_rows = pr.num_rows;
  p.values_dtype = values_dtype;
  p.index_dtype = pr.index_dtype;
  p.grad_values_dense = g.dv.data();
  p.grad_weights = g.dw.data();
  memlayers::reference::embbag_bwd(p);
  return g;
}

// A float64 .npy file, which no subcommand accepts: written by hand since npy::write refuses it.
void write_f64(const fs::path& p, std::int64_t rows, std::int64_t cols) {
  std::string header = "{'descr': '<f8', 'fortran_order': False, 'shape': (" +
                       std::to_string(rows) + ", " + std::to_string(cols) + "), }";
  header += std::string(63 - (10 + header.size()) % 64, ' ') + "\n";
  std::string file = "\x93NUMPY";
  file += '\x01';
  file += '\x00';
  file += static_cast<char>(header.size() & 0xff);
  file += static_cast<char>(header.size() >> 8);
  file += header;
  for (std::int64_t i = 0; i < rows * cols; ++i) {
    const double v = 0.5 * static_cast<double>(i);
    file.append(reinterpret_cast<const char*>(&v), sizeof v);
  }
  std::ofstream(p, std::ios::binary) << file;
}

// ---- the fixture: a temp dir holding one problem's files ----

class EmbbagCli : public memlayers::cli_test::TempDirTest {
 protected:
  EmbbagCli() : TempDirTest("memlayers_embbag_cli_") {}

  void write(const Problem& p) {
    namespace npy = memlayers::npy;
    npy::write(file("idx.npy"), index_array(p));
    npy::write(file("w.npy"), npy::Array::from<float>({p.batch, p.k}, p.w));
    npy::write(file("V.npy"), npy::Array::from<float>({p.num_rows, p.dim}, p.V));
    npy::write(file("dy.npy"), npy::Array::from<float>({p.batch, p.dim}, p.dy));
  }
  std::string inputs() const {
    return "embbag --indices " + arg("idx.npy") + " --weights " + arg("w.npy") + " --values " +
           arg("V.npy");
  }
  std::string backward() const { return inputs() + " --backward --grad-out " + arg("dy.npy"); }

  // A run that must fail with `code`, writing no output and nothing on stdout.
  Result fails(const std::string& args, int code) {
    return fails_writing_none(args, code, {"y.npy"});
  }
};

struct Target {
  const char* backend;
  const char* variant;  // "" for the default
};

// The variant the CLI picks by default: the backend's first in name order that supports the
// input (every registered one supports these small, aligned problems).
template <class Op>
std::string default_variant(const char* backend) {
  const auto vs = Registry<Op>::of(*memlayers::parse_backend(backend));
  return vs.empty() ? "?" : vs.front()->name;
}

template <class Op>
std::string expected_name(const Target& r) {
  return *r.variant ? r.variant : default_variant<Op>(r.backend);
}

std::string flags(const Target& r) {
  std::string s = std::string(" --backend ") + r.backend;
  if (*r.variant) s += std::string(" --variant ") + r.variant;
  return s;
}

const Target kFwdRuns[] = {
    {"reference", ""}, {"cpu", ""}, {"cpu", "v2_hwy_threads"}, {"simt", "v3_rows_in_flight"}};
const Target kBwdRuns[] = {
    {"reference", ""}, {"cpu", ""}, {"cpu", "v2_bwd_sorted"}, {"simt", "v2_bwd_sorted"}};

// ---- forward ----

TEST_F(EmbbagCli, ForwardMatchesReference) {
  for (DType it : {DType::i32, DType::i64}) {
    // dim 19 and k 7: ragged against every vector width.
    const Problem p = make_problem(5, 7, 37, 19, it, it == DType::i32 ? 1 : 2);
    write(p);
    const std::vector<float> want = reference_fwd(p, DType::f32, DType::f32);
    for (const Target& r : kFwdRuns) {
      const std::string what = std::string(r.backend) + "/" + expected_name<Fwd>(r) + " " +
                               std::string(memlayers::to_string(it));
      SCOPED_TRACE(what);
      const Result res = ok(inputs() + flags(r) + " --out " + arg("y.npy"), {"y.npy"});
      EXPECT_THAT(res.err, StartsWith("embbag forward: " + std::string(r.backend) + "/" +
                                      expected_name<Fwd>(r) + ", indices (5, 7) " +
                                      std::string(memlayers::to_string(it))));
      EXPECT_THAT(res.err, HasSubstr("values (37, 19) fp32 -> out (5, 19) fp32"));
      EXPECT_THAT(res.err, HasSubstr(" ms\n"));
      expect_close(read_floats(file("y.npy"), {5, 19}), want, 1e-5, what);
    }
  }
}

// SIMT_ACCESS_REPORT=1 makes a program that runs simt kernels print, at exit, the sectors per
// request of their cache-hinted accesses (simt.h, AccessCounter); without it nothing is printed.
TEST_F(EmbbagCli, SimtAccessReportOnRequest) {
  const Problem p = make_problem(4, 32, 64, 256, DType::i64, 5);
  write(p);
  const std::string args =
      inputs() + " --backend simt --variant v2_warp_per_bag --out " + arg("y.npy");
  EXPECT_THAT(ok(args, {"y.npy"}).err, Not(HasSubstr("simt access report")));
  ::setenv("SIMT_ACCESS_REPORT", "1", 1);
  const Result res = ok(args, {"y.npy"});
  ::unsetenv("SIMT_ACCESS_REPORT");
  EXPECT_THAT(res.err, HasSubstr("simt access report (SIMT_ACCESS_REPORT)"));
  EXPECT_THAT(res.err, HasSubstr("sectors/request"));
  // The rows: 256 fp32 = 1 KiB each, read 512 bytes (16 sectors) a request, all of them used.
  EXPECT_THAT(res.err, ContainsRegex("embbag_fwd_v2_warp_per_bag +load +kernels/embbag/cuda/"
                                     "common.cuh:[0-9]+:[0-9]+ +[0-9]+ +16.00 +100.0%"));
  EXPECT_THAT(res.err, ContainsRegex("embbag_fwd_v2_warp_per_bag +store "));
}

TEST_F(EmbbagCli, ForwardBf16Storage) {
  const Problem p = make_problem(6, 32, 50, 64, DType::i64, 3);
  write(p);
  const std::vector<float> exact = reference_fwd(p, DType::f32, DType::f32);
  const std::vector<float> bf16_in = reference_fwd(p, DType::bf16, DType::f32);
  const std::vector<float> bf16_both = reference_fwd(p, DType::bf16, DType::bf16);
  for (const Target& r : kFwdRuns) {
    const std::string what = std::string(r.backend) + "/" + expected_name<Fwd>(r);
    SCOPED_TRACE(what);
    const Result res = ok(inputs() + flags(r) + " --dtype bf16 --out " + arg("y.npy"), {"y.npy"});
    EXPECT_THAT(res.err, HasSubstr("values (50, 64) bf16"));
    const auto y = read_floats(file("y.npy"), {6, 64});
    // The op saw V rounded to bf16: it matches the reference on the rounded table closely, and
    // differs from the fp32 table's result by about bf16's precision.
    expect_close(y, bf16_in, 1e-5, what + " vs reference on bf16 V");
    expect_close(y, exact, 1e-2, what + " vs fp32 reference");
    EXPECT_GT(relative_error(y, exact), 1e-5) << "--dtype bf16 did not round V";

    const Result both =
        ok(inputs() + flags(r) + " --dtype bf16 --out-dtype bf16 --out " + arg("y.npy"), {"y.npy"});
    EXPECT_THAT(both.err, HasSubstr("-> out (6, 64) bf16"));
    const auto y16 = read_floats(file("y.npy"), {6, 64});
    expect_close(y16, bf16_both, 1e-2, what + " bf16 out");
    std::int64_t not_bf16 = 0;
    for (float x : y16) not_bf16 += memlayers::round_to_bf16(x) != x;
    EXPECT_EQ(not_bf16, 0) << "--out-dtype bf16 output holds values bf16 cannot represent";
  }
}

// ---- backward ----

TEST_F(EmbbagCli, BackwardMatchesReference) {
  for (DType it : {DType::i32, DType::i64}) {
    const Problem p = make_problem(6, 7, 23, 33, it, it == DType::i32 ? 4 : 5);
    write(p);
    const Grads want = reference_bwd(p, DType::f32);
    for (const Target& r : kBwdRuns) {
      const std::string what = std::string(r.backend) + "/" + expected_name<Bwd>(r) + " " +
                               std::string(memlayers::to_string(it));
      SCOPED_TRACE(what);
      const Result res = ok(backward() + flags(r) + " --grad-values " + arg("dV.npy") +
                                " --grad-weights " + arg("dw.npy"),
                            {"dV.npy", "dw.npy"});
      EXPECT_THAT(res.err, StartsWith("embbag backward: " + std::string(r.backend) + "/" +
                                      expected_name<Bwd>(r) + ", "));
      EXPECT_THAT(res.err, HasSubstr("-> grad-values (23, 33) fp32, grad-weights (6, 7) fp32"));
      EXPECT_THAT(res.err, Not(HasSubstr("embbag forward"))) << "no --out: no forward";
      expect_close(read_floats(file("dV.npy"), {23, 33}), want.dv, 1e-5, what + " dV");
      expect_close(read_floats(file("dw.npy"), {6, 7}), want.dw, 1e-5, what + " dw");
    }
  }
}

TEST_F(EmbbagCli, BackwardBf16Storage) {
  const Problem p = make_problem(8, 16, 40, 48, DType::i32, 6);
  write(p);
  const Grads exact = reference_bwd(p, DType::f32), bf16 = reference_bwd(p, DType::bf16);
  for (const Target& r : kBwdRuns) {
    const std::string what = std::string(r.backend) + "/" + expected_name<Bwd>(r);
    SCOPED_TRACE(what);
    ok(backward() + flags(r) + " --dtype bf16 --grad-values " + arg("dV.npy") + " --grad-weights " +
           arg("dw.npy"),
       {"dV.npy", "dw.npy"});
    // dV does not read V, so it is the fp32 result; dw dots dy with the bf16 rows.
    expect_close(read_floats(file("dV.npy"), {40, 48}), exact.dv, 1e-5, what + " dV");
    const auto dw = read_floats(file("dw.npy"), {8, 16});
    expect_close(dw, bf16.dw, 1e-5, what + " dw vs reference on bf16 V");
    expect_close(dw, exact.dw, 1e-2, what + " dw vs fp32 reference");
    EXPECT_GT(relative_error(dw, exact.dw), 1e-6) << "--dtype bf16 did not round V";
  }
}

TEST_F(EmbbagCli, BackwardOutputsAreOptionalAndForwardRunsWithOut) {
  const Problem p = make_problem(4, 5, 17, 12, DType::i64, 7);
  write(p);
  const Grads want = reference_bwd(p, DType::f32);

  fs::remove(file("dV.npy"));
  const Result dw_only = ok(backward() + " --grad-weights " + arg("dw.npy"), {"dw.npy"});
  EXPECT_THAT(dw_only.err, HasSubstr("-> grad-weights (4, 5) fp32"));
  EXPECT_THAT(dw_only.err, Not(HasSubstr("grad-values")));
  EXPECT_FALSE(fs::exists(file("dV.npy")));
  expect_close(read_floats(file("dw.npy"), {4, 5}), want.dw, 1e-5, "dw only");

  fs::remove(file("dw.npy"));
  const Result both = ok(backward() + " --backend simt --variant v2_bwd_sorted --grad-values " +
                             arg("dV.npy") + " --out " + arg("y.npy"),
                         {"dV.npy", "y.npy"});
  // --variant names the backward variant; the forward takes the backend's default.
  EXPECT_THAT(both.err, HasSubstr("embbag forward: simt/" + default_variant<Fwd>("simt")));
  EXPECT_THAT(both.err, HasSubstr("embbag backward: simt/v2_bwd_sorted"));
  EXPECT_FALSE(fs::exists(file("dw.npy")));
  expect_close(read_floats(file("dV.npy"), {17, 12}), want.dv, 1e-5, "dV with forward");
  expect_close(read_floats(file("y.npy"), {4, 12}), reference_fwd(p, DType::f32, DType::f32), 1e-5,
               "y with backward");
}

// ---- errors ----

TEST_F(EmbbagCli, OutOfRangeIndexIsRefusedBeforeTheRun) {
  Problem p = make_problem(3, 4, 10, 8, DType::i64, 8);
  p.idx[1 * 4 + 2] = 10;
  write(p);
  const Result r = fails(inputs() + " --out " + arg("y.npy"), 1);
  EXPECT_EQ(r.err, "memlayers: error: --indices (" + arg("idx.npy") +
                       "): index 10 out of range [0, 10) at bag 1, slot 2\n");
  const Result bwd = run(backward() + " --grad-weights " + arg("dw.npy"));
  EXPECT_EQ(bwd.code, 1);
  EXPECT_THAT(bwd.err, HasSubstr("index 10 out of range [0, 10) at bag 1, slot 2"));
  EXPECT_FALSE(fs::exists(file("dw.npy")));

  Problem neg = make_problem(2, 3, 10, 8, DType::i32, 9);
  neg.idx[0] = -1;
  write(neg);
  const Result n = fails(inputs() + " --backend simt --out " + arg("y.npy"), 1);
  EXPECT_EQ(n.err, "memlayers: error: --indices (" + arg("idx.npy") +
                       "): index -1 out of range [0, 10) at bag 0, slot 0\n");

  // --no-check-indices skips the host check: the reference backend's own check is what refuses.
  write(p);
  const Result skipped =
      fails(inputs() + " --backend reference --no-check-indices --out " + arg("y.npy"), 1);
  EXPECT_THAT(skipped.err, StartsWith("memlayers: error: index 10 out of range [0, 10)"));
  // On valid indices the flag changes nothing.
  write(make_problem(3, 4, 10, 8, DType::i64, 10));
  ok(inputs() + " --no-check-indices --out " + arg("y.npy"), {"y.npy"});
}

TEST_F(EmbbagCli, ShapeMismatchesNameTheFile) {
  namespace npy = memlayers::npy;
  const Problem p = make_problem(5, 7, 20, 9, DType::i64, 11);
  write(p);
  const std::string fwd = inputs() + " --out " + arg("y.npy");

  npy::write(file("w.npy"), npy::Array::zeros(DType::f32, {5, 8}));
  Result r = fails(fwd, 1);
  EXPECT_THAT(r.err, HasSubstr("--weights (" + arg("w.npy") +
                               "): shape (5, 8) does not match the expected (5, 7)"));
  EXPECT_THAT(r.err, HasSubstr("--indices (5, 7)"));
  write(p);

  npy::write(file("dy.npy"), npy::Array::zeros(DType::f32, {5, 10}));
  r = fails(backward() + " --grad-weights " + arg("dw.npy"), 1);
  EXPECT_THAT(r.err, HasSubstr("--grad-out (" + arg("dy.npy") +
                               "): shape (5, 10) does not match the expected (5, 9)"));
  write(p);

  npy::write(file("V.npy"), npy::Array::zeros(DType::f32, {180}));
  r = fails(fwd, 1);
  EXPECT_THAT(r.err, HasSubstr("--values (" + arg("V.npy") +
                               "): has rank 1 (shape (180,)), expected rank 2"));
  write(p);

  npy::write(file("idx.npy"), npy::Array::zeros(DType::i64, {5, 7, 1}));
  r = fails(fwd, 1);
  EXPECT_THAT(r.err, HasSubstr("--indices (" + arg("idx.npy") + "): has rank 3"));

  npy::write(file("idx.npy"), npy::Array::zeros(DType::f32, {5, 7}));
  r = fails(fwd, 1);
  EXPECT_THAT(r.err, HasSubstr("--indices (" + arg("idx.npy") +
                               "): dtype fp32 is not accepted here; accepted: int32, int64"));
}

TEST_F(EmbbagCli, UsageErrors) {
  write(make_problem(2, 3, 10, 4, DType::i64, 12));
  struct Case {
    std::string args, says;
  };
  const Case cases[] = {
      {inputs() + " --backward --grad-weights " + arg("dw.npy"), "--grad-out"},
      {inputs() + " --grad-out " + arg("dy.npy") + " --out " + arg("y.npy"), "--backward"},
      {backward(), "at least one of --grad-values, --grad-weights"},
      {inputs(), "--out is required"},
      {inputs() + " --grad-values " + arg("dV.npy") + " --out " + arg("y.npy"), "--backward"},
      {inputs() + " --backend gpu --out " + arg("y.npy"), "--backend"},
      {inputs() + " --dtype fp16 --out " + arg("y.npy"), "--dtype"},
      {"embbag --weights " + arg("w.npy") + " --values " + arg("V.npy") + " --out " + arg("y.npy"),
       "--indices"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.args);
    const Result r = fails(c.args, 2);
    EXPECT_THAT(r.err, StartsWith("memlayers: usage error:"));
    EXPECT_THAT(r.err, HasSubstr(c.says));
    EXPECT_FALSE(fs::exists(file("dw.npy")));
    EXPECT_FALSE(fs::exists(file("dV.npy")));
  }
}

TEST_F(EmbbagCli, UnknownVariantListsTheRegisteredOnes) {
  write(make_problem(2, 3, 10, 4, DType::i64, 13));
  const Result r = fails(inputs() + " --variant v9_bogus --out " + arg("y.npy"), 1);
  EXPECT_THAT(r.err, HasSubstr("no variant 'v9_bogus' on backend cpu; registered there: "));
  const auto fwd = Registry<Fwd>::of(Backend::cpu);
  ASSERT_FALSE(fwd.empty());
  for (const auto* v : fwd) EXPECT_THAT(r.err, HasSubstr(v->name));

  // A backward variant name is not a forward one, and the other way round.
  const Result b = fails(
      backward() + " --backend simt --variant v3_rows_in_flight --grad-weights " + arg("dw.npy"),
      1);
  EXPECT_THAT(b.err, HasSubstr("embbag_bwd: no variant 'v3_rows_in_flight' on backend simt"));
  for (const auto* v : Registry<Bwd>::of(Backend::simt)) EXPECT_THAT(b.err, HasSubstr(v->name));
}

TEST_F(EmbbagCli, Float64FilesAreRefused) {
  write(make_problem(2, 3, 10, 4, DType::i64, 14));
  write_f64(file("V.npy"), 10, 4);
  Result r = fails(inputs() + " --out " + arg("y.npy"), 1);
  EXPECT_THAT(r.err, HasSubstr(arg("V.npy") + ": float64 is not accepted"));
  EXPECT_THAT(r.err, HasSubstr("arr.astype(np.float32)"));
  write(make_problem(2, 3, 10, 4, DType::i64, 14));
  write_f64(file("w.npy"), 2, 3);
  r = fails(inputs() + " --out " + arg("y.npy"), 1);
  EXPECT_THAT(r.err, HasSubstr(arg("w.npy") + ": float64 is not accepted"));
}

TEST_F(EmbbagCli, UnusableBackendSaysWhy) {
  const std::string why = memlayers::usable(Backend::cuda);
  if (why.empty()) GTEST_SKIP() << "cuda is usable here; nothing to refuse";
  write(make_problem(2, 3, 10, 4, DType::i64, 15));
  const Result r = fails(inputs() + " --backend cuda --out " + arg("y.npy"), 1);
  EXPECT_EQ(r.err, "memlayers: error: backend cuda is not usable here: " + why + "\n");
}

// ---- against numpy ----

// Inputs made and results checked by numpy, so the check shares no code with the suite.
TEST_F(EmbbagCli, MatchesNumpy) {
  if (std::system("python3 -c 'import numpy' >/dev/null 2>&1") != 0)
    GTEST_SKIP() << "python3 with numpy is not available";
  const fs::path make = file("make.py"), check = file("check.py");
  std::ofstream(make) << R"(import sys, numpy as np
d = sys.argv[1]
rng = np.random.default_rng(17)
B, k, N, dim = 9, 13, 61, 40
idx = rng.integers(0, N, size=(B, k))
idx[0, 1] = idx[0, 0]
np.save(d + '/idx.npy', idx.astype(np.int64))
np.save(d + '/w.npy', rng.uniform(-1, 1, size=(B, k)).astype(np.float32))
np.save(d + '/V.npy', rng.standard_normal((N, dim)).astype(np.float32))
np.save(d + '/dy.npy', rng.standard_normal((B, dim)).astype(np.float32))
)";
  std::ofstream(check) << R"(import sys, numpy as np
d = sys.argv[1]
idx = np.load(d + '/idx.npy'); w = np.load(d + '/w.npy').astype(np.float64)
V = np.load(d + '/V.npy').astype(np.float64); dy = np.load(d + '/dy.npy').astype(np.float64)
rows = V[idx]
want = {'y': np.einsum('bk,bkd->bd', w, rows), 'dw': np.einsum('bd,bkd->bk', dy, rows)}
dV = np.zeros_like(V)
np.add.at(dV, idx.ravel(), (w[:, :, None] * dy[:, None, :]).reshape(-1, V.shape[1]))
want['dV'] = dV
worst = 0.0
for name, ref in want.items():
    got = np.load(d + '/' + name + '.npy')
    assert got.dtype == np.float32 and got.shape == ref.shape, (name, got.dtype, got.shape)
    assert np.linalg.norm(ref) > 0 and np.all(np.isfinite(got)), name
    err = np.linalg.norm(got - ref) / np.linalg.norm(ref)
    print(name, err)
    worst = max(worst, err)
sys.exit(0 if worst <= 1e-5 else 1)
)";
  ASSERT_EQ(std::system(("python3 " + quoted(make) + " " + quoted(fs::path(dir()))).c_str()), 0);
  for (const char* backend : {"cpu", "simt"}) {
    SCOPED_TRACE(backend);
    ok(inputs() + " --backend " + backend + " --out " + arg("y.npy"), {"y.npy"});
    ok(backward() + " --backend " + backend + " --grad-values " + arg("dV.npy") +
           " --grad-weights " + arg("dw.npy"),
       {"dV.npy", "dw.npy"});
    const std::string log = file("check.log").string();
    const int rc = std::system(
        ("python3 " + quoted(check) + " " + quoted(fs::path(dir())) + " >'" + log + "' 2>&1")
            .c_str());
    EXPECT_EQ(rc, 0) << "numpy disagrees:\n" << slurp(log);
  }
}

}  // namespace
