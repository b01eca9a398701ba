// Proofs that the sanitizers see what they must in simt-run kernels: under ThreadSanitizer a
// kernel with its __syncthreads removed is reported as a data race at the kernel's own lines, and
// so are a read of another warp's data after a __syncwarp only, a read of another thread's
// cp.async data with no barrier after the copy's wait, and blocks that update one total without
// an atomic; under AddressSanitizer an overflow of a static and of a dynamic __shared__ array,
// of an array in a thread's own frame and of a device allocation is reported, and so is a host
// read of device memory.
// Each runs planted.cpp's binary in a child process and reads its report; the fixed twins must
// run clean. In a build without that sanitizer the proof is skipped (the asan and tsan presets
// run them).
#include <gtest/gtest.h>

#include <sys/wait.h>
#include <array>
#include <cstdio>
#include <initializer_list>
#include <string>

namespace {

struct Child {
  int status;
  std::string output;
};

Child run_planted(const std::string& which) {
  // UBSan (on in the asan preset) would stop at the out-of-bounds index first; the proof is about
  // AddressSanitizer's report, so UBSan only notes it here.
  std::string cmd =
      "UBSAN_OPTIONS=halt_on_error=0 " + std::string(SIMT_PLANTED_BIN) + " " + which + " 2>&1";
  FILE* pipe = popen(cmd.c_str(), "r");
  if (!pipe) return {-1, "popen failed"};
  std::string out;
  std::array<char, 4096> buf;
  while (std::size_t n = fread(buf.data(), 1, buf.size(), pipe)) out.append(buf.data(), n);
  int status = pclose(pipe);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status), out};
}

#if defined(__SANITIZE_THREAD__)
constexpr bool kTsan = true;
#else
constexpr bool kTsan = false;
#endif
#if defined(__SANITIZE_ADDRESS__)
constexpr bool kAsan = true;
#else
constexpr bool kAsan = false;
#endif

// The planted case `bad` is reported as a data race whose report names each of `where`; its
// fixed twin runs clean.
void expect_tsan_race(const std::string& bad_case, const std::string& fixed_case,
                      std::initializer_list<const char*> where) {
  Child bad = run_planted(bad_case);
  EXPECT_NE(bad.status, 0) << bad.output;
  EXPECT_NE(bad.output.find("WARNING: ThreadSanitizer: data race"), std::string::npos)
      << bad.output;
  for (const char* w : where) EXPECT_NE(bad.output.find(w), std::string::npos) << w << bad.output;
  Child good = run_planted(fixed_case);
  EXPECT_EQ(good.status, 0) << good.output;
  EXPECT_EQ(good.output.find("ThreadSanitizer"), std::string::npos) << good.output;
}

TEST(SimtDetectors, TsanReportsARemovedSyncthreadsAsARace) {
  if (!kTsan) GTEST_SKIP() << "needs ThreadSanitizer: run in the tsan preset";
  expect_tsan_race("race", "race_fixed", {"planted_race_kernel", "planted.cpp"});
}

// A warp collective orders the lanes that take part in it and no one else: __syncwarp used where
// another warp's data is read is a race, and the same read within the warp is not.
TEST(SimtDetectors, TsanReportsASyncwarpThatOtherWarpsRelyOn) {
  if (!kTsan) GTEST_SKIP() << "needs ThreadSanitizer: run in the tsan preset";
  expect_tsan_race("warp_race", "warp_race_fixed", {"planted_warp_race_kernel", "planted.cpp"});
}

TEST(SimtDetectors, TsanReportsAMissingBarrierAfterAnAsyncCopy) {
  if (!kTsan) GTEST_SKIP() << "needs ThreadSanitizer: run in the tsan preset";
  expect_tsan_race("async_race", "async_race_fixed", {"planted_async_race_kernel", "async_wait"});
}

