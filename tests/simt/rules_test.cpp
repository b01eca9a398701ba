// The rules simt enforces: a barrier that cannot complete, a warp collective whose mask leaves out
// its caller, an mma.sync without its whole warp or with an operand that is not tf32, a cp.async
// never waited for or misaligned, and an invalid launch each fail fast with a message naming the
// kernel, instead of hanging or running on; so does a launch handed a host pointer; new device
// memory is garbage. Compiled for simt only:
// on a GPU these are undefined behaviour. Run: ctest -R SimtRules
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>

#include "common/async_copy.cuh"
#include "common/backend.h"
#include "common/cuda.cuh"
#include "common/mma.cuh"
#include "tests/common/buffer.h"
#include "tests/common/mapped.h"

namespace {

using memlayers::launch_kernel;

// Each thread of a grid writes its own element: blocks that wrote the same one would race.
__device__ unsigned global_thread() { return blockIdx.x * blockDim.x + threadIdx.x; }

__global__ void divergent_barrier_kernel(int* out) {
  if (threadIdx.x < 16) {
    __syncthreads();
    out[global_thread()] = 1;
  } else {
    __syncthreads();
    out[global_thread()] = 2;
  }
}

__global__ void barrier_vs_shuffle_kernel(int* out) {
  int v = static_cast<int>(threadIdx.x);
  if (threadIdx.x == 0) {
    __syncthreads();  // lane 0 waits here while its warp waits for it in the shuffle
  } else {
    v = __shfl_sync(0xffffffffu, v, 0);
  }
  out[global_thread()] = v;
}

__global__ void mask_excludes_caller_kernel(int* out) {
  out[threadIdx.x] = __shfl_sync(0x1u, 5, 0);  // lanes other than 0 are not in the mask
}

__global__ void trap_kernel(int* out) {
  if (threadIdx.x == 3) __trap();
  out[threadIdx.x] = 1;
}

__global__ void partial_barrier_kernel(int* out) {
  __shared__ int s[64];
  s[threadIdx.x] = static_cast<int>(threadIdx.x);
  if (threadIdx.x % 2) return;  // odd threads leave; the barrier counts only those that stay
  __syncthreads();
  out[global_thread()] = s[threadIdx.x + 1 < 64 ? threadIdx.x + 1 : 0];
}

__global__ void partial_warp_mma_kernel(int* out) {
  float d[4] = {};
  const uint32_t a[4] = {}, b[2] = {};
  mma_bf16_m16n8k16(d, a, b);  // a block of 16 threads: half a warp
  out[threadIdx.x] = static_cast<int>(d[0]);
}

__global__ void unrounded_tf32_kernel(int* out) {
  float d[4] = {};
  const uint32_t one = 0x3f800000u;  // 1.0: a tf32 value
  uint32_t a[4] = {one, one, one, one}, b[2] = {one, one};
  if (threadIdx.x == 5) b[1] = 0x3f800001u;  // 1 + 2⁻²³: needs fp32's low bits
  mma_tf32_m16n8k8(d, a, b);
  out[threadIdx.x] = static_cast<int>(d[0]);
}

alignas(16) const float kSource[8] = {1.f, 2.f, 3.f, 4.f, 5.f, 6.f, 7.f, 8.f};

// One thread, two groups: what the shared words hold before any wait, after waiting for the
// older group and after waiting for both.
__global__ void async_copy_visibility_kernel(int* out) {
  alignas(16) __shared__ float s[8];
  cp_async_16(s, kSource);
  cp_async_commit();
  cp_async_16(s + 4, kSource + 4, 8);  // two floats, then zeros
  cp_async_commit();
  out[0] = __float_as_int(s[0]);
  cp_async_wait<1>();
  out[1] = __float_as_int(s[0]);
  out[2] = __float_as_int(s[4]);
  cp_async_wait<0>();
  for (int i = 0; i < 4; ++i) out[3 + i] = __float_as_int(s[4 + i]);
}

__global__ void async_copy_never_waited_kernel(int* out) {
  alignas(16) __shared__ float s[4];
  cp_async_16(s, kSource);
  cp_async_commit();
  out[threadIdx.x] = 1;
}

__global__ void async_copy_misaligned_kernel(int* out) {
  alignas(16) __shared__ float s[8];
  cp_async_16(s + 1, kSource);
  cp_async_wait<0>();
  out[0] = 1;
}

__global__ void async_copy_oversize_kernel(int* out) {
  alignas(16) __shared__ float s[4];
  cp_async_16(s, kSource, 20);
  cp_async_wait<0>();
  out[0] = 1;
}

// The message of a launch's refusal, or "" if it ran.
template <class Launch>
std::string refusal(Launch&& launch) {
  try {
    launch();
  } catch (const memlayers::Error& e) {
    return e.what();
  }
  return "";
}

std::string launch_error(void (*kernel)(int*), const char* name, dim3 grid, dim3 block,
                         std::size_t smem = 0) {
  std::vector<int> out(4096, 0);
  const memlayers::test::MappedHost mapped(out);
  return refusal([&] { launch_kernel(name, kernel, grid, block, smem, nullptr, out.data()); });
}

TEST(SimtRules, DivergentSyncthreadsFailsFastNamingTheKernel) {
  std::string msg = launch_error(divergent_barrier_kernel, "divergent_barrier_kernel", 1, 32);
  EXPECT_NE(msg.find("divergent_barrier_kernel"), std::string::npos) << msg;
  EXPECT_NE(msg.find("divergent __syncthreads"), std::string::npos) << msg;
  EXPECT_NE(msg.find("rules_test.cpp"), std::string::npos) << msg;
}

TEST(SimtRules, BarrierThatSomeThreadsNeverReachIsADeadlock) {
  std::string msg = launch_error(barrier_vs_shuffle_kernel, "barrier_vs_shuffle_kernel", 2, 32);
  EXPECT_NE(msg.find("barrier_vs_shuffle_kernel"), std::string::npos) << msg;
  EXPECT_NE(msg.find("deadlock"), std::string::npos) << msg;
}

TEST(SimtRules, WarpMaskMustIncludeTheCaller) {
  std::string msg = launch_error(mask_excludes_caller_kernel, "mask_excludes_caller_kernel", 1, 32);
  EXPECT_NE(msg.find("excludes itself"), std::string::npos) << msg;
}

TEST(SimtRules, TrapStopsTheKernelWithItsLocation) {
  std::string msg = launch_error(trap_kernel, "trap_kernel", 1, 8);
  EXPECT_NE(msg.find("__trap"), std::string::npos) << msg;
  EXPECT_NE(msg.find("trap_kernel"), std::string::npos) << msg;
}

TEST(SimtRules, MmaNeedsTheWholeWarp) {
  std::string msg = launch_error(partial_warp_mma_kernel, "partial_warp_mma_kernel", 1, 16);
  EXPECT_NE(msg.find("partial_warp_mma_kernel"), std::string::npos) << msg;
  EXPECT_NE(msg.find("mma.sync needs all 32 lanes"), std::string::npos) << msg;
  EXPECT_NE(msg.find("16,17"), std::string::npos) << msg;
}

TEST(SimtRules, Tf32OperandsMustBeRounded) {
  std::string msg = launch_error(unrounded_tf32_kernel, "unrounded_tf32_kernel", 1, 32);
  EXPECT_NE(msg.find("unrounded_tf32_kernel"), std::string::npos) << msg;
  EXPECT_NE(msg.find("lane 5 passed the operand 0x3f800001"), std::string::npos) << msg;
  EXPECT_NE(msg.find("tf32_round"), std::string::npos) << msg;
}

// simt's cp.async lands at the wait that completes its group: before it the destination holds
// garbage (all-ones bytes), so a kernel that reads too early fails its tests.
TEST(SimtRules, AsyncCopyLandsAtTheWaitForItsGroup) {
  std::vector<int> out(8, 0);
  const memlayers::test::MappedHost mapped(out);
  launch_kernel("async_copy_visibility_kernel", async_copy_visibility_kernel, 1, 1, 0, nullptr,
                out.data());
  const auto bits = [](float f) { return std::bit_cast<int>(f); };
  EXPECT_EQ(out[0], -1) << "visible before its wait";
  EXPECT_EQ(out[1], bits(1.f)) << "not landed at the wait for its group";
  EXPECT_EQ(out[2], -1) << "the younger group landed at the wait for the older one";
  EXPECT_EQ(out[3], bits(5.f));
  EXPECT_EQ(out[4], bits(6.f));
  EXPECT_EQ(out[5], 0) << "the bytes past src_bytes are zeros";
  EXPECT_EQ(out[6], 0);
}

TEST(SimtRules, AsyncCopiesMustBeWaitedForAndAligned) {
  std::string msg = launch_error(async_copy_never_waited_kernel, "async_copy_never_waited", 1, 4);
  EXPECT_NE(msg.find("async_copy_never_waited"), std::string::npos) << msg;
  EXPECT_NE(msg.find("ended with 1 cp.async copies it never waited for"), std::string::npos) << msg;
  msg = launch_error(async_copy_misaligned_kernel, "async_copy_misaligned", 1, 1);
  EXPECT_NE(msg.find("must be 16-byte aligned"), std::string::npos) << msg;
  msg = launch_error(async_copy_oversize_kernel, "async_copy_oversize", 1, 1);
  EXPECT_NE(msg.find("cp.async of 20 source bytes; accepted 0..16"), std::string::npos) << msg;
}

TEST(SimtRules, InvalidLaunchesAreRejected) {
  EXPECT_NE(launch_error(trap_kernel, "k", 1, 1025).find("accepted 1..1024"), std::string::npos);
  EXPECT_NE(launch_error(trap_kernel, "k", 1, dim3(0)).find("invalid launch"), std::string::npos);
  EXPECT_NE(launch_error(trap_kernel, "k", dim3(0), 32).find("grid"), std::string::npos);
  EXPECT_NE(launch_error(trap_kernel, "k", 1, 32, 300 * 1024).find("shared memory"),
            std::string::npos);
}

TEST(SimtRules, ThreadsThatReturnDropOutOfTheBarrier) {
  std::vector<int> out(3 * 64, -1);
  const memlayers::test::MappedHost mapped(out);
  launch_kernel("partial_barrier_kernel", partial_barrier_kernel, dim3(3), dim3(64), 0, nullptr,
                out.data());
  for (int b = 0; b < 3; ++b) {
    for (int t = 0; t < 64; t += 2)
      EXPECT_EQ(out[64 * b + t], t + 1) << "block " << b << " thread " << t;
    for (int t = 1; t < 64; t += 2)
      EXPECT_EQ(out[64 * b + t], -1) << "block " << b << " thread " << t;
  }
}

// A GPU's new allocations hold stale data; simt's hold all-ones bytes (NaN as floats), so a kernel
// that reads scratch or a buffer before writing it fails. 4 MiB each: past malloc's mmap threshold,
// where a fresh allocation would otherwise be the OS's zero pages and such a read would pass.
TEST(SimtRules, NewDeviceMemoryIsGarbage) {
  constexpr std::size_t kFloats = std::size_t(1) << 20;
  const auto all_nan = [](const float* p) {
    return std::all_of(p, p + kFloats, [](float x) { return std::isnan(x); });
  };
  memlayers::dev::Buffer<float> scratch(kFloats, nullptr);  // a launcher's scratch
  const memlayers::Memory& mem = *memlayers::backend_info(memlayers::Backend::simt).memory;
  void* buffer = mem.alloc(kFloats * sizeof(float));  // a test's or the harness's buffer
  {
    simt::DeviceAccess look;  // the test inspects device memory as a kernel would
    EXPECT_TRUE(all_nan(scratch.get()));
    EXPECT_TRUE(all_nan(static_cast<const float*>(buffer)));
  }
  mem.release(buffer);
}

// A kernel handed a host pointer would fault on a GPU: simt refuses the launch, naming the kernel
// and the argument, unless the host memory is registered for the device (as cudaHostRegister).
// Device memory is accepted anywhere inside an allocation, up to one past its end.
TEST(SimtRules, AKernelHandedAHostPointerIsRefused) {
  std::vector<int> host(64, -1);
  const std::string msg = refusal([&] {
    launch_kernel("partial_barrier_kernel", partial_barrier_kernel, dim3(1), dim3(64), 0, nullptr,
                  host.data());
  });
  EXPECT_NE(msg.find("kernel partial_barrier_kernel: pointer argument 0"), std::string::npos)
      << msg;
  EXPECT_NE(msg.find("neither device memory nor host memory registered"), std::string::npos) << msg;
  EXPECT_EQ(host[0], -1) << "the kernel ran";
  {
    const simt::HostRegistration mapped(host.data(), host.size() * sizeof(int));
    launch_kernel("partial_barrier_kernel", partial_barrier_kernel, dim3(1), dim3(64), 0, nullptr,
                  host.data());
    EXPECT_EQ(host[0], 1);
  }
  EXPECT_NE(simt::launch_pointer_problem(host.data()), "") << "registration outlived its object";

  const memlayers::Memory& mem = *memlayers::backend_info(memlayers::Backend::simt).memory;
  auto* d = static_cast<int*>(mem.alloc(64 * sizeof(int)));
  EXPECT_EQ(simt::launch_pointer_problem(d), "");
  EXPECT_EQ(simt::launch_pointer_problem(d + 17), "");
  EXPECT_EQ(simt::launch_pointer_problem(d + 64), "") << "one past the end";
  EXPECT_NE(simt::launch_pointer_problem(d + 65), "");
  EXPECT_EQ(simt::launch_pointer_problem(nullptr), "");
  mem.release(d);
  EXPECT_NE(simt::launch_pointer_problem(d), "") << "freed memory is no longer the device's";
}

// Pointers inside a struct argument are checked too (simt/fields.h): an aggregate's field by
// field, nested structs and std::array included, without the struct listing them; a class with
// constructors lists its own with device_pointers, found by argument-dependent lookup.
struct Out {
  int* p;
};
struct Args {  // an aggregate, as the kernels' argument structs and functors are
  int n;
  float scale;
  std::array<const float*, 2> in;
  Out out;
};
class OutRef {  // not an aggregate: lists its pointer
 public:
  explicit OutRef(int* p) : p_(p) {}
  __device__ int* get() const { return p_; }
  friend std::array<const void*, 1> device_pointers(const OutRef& o) { return {o.p_}; }

