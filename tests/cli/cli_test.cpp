// Runs the built `memlayers` binary: --help, --version, info, info --json (checked against the
// registry and Highway in this process), npy-info, and the exit codes of usage and runtime errors.
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <hwy/targets.h>
#include <nlohmann/json.hpp>

#include "cli_helpers.h"
#include "common/backend.h"
#include "common/blas_core.h"
#include "common/registry.h"
#include "npy/npy.h"

namespace {

namespace fs = std::filesystem;
using memlayers::cli_test::Result;
using memlayers::cli_test::run;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;

TEST(CliBinary, Help) {
  const Result r = run("--help");
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("memlayers"));
  EXPECT_THAT(r.out, HasSubstr("info"));
  EXPECT_THAT(r.out, HasSubstr("npy-info"));
  EXPECT_THAT(r.out, HasSubstr("--version"));
  const Result sub = run("info --help");
  EXPECT_EQ(sub.code, 0);
  EXPECT_THAT(sub.out, HasSubstr("--json"));
}

TEST(CliBinary, Version) {
  const Result r = run("--version");
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_THAT(r.out, StartsWith("memlayers " MEMLAYERS_VERSION));
}

TEST(CliBinary, InfoText) {
  const Result r = run("info");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_THAT(r.out, StartsWith("memlayers " MEMLAYERS_VERSION));
  for (const char* want : {"cpu:", "simd:", "blas:", "gpu:", "backends:", "reference", "simt"})
    EXPECT_THAT(r.out, HasSubstr(want));
  const std::string cuda_why = memlayers::usable(memlayers::Backend::cuda);
  if (!cuda_why.empty()) {
    EXPECT_THAT(r.out, HasSubstr("cuda       not usable: " + cuda_why));
  }
  for (const auto& v : memlayers::all_variants()) EXPECT_THAT(r.out, HasSubstr(v.name));
  for (const auto& op : memlayers::all_ops()) EXPECT_THAT(r.out, HasSubstr(op));
  EXPECT_TRUE(r.err.empty()) << r.err;
}

TEST(CliBinary, InfoJsonMatchesThisProcess) {
  const Result r = run("info --json");
  ASSERT_EQ(r.code, 0) << r.err;
  nlohmann::json j;
  ASSERT_NO_THROW(j = nlohmann::json::parse(r.out)) << r.out;
  for (const char* key : {"version", "backends", "ops", "variants", "cpu", "gpu"})
    ASSERT_TRUE(j.contains(key)) << key << " missing in " << r.out;
  EXPECT_EQ(j["version"], MEMLAYERS_VERSION);

  ASSERT_EQ(j["backends"].size(), std::size(memlayers::kAllBackends));
  for (std::size_t i = 0; i < j["backends"].size(); ++i) {
    const auto b = memlayers::kAllBackends[i];
    const auto& jb = j["backends"][i];
    EXPECT_EQ(jb["name"], std::string(memlayers::to_string(b)));
    EXPECT_EQ(jb["usable"], memlayers::usable(b).empty());
    EXPECT_EQ(jb["why_not"], memlayers::usable(b));
    EXPECT_EQ(jb["compiled"], memlayers::backend_info(b).compiled);
  }
  EXPECT_EQ(j["backends"][0]["usable"], true) << "the reference backend runs everywhere";
  EXPECT_EQ(j["gpu"]["present"], memlayers::usable(memlayers::Backend::cuda).empty());

  // The binary and this test link the same registry: the same ops and variants, in order.
  const auto& ops = memlayers::all_ops();
  ASSERT_EQ(j["ops"].size(), ops.size());
  for (std::size_t i = 0; i < ops.size(); ++i) EXPECT_EQ(j["ops"][i]["name"], ops[i]);
  const auto& variants = memlayers::all_variants();
  ASSERT_EQ(j["variants"].size(), variants.size());
  std::size_t counted = 0;
  for (const auto& op : j["ops"]) counted += op["variant_count"].get<std::size_t>();
  EXPECT_EQ(counted, variants.size());
  for (std::size_t i = 0; i < variants.size(); ++i) {
    const auto& jv = j["variants"][i];
    EXPECT_EQ(jv["op"], variants[i].op);
    EXPECT_EQ(jv["name"], variants[i].name);
    EXPECT_EQ(jv["backend"], std::string(memlayers::to_string(variants[i].backend)));
    EXPECT_EQ(jv["summary"], variants[i].summary);
    EXPECT_EQ(jv["deterministic"], variants[i].deterministic);
  }

  EXPECT_EQ(j["cpu"]["cores"], std::thread::hardware_concurrency());
  EXPECT_GE(j["cpu"]["cores_available"].get<int>(), 1);
  EXPECT_FALSE(j["cpu"]["model"].get<std::string>().empty());
  std::vector<std::string> targets;
  for (std::int64_t bits = hwy::SupportedTargets(); bits; bits &= bits - 1)
    targets.emplace_back(hwy::TargetName(bits & -bits));
  ASSERT_FALSE(targets.empty());
  EXPECT_EQ(j["cpu"]["simd_targets"].get<std::vector<std::string>>(), targets);
}

namespace {
// The OpenBLAS core a describe() line names: "OpenBLAS 0.3.21, Cooperlake kernels (...)".
std::string core_of(const std::string& blas) {
  const auto comma = blas.find(", "), kernels = blas.find(" kernels");
  if (comma == std::string::npos || kernels == std::string::npos || kernels < comma) return "";
  return blas.substr(comma + 2, kernels - comma - 2);
}
}  // namespace

