// simt's AccessCounter (simt.h): how many 32-byte sectors a kernel's warp-wide global requests
// touch, and how much of them the lanes asked for. First on small kernels whose answer is known
// (coalesced, strided, misaligned, broadcast, ragged warps, loops, cp.async, stores), then on the
// registered CUDA EmbeddingBag forwards: their loads and output stores must use every byte of
// every sector they touch (half, where a lane's 8 bf16 rows widen to 32 bytes of fp32 output), so
// a change that breaks the coalescing of the op's traffic fails here, without a GPU. Compiled for
// simt only. Run: ctest -R SimtAccess
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "common/async_copy.cuh"
#include "common/backend.h"
#include "common/cuda.cuh"
#include "embbag/embbag.h"
#include "tests/common/buffer.h"
#include "tests/common/mapped.h"

namespace {

using memlayers::launch_kernel;
using memlayers::test::DeviceBuffer;
using memlayers::test::MappedHost;

__device__ unsigned global_thread() { return blockIdx.x * blockDim.x + threadIdx.x; }

__global__ void contiguous_kernel(const float* in, float* out) {
  out[global_thread()] = __ldg(in + global_thread());
}
__global__ void stride_two_kernel(const float* in, float* out) {
  out[global_thread()] = __ldg(in + 2 * global_thread());
}
__global__ void shifted_kernel(const float* in, float* out) {  // one float past a sector
  out[global_thread()] = __ldg(in + 1 + global_thread());
}
__global__ void broadcast_kernel(const float* in, float* out) { out[global_thread()] = __ldg(in); }
__global__ void vector_kernel(const float* in, float* out) {
  const float4 v = __ldg(reinterpret_cast<const float4*>(in) + global_thread());
  out[global_thread()] = v.x + v.y + v.z + v.w;
}
// Four rows a warp: the same line four times, each a request of its own.
__global__ void loop_kernel(const float* in, float* out) {
  float s = 0;
  for (int r = 0; r < 4; ++r) s += __ldcs(in + r * blockDim.x + threadIdx.x);
  out[threadIdx.x] = s;
}
// The same, with a shuffle between the rows: each row's request is after a different collective.
__global__ void shuffled_loop_kernel(const float* in, float* out) {
  float s = 0;
  for (int r = 0; r < 4; ++r)
    s += __shfl_sync(0xffffffffu, 1.f, 0) * __ldcs(in + r * blockDim.x + threadIdx.x);
  out[threadIdx.x] = s;
}
// Lane 0 skips the first pass; the __syncwarp after it puts lane 0's second pass back with the
// second request of the others.
__global__ void skipped_pass_kernel(const float* in, float* out) {
  float s = 0;
  for (int r = 0; r < 2; ++r) {
    if (r > 0 || threadIdx.x != 0) s += __ldcs(in + r * 32 + threadIdx.x);
    __syncwarp();
  }
  out[threadIdx.x] = s;
}
__global__ void async_copy_kernel(const float* in, float* out) {
  alignas(16) __shared__ float s[4 * 64];
  cp_async_16(s + 4 * threadIdx.x, in + 4 * threadIdx.x);
  cp_async_commit();
  cp_async_wait<0>();
  out[threadIdx.x] = s[4 * threadIdx.x];
}
__global__ void streaming_store_kernel(const float* in, float* out) {
  __stcs(out + 2 * threadIdx.x, in[threadIdx.x]);  // every other float
}

// The sites counted while `kernel` runs over one block of `threads` threads.
std::vector<simt::AccessSite> count(void (*kernel)(const float*, float*), const char* name,
                                    unsigned threads) {
  // Device memory: 256-byte aligned, so the sectors counted are the pattern's own.
  const DeviceBuffer in(memlayers::simt_memory(), std::vector<float>(4096, 1.f));
  const DeviceBuffer out(memlayers::simt_memory(), 4096 * sizeof(float));
  simt::AccessCounter counter;
  launch_kernel(name, kernel, dim3(1), dim3(threads), 0, nullptr, in.as<const float>(),
                out.as<float>());
  return counter.sites();
}

// The one site counted, checked for its kernel, direction and totals.
void expect_one(const std::vector<simt::AccessSite>& sites, const char* kernel, bool store,
                uint64_t requests, uint64_t sectors, uint64_t bytes) {
  ASSERT_EQ(sites.size(), 1u);
  const auto& s = sites[0];
  EXPECT_EQ(s.kernel, kernel);
  EXPECT_NE(s.where.find("access_test.cpp:"), std::string::npos) << s.where;
  EXPECT_EQ(s.store, store);
  EXPECT_EQ(s.requests, requests);
  EXPECT_EQ(s.sectors, sectors);
  EXPECT_EQ(s.bytes, bytes);
}

TEST(SimtAccess, ConsecutiveFloatsTouchFourSectorsAWarp) {
  expect_one(count(contiguous_kernel, "contiguous", 64), "contiguous", false, 2, 8, 256);
  const auto s = count(contiguous_kernel, "contiguous", 64)[0];
  EXPECT_DOUBLE_EQ(s.sectors_per_request(), 4.0);
  EXPECT_DOUBLE_EQ(s.efficiency(), 1.0);
}

TEST(SimtAccess, StridedLanesWasteHalfOfEachSector) {
  const auto sites = count(stride_two_kernel, "stride_two", 32);
  expect_one(sites, "stride_two", false, 1, 8, 128);
  EXPECT_DOUBLE_EQ(sites[0].efficiency(), 0.5);
}

TEST(SimtAccess, AShiftedRowTouchesOneSectorMore) {
  const auto sites = count(shifted_kernel, "shifted", 32);
  expect_one(sites, "shifted", false, 1, 5, 128);
  EXPECT_DOUBLE_EQ(sites[0].efficiency(), 0.8);
}

TEST(SimtAccess, ABroadcastIsOneSectorOfWhichFourBytesAreUsed) {
  expect_one(count(broadcast_kernel, "broadcast", 32), "broadcast", false, 1, 1, 4);
}

TEST(SimtAccess, SixteenByteLanesTouchSixteenSectors) {
  const auto sites = count(vector_kernel, "vector", 32);
  expect_one(sites, "vector", false, 1, 16, 512);
  EXPECT_DOUBLE_EQ(sites[0].sectors_per_request(), 16.0);
}

TEST(SimtAccess, APartialWarpIsOneRequestOfItsLanes) {
  // 48 threads: a full warp (4 sectors) and one of 16 lanes (2 sectors).
  expect_one(count(contiguous_kernel, "contiguous", 48), "contiguous", false, 2, 6, 192);
}

TEST(SimtAccess, EachPassOfALoopIsARequest) {
  expect_one(count(loop_kernel, "loop", 32), "loop", false, 4, 16, 512);
  expect_one(count(shuffled_loop_kernel, "shuffled_loop", 32), "shuffled_loop", false, 4, 16, 512);
}

TEST(SimtAccess, ALaneThatSkippedAPassRejoinsItsWarpAtTheNextCollective) {
  // 31 lanes (4 sectors, 124 bytes), then 32 (4 sectors): lane 0's one load is in the second.
  expect_one(count(skipped_pass_kernel, "skipped_pass", 32), "skipped_pass", false, 2, 8, 252);
}

TEST(SimtAccess, AsyncCopiesCountTheirSource) {
  expect_one(count(async_copy_kernel, "async_copy", 64), "async_copy", false, 2, 32, 1024);
}

TEST(SimtAccess, HintedStoresAreCountedAsStores) {
  const auto sites = count(streaming_store_kernel, "streaming_store", 32);
  expect_one(sites, "streaming_store", true, 1, 8, 128);
}

TEST(SimtAccess, NothingIsCountedWithoutACounterAndOneCountsAtATime) {
  std::vector<float> in(64, 1.f), out(64, 0.f);
  const MappedHost mapped(in, out);
  launch_kernel("contiguous", contiguous_kernel, dim3(1), dim3(32), 0, nullptr, in.data(),
                out.data());
  simt::AccessCounter counter;
  EXPECT_TRUE(counter.sites().empty());
  EXPECT_THROW(simt::AccessCounter second, std::logic_error);
  launch_kernel("contiguous", contiguous_kernel, dim3(1), dim3(32), 0, nullptr, in.data(),
                out.data());
  EXPECT_EQ(counter.sites().size(), 1u);
  counter.clear();
  EXPECT_TRUE(counter.sites().empty());
}

// ---- the registered CUDA EmbeddingBag forwards ----

using memlayers::DType;
using memlayers::embbag::Fwd;

struct Shape {
  DType values, out;
  int64_t dim;
};

// Every site a simt forward counts at `shape`: batch 8, k 32, 4096 rows, int64 indices, all in
// device memory (256-byte aligned, as cudaMalloc's).
std::vector<simt::AccessSite> forward_sites(const memlayers::Variant<Fwd::Params>& v,
                                            const Shape& shape) {
  const int64_t batch = 8, k = 32, rows = 4096;
  const auto& mem = memlayers::simt_memory();
  std::vector<unsigned char> values(rows * shape.dim * memlayers::dtype_size(shape.values), 0x3f);
  std::vector<int64_t> idx(batch * k);
  for (std::size_t i = 0; i < idx.size(); ++i) idx[i] = static_cast<int64_t>(i * 977 % rows);
  const DeviceBuffer dv(mem, values), di(mem, idx), dw(mem, std::vector<float>(batch * k, 0.5f));
  const DeviceBuffer dy(mem, batch * shape.dim * memlayers::dtype_size(shape.out));
  Fwd::Params p;
  p.values = dv.get();
  p.indices = di.get();
  p.weights = dw.as<float>();
  p.out = dy.get();
  p.batch = batch;
  p.k = k;
  p.dim = shape.dim;
  p.num_rows = rows;
  p.values_dtype = shape.values;
  p.out_dtype = shape.out;
  simt::AccessCounter counter;
  memlayers::Registry<Fwd>::run(v, p);
  mem.synchronize();
  return counter.sites();
}

TEST(SimtAccess, EmbbagForwardsUseEverySectorTheyTouch) {
  const Shape shapes[] = {{DType::f32, DType::f32, 1024},
                          {DType::bf16, DType::bf16, 1024},
                          {DType::f32, DType::bf16, 1024},
                          {DType::bf16, DType::f32, 1024},
                          {DType::f32, DType::f32, 96}};
  int checked = 0;
  for (const auto* v : memlayers::Registry<Fwd>::of(memlayers::Backend::simt)) {
    if (v->name == "v1_thread_per_elem") continue;  // the baseline: plain loads, not counted
    for (const Shape& shape : shapes) {
      SCOPED_TRACE(v->name + " " + std::string(memlayers::to_string(shape.values)) + " rows, " +
                   std::string(memlayers::to_string(shape.out)) + " out, dim " +
                   std::to_string(shape.dim));
      const auto sites = forward_sites(*v, shape);
      const simt::AccessSite* rows = nullptr;
      int stores = 0;
      for (const auto& s : sites) {
        SCOPED_TRACE(s.where);
        if (s.store) {
          // A lane's 8 bf16 rows make 32 bytes of fp32 output: two 16-byte stores, 32 apart.
          const bool widened = shape.values == DType::bf16 && shape.out == DType::f32;
          EXPECT_DOUBLE_EQ(s.efficiency(), widened ? 0.5 : 1.0);
          ++stores;
        } else {
          EXPECT_DOUBLE_EQ(s.efficiency(), 1.0);
          if (!rows || s.sectors > rows->sectors) rows = &s;
        }
      }
      EXPECT_GT(stores, 0) << "the output stores carry no cache hint, so none was counted";
      ASSERT_NE(rows, nullptr) << "no load counted";
      // The rows: a warp request reads 32 lanes' 16 bytes, or the whole row when shorter.
      const int64_t row_bytes =
          shape.dim * static_cast<int64_t>(memlayers::dtype_size(shape.values));
      EXPECT_DOUBLE_EQ(rows->sectors_per_request(), std::min<int64_t>(512, row_bytes) / 32.0);
      ++checked;
    }
  }
  EXPECT_GE(checked, 3 * 5);  // v2, v3 and v4 at least, every shape
}

}  // namespace
