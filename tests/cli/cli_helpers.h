// What the tests of the `memlayers` binary share: running it with stdout and stderr captured
// apart, a fixture whose temp dir holds one test's files, and comparing float outputs with a
// reference (mismatch count, largest error, first five indices on failure).
// Included by the cli_test sources (tests/cli/CMakeLists.txt), which define MEMLAYERS_CLI_BINARY.
#pragma once
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "common/dtype.h"
#include "npy/npy.h"
#include "tests/common/temp_dir.h"

namespace memlayers::cli_test {

namespace fs = std::filesystem;

// ---- running the binary ----

struct Result {
  int code = -1;
  std::string out, err;
};

inline std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

inline std::string quoted(const fs::path& p) { return "'" + p.string() + "'"; }

// Runs `memlayers <args>` through the shell, stdout and stderr captured apart.
inline Result run(const std::string& args) {
  const fs::path dir = fs::temp_directory_path();
  const std::string tag = std::to_string(::getpid());
  const fs::path out = dir / ("memlayers_cli_out_" + tag), err = dir / ("memlayers_cli_err_" + tag);
  const std::string cmd = std::string("'") + MEMLAYERS_CLI_BINARY + "' " + args + " >" +
                          quoted(out) + " 2>" + quoted(err) + " </dev/null";
  const int status = std::system(cmd.c_str());
  Result r;
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.out = slurp(out);
  r.err = slurp(err);
  fs::remove(out);
  fs::remove(err);
  return r;
}

// ---- a temp dir per test ----

// The temp-dir fixture (tests/common/temp_dir.h), with running the binary on its files.
class TempDirTest : public test::TempDirTest {
 protected:
  using test::TempDirTest::TempDirTest;
  std::string arg(const std::string& name) const { return quoted(file(name)); }

  // A run that must succeed: exit 0, nothing on stdout (the summary goes to stderr), each of
  // `outputs` (removed first) written.
  Result ok(const std::string& args, const std::vector<std::string>& outputs) {
    for (const auto& o : outputs) fs::remove(file(o));
    Result r = run(args);
    EXPECT_EQ(r.code, 0) << args << "\n" << r.err;
    EXPECT_TRUE(r.out.empty()) << "stdout: " << r.out;
    for (const auto& o : outputs) EXPECT_TRUE(fs::exists(file(o))) << o << " not written";
    return r;
  }

  // A run that must fail with `code`, nothing on stdout and none of `outputs` (removed first)
  // written.
  Result fails_writing_none(const std::string& args, int code,
                            const std::vector<std::string>& outputs) {
    for (const auto& o : outputs) fs::remove(file(o));
    Result r = run(args);
    EXPECT_EQ(r.code, code) << args << "\n" << r.err;
    EXPECT_TRUE(r.out.empty()) << "stdout: " << r.out;
    for (const auto& o : outputs) EXPECT_FALSE(fs::exists(file(o))) << "a failed run wrote " << o;
    return r;
  }
};

// ---- comparing outputs ----

// ‖got − want‖ / ‖want‖ after checking sizes, NaN and that neither side is all zeros.
inline double relative_error(const std::vector<float>& got, const std::vector<float>& want) {
  EXPECT_EQ(got.size(), want.size());
  if (got.size() != want.size()) return INFINITY;
  double diff = 0, ref = 0, norm = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    if (std::isnan(got[i]) || std::isnan(want[i])) return INFINITY;
    diff += (double{got[i]} - want[i]) * (double{got[i]} - want[i]);
    ref += double{want[i]} * want[i];
    norm += double{got[i]} * got[i];
  }
  EXPECT_GT(ref, 0) << "the reference is all zeros: the check would prove nothing";
  EXPECT_GT(norm, 0) << "the output is all zeros";
  return std::sqrt(diff / ref);
}

// Relative norm, then elementwise |got − want| <= tol·(max|want| + |want|); on failure the count
// of mismatches, the largest error and the first five indices.
inline void expect_close(const std::vector<float>& got, const std::vector<float>& want, double tol,
                         const std::string& what) {
  const double rel = relative_error(got, want);
  EXPECT_LE(rel, tol) << what << ": relative norm error";
  if (got.size() != want.size()) return;
  double scale = 0;
  for (float x : want) scale = std::max(scale, double{std::fabs(x)});
  std::int64_t bad = 0;
  double worst = 0;
  std::ostringstream first;
  for (std::size_t i = 0; i < got.size(); ++i) {
    const double err = std::fabs(double{got[i]} - want[i]);
    worst = std::max(worst, err);
    if (!(err <= tol * (scale + std::fabs(want[i])))) {
      if (bad < 5) first << " [" << i << "] got " << got[i] << " want " << want[i] << ";";
      ++bad;
    }
  }
  EXPECT_EQ(bad, 0) << what << ": " << bad << " of " << got.size() << " elements off, max error "
                    << worst << ", first:" << first.str();
}

// A float32 .npy file of the expected shape, as a vector.
inline std::vector<float> read_floats(const fs::path& p, const std::vector<std::int64_t>& shape) {
  const npy::Array a = npy::read(p);
  EXPECT_EQ(a.dtype, DType::f32) << p;
  EXPECT_EQ(a.shape, shape) << p;
  return a.to_vector<float>();
}

}  // namespace memlayers::cli_test