TEST(BlasCore, BetterCoreOnlyReplacesPreAvx2Cores) {
  using memlayers::host_blas::better_core;
  using memlayers::host_blas::CpuVectors;
  const CpuVectors sse{}, avx2{true, false, false}, avx512{true, true, false},
      avx512_bf16{true, true, true};
  // The fallback that Debian's OpenBLAS 0.3.21 takes on a Xeon it does not know.
  EXPECT_EQ(better_core("Prescott", avx512_bf16), "Cooperlake");
  EXPECT_EQ(better_core("Prescott", avx512), "SkylakeX");
  EXPECT_EQ(better_core("prescott", avx2), "Haswell");  // names compare without case
  EXPECT_EQ(better_core("Sandybridge", avx2), "Haswell");
  EXPECT_EQ(better_core("Nehalem", avx512), "SkylakeX");
  // Nothing better to run: the library's choice stands.
  EXPECT_EQ(better_core("Prescott", sse), "");
  // AVX2 and AVX-512 cores, and names this code does not know, are left alone.
  for (const char* core : {"Haswell", "Zen", "SkylakeX", "Cooperlake", "SapphireRapids", "Zen5"})
    EXPECT_EQ(better_core(core, avx512_bf16), "") << core;
}

TEST(CliBinary, InfoRunsOpenBlasOwnKernelsNotItsFallback) {
  if (std::getenv("OPENBLAS_CORETYPE") != nullptr)
    GTEST_SKIP() << "OPENBLAS_CORETYPE is set: the binary keeps it, and this test checks its own "
                    "choice";
  const Result r = run("info --json");
  ASSERT_EQ(r.code, 0) << r.err;
  const std::string blas = nlohmann::json::parse(r.out)["cpu"]["blas"].get<std::string>();
  if (blas.rfind("OpenBLAS", 0) != 0) GTEST_SKIP() << "not OpenBLAS: " << blas;
  const std::string core = core_of(blas);
  ASSERT_FALSE(core.empty()) << blas;
  // A pre-AVX2 fallback on a CPU with AVX2 or AVX-512 was replaced at start, and says so.
  EXPECT_EQ(memlayers::host_blas::better_core(core, memlayers::host_blas::this_cpu()), "")
      << "memlayers runs OpenBLAS's " << core << " kernels on a CPU that runs better ones";
  if (blas.find("OPENBLAS_CORETYPE") != std::string::npos) {
    EXPECT_THAT(blas, HasSubstr("set at start: the library alone took")) << blas;
  }
  EXPECT_TRUE(r.err.empty()) << r.err;
}

TEST(CliBinary, OpenBlasCoreTypeSetByTheUserIsKept) {
  ASSERT_EQ(setenv("OPENBLAS_CORETYPE", "Prescott", 1), 0);
  const Result r = run("info --json");
  unsetenv("OPENBLAS_CORETYPE");
  ASSERT_EQ(r.code, 0) << r.err;
  const std::string blas = nlohmann::json::parse(r.out)["cpu"]["blas"].get<std::string>();
  if (blas.rfind("OpenBLAS", 0) != 0) GTEST_SKIP() << "not OpenBLAS: " << blas;
  EXPECT_THAT(blas, HasSubstr("(OPENBLAS_CORETYPE=Prescott)"));
  EXPECT_THAT(blas, Not(HasSubstr("set at start")));
}

TEST(CliBinary, NpyInfoReadsAndReportsErrors) {
  const fs::path dir =
      fs::temp_directory_path() / ("memlayers_cli_npy_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  memlayers::npy::write(dir / "v.npy", memlayers::npy::Array::from<float>(
                                           {2, 2}, std::vector<float>{-1.5f, 2, NAN, 8}));
  const Result ok = run("npy-info '" + (dir / "v.npy").string() + "'");
  EXPECT_EQ(ok.code, 0) << ok.err;
  EXPECT_THAT(ok.out, HasSubstr("v.npy: fp32 (2, 2), 4 elements, min -1.5 max 8, 1 NaN"));

  // A runtime error: exit 1, the library's message behind the program's prefix.
  const Result missing = run("npy-info '" + (dir / "absent.npy").string() + "'");
  EXPECT_EQ(missing.code, 1);
  EXPECT_THAT(missing.err, StartsWith("memlayers: error: npy: cannot open"));
  EXPECT_THAT(missing.err, HasSubstr("absent.npy"));
  fs::remove_all(dir);
}

TEST(CliBinary, UnknownSubcommandIsAUsageError) {
  const Result r = run("frobnicate");
  EXPECT_EQ(r.code, 2);
  EXPECT_THAT(r.err, HasSubstr("unknown subcommand 'frobnicate'"));
  EXPECT_THAT(r.err, HasSubstr("available: embbag, info, memory-layer, npy-info"));
  EXPECT_TRUE(r.out.empty()) << r.out;
}

TEST(CliBinary, OtherUsageErrors) {
  const Result none = run("");
  EXPECT_EQ(none.code, 2);
  EXPECT_THAT(none.err, HasSubstr("memlayers: usage error:"));
  const Result bad_flag = run("info --bogus");
  EXPECT_EQ(bad_flag.code, 2);
  EXPECT_THAT(bad_flag.err, HasSubstr("--bogus"));
  const Result no_files = run("npy-info");
  EXPECT_EQ(no_files.code, 2);
  EXPECT_THAT(no_files.err, HasSubstr("files"));
  EXPECT_THAT(no_files.err, Not(HasSubstr("memlayers: error:")));
}

}  // namespace