 private:
  int* p_;
};
__global__ void struct_argument_kernel(Args a) { a.out.p[threadIdx.x] = a.n; }
__global__ void declared_argument_kernel(OutRef o) { o.get()[threadIdx.x] = 1; }

// What fields.h binds: both counts of an aggregate's fields agree, or it is not walked.
struct WithArray {  // brace elision lets the array take several bare initializers
  float v[2];
  int* p;
};
struct WithBf16 {  // __nv_bfloat16 has constructors: it refuses a braced initializer
  int* p;
  __nv_bfloat16 h;
};
static_assert(simt::detail::bindable_fields<Args>() == 4);
static_assert(simt::detail::bindable_fields<Out>() == 1);
static_assert(simt::detail::bindable_fields<WithArray>() == 0);
static_assert(simt::detail::bindable_fields<WithBf16>() == 0);
static_assert(simt::detail::bindable_fields<OutRef>() == 0);

TEST(SimtRules, AHostPointerInsideAStructIsRefused) {
  const memlayers::Memory& mem = *memlayers::backend_info(memlayers::Backend::simt).memory;
  const memlayers::test::DeviceBuffer in_buf(mem, 64 * sizeof(float)),
      out_buf(mem, 32 * sizeof(int));
  const auto* in = in_buf.as<float>();
  auto* out = out_buf.as<int>();
  std::vector<int> host(32, -1);
  std::vector<float> host_in(64);
  auto launch = [](const Args& a) {
    return refusal([&] {
      launch_kernel("struct_argument_kernel", struct_argument_kernel, 1, 32, 0, nullptr, a);
    });
  };
  // Device pointers throughout (and a null one): it runs.
  EXPECT_EQ(launch(Args{7, 1.f, {in, nullptr}, Out{out}}), "");
  // A host pointer in a nested struct, or in a std::array: refused before the kernel runs, with
  // its rank among the argument's pointers (in[0], in[1], out.p).
  const std::pair<Args, std::string> refused[] = {
      {Args{7, 1.f, {in, in}, Out{host.data()}}, "its pointer 2 (counted from 0 in field order)"},
      {Args{7, 1.f, {in, host_in.data()}, Out{out}}, "its pointer 1 (counted"}};
  for (const auto& [a, which] : refused) {
    const std::string msg = launch(a);
    EXPECT_NE(msg.find("kernel struct_argument_kernel: argument 0, " + which), std::string::npos)
        << msg;
    EXPECT_NE(msg.find("is neither device memory nor host memory registered"), std::string::npos)
        << msg;
  }
  EXPECT_EQ(host[0], -1) << "the kernel ran";
  {
    const memlayers::test::MappedHost mapped(host);
    EXPECT_EQ(launch(Args{7, 1.f, {in, in}, Out{host.data()}}), "");
    EXPECT_EQ(host[31], 7);
  }

  const std::string msg = refusal([&] {
    launch_kernel("declared_argument_kernel", declared_argument_kernel, 1, 32, 0, nullptr,
                  OutRef(host.data()));
  });
  EXPECT_NE(msg.find("kernel declared_argument_kernel: argument 0, its pointer 0 "),
            std::string::npos)
      << msg;
  const memlayers::test::MappedHost mapped(host);
  launch_kernel("declared_argument_kernel", declared_argument_kernel, 1, 32, 0, nullptr,
                OutRef(host.data()));
  EXPECT_EQ(host[31], 1);
}

// Launched twice, the failing grid of 4 blocks splits both ways between ThreadSanitizer's two
// workers (by bit 0 of the block index, then bit 1), so once the worker of blocks 2 and 3 waits
// for a turn that the failure in block 0 skips.
TEST(SimtRules, TheRuntimeRecoversAfterAFailedKernel) {
  for (int launch = 0; launch < 2; ++launch)
    ASSERT_NE(launch_error(divergent_barrier_kernel, "divergent_barrier_kernel", 4, 64), "");
  std::vector<int> out(64, -1);
  const memlayers::test::MappedHost mapped(out);
  launch_kernel("partial_barrier_kernel", partial_barrier_kernel, dim3(1), dim3(64), 0, nullptr,
                out.data());
  EXPECT_EQ(out[0], 1);
}

}  // namespace