// Nothing orders the blocks of a grid: a plain += into one total from every block is a race, and
// atomicAdd is not.
TEST(SimtDetectors, TsanReportsARaceBetweenBlocks) {
  if (!kTsan) GTEST_SKIP() << "needs ThreadSanitizer: run in the tsan preset";
  expect_tsan_race("block_race", "block_race_fixed", {"planted_block_race_kernel", "planted.cpp"});
}

// Blocks two apart race and neighbours do not: seen because the bit of the block index that
// picks a block's worker turns from launch to launch (a split by parity alone never sees it).
TEST(SimtDetectors, TsanReportsARaceBetweenBlocksTwoApart) {
  if (!kTsan) GTEST_SKIP() << "needs ThreadSanitizer: run in the tsan preset";
  expect_tsan_race("stride_race", "stride_race_fixed",
                   {"planted_stride_race_kernel", "planted.cpp"});
}

// The planted case `bad` is reported by AddressSanitizer as `report` in `kernel`; its fixed twin,
// if it has one, runs clean.
void expect_asan_report(const std::string& bad_case, const std::string& fixed_case,
                        const std::string& report, const std::string& kernel) {
  Child bad = run_planted(bad_case);
  EXPECT_NE(bad.status, 0) << bad.output;
  EXPECT_NE(bad.output.find("AddressSanitizer: " + report), std::string::npos) << bad.output;
  EXPECT_NE(bad.output.find(kernel), std::string::npos) << bad.output;
  if (fixed_case.empty()) return;
  Child good = run_planted(fixed_case);
  EXPECT_EQ(good.status, 0) << good.output;
  EXPECT_EQ(good.output.find("AddressSanitizer"), std::string::npos) << good.output;
}

TEST(SimtDetectors, AsanReportsAStaticSharedOverflow) {
  if (!kAsan) GTEST_SKIP() << "needs AddressSanitizer: run in the asan preset";
  expect_asan_report("static_overflow", "", "global-buffer-overflow",
                     "planted_static_overflow_kernel");
}

TEST(SimtDetectors, AsanReportsADynamicSharedOverflow) {
  if (!kAsan) GTEST_SKIP() << "needs AddressSanitizer: run in the asan preset";
  expect_asan_report("dynamic_overflow", "overflow_fixed", "heap-buffer-overflow",
                     "planted_dynamic_overflow_kernel");
}

// simt runs each CUDA thread on a fiber's stack, and tells ASan of every switch: an overflow of
// an array in a thread's own frame is still reported.
TEST(SimtDetectors, AsanReportsAThreadLocalArrayOverflow) {
  if (!kAsan) GTEST_SKIP() << "needs AddressSanitizer: run in the asan preset";
  expect_asan_report("local_overflow", "local_overflow_fixed", "stack-buffer-overflow",
                     "planted_local_overflow_kernel");
}

// simt's device memory stands for a GPU's, which the host cannot touch: a launcher that reads
// a kernel's result through the device pointer is reported (a GPU would fault), and the same read
// through the backend's copy is not.
TEST(SimtDetectors, AsanReportsAHostReadOfDeviceMemory) {
  if (!kAsan) GTEST_SKIP() << "needs AddressSanitizer: run in the asan preset";
  expect_asan_report("host_read", "host_read_fixed", "use-after-poison", "launcher_reads_result");
  // The report's allocation stack says whose memory it is.
  EXPECT_NE(run_planted("host_read").output.find("simt::device_malloc"), std::string::npos);
}

// Device allocations are of exactly the size asked for: a kernel's write one element past the
// end is reported, not absorbed by padding.
TEST(SimtDetectors, AsanReportsAKernelOverrunOfDeviceMemory) {
  if (!kAsan) GTEST_SKIP() << "needs AddressSanitizer: run in the asan preset";
  expect_asan_report("device_overflow", "device_overflow_fixed", "heap-buffer-overflow",
                     "planted_fill_kernel");
}

}  // namespace
