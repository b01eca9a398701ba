// Planted bugs for the detector proofs (detectors_test.cpp runs this binary in a child process and
// reads its sanitizer report). Each bug has a fixed twin that must run clean, so a proof that
// passes is not just a detector that always fires.
//   simt_planted race|race_fixed|warp_race|warp_race_fixed|async_race|async_race_fixed|
//                block_race|block_race_fixed|stride_race|stride_race_fixed|static_overflow|
//                dynamic_overflow|overflow_fixed|local_overflow|local_overflow_fixed|
//                host_read|host_read_fixed|device_overflow|device_overflow_fixed
#include <cstdio>
#include <cstring>
#include <vector>

#include "common/async_copy.cuh"
#include "common/backend.h"
#include "common/cuda.cuh"
#include "tests/common/mapped.h"

namespace {

using memlayers::launch_kernel;

// A shared-memory neighbour sum with the barrier between the write and the read removed.
__global__ void planted_race_kernel(const float* x, float* out) {
  __shared__ float s[64];
  s[threadIdx.x] = x[threadIdx.x];
  // __syncthreads() belongs here.
  out[threadIdx.x] = s[threadIdx.x] + s[(threadIdx.x + 1) % blockDim.x];
}

__global__ void fixed_race_kernel(const float* x, float* out) {
  __shared__ float s[64];
  s[threadIdx.x] = x[threadIdx.x];
  __syncthreads();
  out[threadIdx.x] = s[threadIdx.x] + s[(threadIdx.x + 1) % blockDim.x];
}

// Two warps; each thread writes its word, its warp syncs (__syncwarp), and it reads a word of the
// other warp: __syncwarp orders a warp's own lanes only, so this is a race (__syncthreads
// belongs here).
__global__ void planted_warp_race_kernel(const float* x, float* out) {
  __shared__ float s[64];
  s[threadIdx.x] = x[threadIdx.x];
  __syncwarp();
  out[threadIdx.x] = s[(threadIdx.x + 32) % 64];
}

// The same, reading a word of its own warp: __syncwarp orders it.
__global__ void fixed_warp_race_kernel(const float* x, float* out) {
  __shared__ float s[64];
  s[threadIdx.x] = x[threadIdx.x];
  __syncwarp();
  out[threadIdx.x] = s[threadIdx.x ^ 1u];
}

// Each thread copies 16 bytes with cp.async, waits for its own copy and reads its neighbour's,
// with the barrier between the wait and the read removed.
__global__ void planted_async_race_kernel(const float* x, float* out) {
  MEMLAYERS_DYNAMIC_SHARED(float, s);
  cp_async_16(s + 4 * threadIdx.x, x + 4 * threadIdx.x);
  cp_async_commit();
  cp_async_wait<0>();
  // __syncthreads() belongs here.
  out[threadIdx.x] = s[4 * ((threadIdx.x + 1) % blockDim.x)];
}

__global__ void fixed_async_race_kernel(const float* x, float* out) {
  MEMLAYERS_DYNAMIC_SHARED(float, s);
  cp_async_16(s + 4 * threadIdx.x, x + 4 * threadIdx.x);
  cp_async_commit();
  cp_async_wait<0>();
  __syncthreads();
  out[threadIdx.x] = s[4 * ((threadIdx.x + 1) % blockDim.x)];
}

// Every block adds its element into one total with a plain read-modify-write: a GPU runs blocks
// side by side and loses updates (atomicAdd belongs here).
__global__ void planted_block_race_kernel(const float* x, float* out) {
  if (threadIdx.x == 0) out[0] += x[blockIdx.x];
}

__global__ void fixed_block_race_kernel(const float* x, float* out) {
  if (threadIdx.x == 0) atomicAdd(out, x[blockIdx.x]);
}

// Blocks b and b + 2, b + 4, … (never neighbours) add into the same total without an atomic:
// only blocks of the same parity race.
__global__ void planted_stride_race_kernel(const float* x, float* out) {
  if (threadIdx.x == 0) out[blockIdx.x % 2] += x[blockIdx.x];
}

__global__ void fixed_stride_race_kernel(const float* x, float* out) {
  if (threadIdx.x == 0) atomicAdd(&out[blockIdx.x % 2], x[blockIdx.x]);
}

// Writes one element past a static __shared__ array (launched with 33 threads).
__global__ void planted_static_overflow_kernel(float* out) {
  __shared__ float s[32];
  s[threadIdx.x] = 1.f;
  __syncthreads();
  out[threadIdx.x] = s[threadIdx.x % 32];
}

// Writes one element past the dynamic shared memory the launch asked for.
__global__ void planted_dynamic_overflow_kernel(float* out, int n) {
  MEMLAYERS_DYNAMIC_SHARED(float, s);
  s[threadIdx.x] = 1.f;  // launched with n + 1 threads, n floats of shared memory
  __syncthreads();
  out[threadIdx.x] = s[threadIdx.x % n];
}

// Writes one element past an array in a thread's own frame (its fiber's stack under simt).
__global__ void planted_local_overflow_kernel(float* out, int n) {
  float local[8];
  for (int i = 0; i < 8; ++i) local[i] = static_cast<float>(i);
  local[n] = 1.f;  // launched with n = 8 (its fixed twin: 7)
  out[threadIdx.x] = local[threadIdx.x % 8];
}

// Each of the first n threads writes its element of out.
__global__ void planted_fill_kernel(float* out, int n) {
  if (static_cast<int>(threadIdx.x) < n) out[threadIdx.x] = 2.f;
}

// A launcher whose kernel writes device memory and which then reads the result on the host: with
// `fixed`, through the backend's copy (cudaMemcpy on a GPU); without, through the device pointer
// itself, which a GPU would fault on.
float launcher_reads_result(bool fixed) {
  const memlayers::Memory& mem = memlayers::simt_memory();
  auto* d = static_cast<float*>(mem.alloc(32 * sizeof(float)));
  launch_kernel("planted_fill_kernel", planted_fill_kernel, 1, 32, 0, nullptr, d, 32);
  float first = 0.f;
  if (fixed)
    mem.to_host(&first, d, sizeof first);
  else
    first = d[0];  // the host dereferences a device pointer
  mem.release(d);
  return first;
}

// A kernel that writes one element past the end of a device allocation of 32 floats (n = 33);
// its fixed twin stays inside (n = 32).
float kernel_overruns_device_memory(bool fixed) {
  const memlayers::Memory& mem = memlayers::simt_memory();
  auto* d = static_cast<float*>(mem.alloc(32 * sizeof(float)));
  launch_kernel("planted_fill_kernel", planted_fill_kernel, 1, 64, 0, nullptr, d, fixed ? 32 : 33);
  float first = 0.f;
  mem.to_host(&first, d, sizeof first);
  mem.release(d);
  return first;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr,
                 "usage: %s race|race_fixed|warp_race|warp_race_fixed|async_race|"
                 "async_race_fixed|block_race|block_race_fixed|stride_race|stride_race_fixed|"
                 "static_overflow|dynamic_overflow|overflow_fixed|local_overflow|"
                 "local_overflow_fixed|host_read|host_read_fixed|device_overflow|"
                 "device_overflow_fixed\n",
                 argv[0]);
    return 2;
  }
  std::vector<float> x(4 * 64, 1.f), out(64, 0.f);  // 16 bytes a thread for the cp.async cases
  // Host buffers the kernels reach as a GPU reaches registered (mapped) host memory.
  const memlayers::test::MappedHost mapped(x, out);
  std::string c = argv[1];
  // ThreadSanitizer keeps a few accesses per 8 bytes of shadow memory, so one launch can miss a
  // race whose accesses were evicted; repeated launches make the report certain in practice.
  constexpr int kLaunches = 50;
  if (c == "race")
    for (int i = 0; i < kLaunches; ++i)
      launch_kernel("planted_race_kernel", planted_race_kernel, 1, 64, 0, nullptr, x.data(),
                    out.data());
  else if (c == "race_fixed")
    for (int i = 0; i < kLaunches; ++i)
      launch_kernel("fixed_race_kernel", fixed_race_kernel, 1, 64, 0, nullptr, x.data(),
                    out.data());
  else if (c == "warp_race" || c == "warp_race_fixed")
    for (int i = 0; i < kLaunches; ++i)
      launch_kernel(c == "warp_race" ? "planted_warp_race_kernel" : "fixed_warp_race_kernel",
                    c == "warp_race" ? planted_warp_race_kernel : fixed_warp_race_kernel, 1, 64, 0,
                    nullptr, x.data(), out.data());
  else if (c == "async_race" || c == "async_race_fixed")
    for (int i = 0; i < kLaunches; ++i)
      launch_kernel(c == "async_race" ? "planted_async_race_kernel" : "fixed_async_race_kernel",
                    c == "async_race" ? planted_async_race_kernel : fixed_async_race_kernel, 1, 64,
                    x.size() * sizeof(float), nullptr, x.data(), out.data());
  else if (c == "block_race" || c == "block_race_fixed")
    for (int i = 0; i < kLaunches; ++i)
      launch_kernel(c == "block_race" ? "planted_block_race_kernel" : "fixed_block_race_kernel",
                    c == "block_race" ? planted_block_race_kernel : fixed_block_race_kernel, 8, 32,
                    0, nullptr, x.data(), out.data());
  else if (c == "stride_race" || c == "stride_race_fixed")
    for (int i = 0; i < kLaunches; ++i)
      launch_kernel(c == "stride_race" ? "planted_stride_race_kernel" : "fixed_stride_race_kernel",
                    c == "stride_race" ? planted_stride_race_kernel : fixed_stride_race_kernel, 8,
                    32, 0, nullptr, x.data(), out.data());
  else if (c == "static_overflow")
    launch_kernel("planted_static_overflow_kernel", planted_static_overflow_kernel, 1, 33, 0,
                  nullptr, out.data());
  else if (c == "dynamic_overflow")
    launch_kernel("planted_dynamic_overflow_kernel", planted_dynamic_overflow_kernel, 1, 33,
                  32 * sizeof(float), nullptr, out.data(), 32);
  else if (c == "local_overflow" || c == "local_overflow_fixed")
    launch_kernel("planted_local_overflow_kernel", planted_local_overflow_kernel, 1, 32, 0, nullptr,
                  out.data(), c == "local_overflow" ? 8 : 7);
  else if (c == "overflow_fixed")
    launch_kernel("planted_dynamic_overflow_kernel", planted_dynamic_overflow_kernel, 1, 32,
                  32 * sizeof(float), nullptr, out.data(), 32);
  else if (c == "host_read" || c == "host_read_fixed")
    out[0] = launcher_reads_result(c == "host_read_fixed");
  else if (c == "device_overflow" || c == "device_overflow_fixed")
    out[0] = kernel_overruns_device_memory(c == "device_overflow_fixed");
  else {
    std::fprintf(stderr, "unknown case '%s'\n", argv[1]);
    return 2;
  }
  std::printf("ran %s: out[0] = %g\n", argv[1], out[0]);
  return 0;
}
