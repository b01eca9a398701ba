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
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include "common/async_copy.cuh"
#include "common/backend.h"
#include "common/cuda.cuh"
#include "embbag/embbag.h"
#include "pk_topk/pk_topk.h"
#include "tests/common/buffer.h"
#include "tests/common/mapped.h"
#include "tests/common/random.h"

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
using memlayers::embbag::Bwd;
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

// True when the kernel source declares the access at `where` (file:line:column) partial: a
// comment "partial sectors: <why>" on its line or the line above (a gather, a run that starts
// anywhere).
bool declared_partial(const std::string& where) {
  const auto colon = where.rfind(':', where.rfind(':') - 1);
  const std::string file = where.substr(0, colon);
  const int line = std::stoi(where.substr(colon + 1));
  std::ifstream in(file);
  std::string text, above;
  for (int i = 1; std::getline(in, text); ++i) {
    if (i == line)
      return text.find("partial sectors:") != std::string::npos ||
             above.find("partial sectors:") != std::string::npos;
    above = text;
  }
  ADD_FAILURE() << "cannot read line " << line << " of " << file;
  return false;
}

// Every counted access either uses all the bytes of the sectors it touches, or is a broadcast
// (one sector a request: every lane reading the same index or weight), or is declared partial in
// the kernel source (declared_partial). `widened`: the stores of a forward whose lanes hold 8
// bf16 rows' columns as 32 bytes of fp32, two 16-byte stores 32 bytes apart, each filling half
// of its sectors.
void expect_whole_sectors(const std::vector<simt::AccessSite>& sites, bool widened = false) {
  ASSERT_FALSE(sites.empty()) << "nothing counted";
  for (const auto& s : sites) {
    SCOPED_TRACE(s.kernel + " " + s.where + (s.store ? " store" : " load"));
    if (s.store && widened) {
      EXPECT_DOUBLE_EQ(s.efficiency(), 0.5);
    } else if (s.sectors_per_request() != 1.0 && s.efficiency() != 1.0) {
      EXPECT_TRUE(declared_partial(s.where))
          << s.sectors_per_request() << " sectors a request, " << 100 * s.efficiency()
          << "% of them used, and the source does not say why (\"partial sectors:\")";
    }
  }
}

template <class V>
std::string describe(const V& v, const std::string& shape) {
  return v.name + " " + shape;
}

TEST(SimtAccess, EmbbagForwardsUseEverySectorTheyTouch) {
  const Shape shapes[] = {{DType::f32, DType::f32, 1024},
                          {DType::bf16, DType::bf16, 1024},
                          {DType::f32, DType::bf16, 1024},
                          {DType::bf16, DType::f32, 1024},
                          {DType::f32, DType::f32, 96}};
  int checked = 0;
  for (const auto* v : memlayers::Registry<Fwd>::of(memlayers::Backend::simt)) {
    for (const Shape& shape : shapes) {
      SCOPED_TRACE(v->name + " " + std::string(memlayers::to_string(shape.values)) + " rows, " +
                   std::string(memlayers::to_string(shape.out)) + " out, dim " +
                   std::to_string(shape.dim));
      const auto sites = forward_sites(*v, shape);
      expect_whole_sectors(sites, shape.values == DType::bf16 && shape.out == DType::f32);
      const simt::AccessSite* rows = nullptr;
      int stores = 0;
      for (const auto& s : sites) {
        stores += s.store;
        if (!s.store && (!rows || s.sectors > rows->sectors)) rows = &s;
      }
      ASSERT_NE(rows, nullptr);
      if (v->name == "v1_thread_per_elem") continue;  // scalar loads, plain stores: the baseline
      EXPECT_GT(stores, 0) << "the output stores carry no cache hint, so none was counted";
      // The rows: a warp request reads 32 lanes' 16 bytes, or the whole row when shorter.
      const int64_t row_bytes =
          shape.dim * static_cast<int64_t>(memlayers::dtype_size(shape.values));
      EXPECT_DOUBLE_EQ(rows->sectors_per_request(), std::min<int64_t>(512, row_bytes) / 32.0);
      ++checked;
    }
  }
  EXPECT_GE(checked, 3 * 5);  // v2, v3 and v4 at least, every shape
}

// Every site a simt backward counts: batch 8, k 32, 512 rows (so rows repeat), dV dense and
// compact, dw.
std::vector<simt::AccessSite> backward_sites(const memlayers::Variant<Bwd::Params>& v, DType values,
                                             int64_t dim) {
  const int64_t batch = 8, k = 32, rows = 512, n = batch * k;
  const auto& mem = memlayers::simt_memory();
  std::vector<unsigned char> table(rows * dim * memlayers::dtype_size(values), 0x3f);
  std::vector<int64_t> idx(n);
  for (int64_t i = 0; i < n; ++i) idx[i] = i * 977 % rows;
  const DeviceBuffer dv(mem, table), di(mem, idx), dw(mem, std::vector<float>(n, 0.5f));
  const DeviceBuffer dy(mem, std::vector<float>(batch * dim, 0.25f));
  const DeviceBuffer gw(mem, n * sizeof(float)), dense(mem, rows * dim * sizeof(float));
  const DeviceBuffer unique(mem, n * sizeof(int64_t)), compact(mem, n * dim * sizeof(float));
  const DeviceBuffer count(mem, sizeof(int64_t));
  Bwd::Params p;
  p.values = dv.get();
  p.indices = di.get();
  p.weights = dw.as<float>();
  p.grad_out = dy.as<float>();
  p.batch = batch;
  p.k = k;
  p.dim = dim;
  p.num_rows = rows;
  p.values_dtype = values;
  p.grad_weights = gw.as<float>();
  p.grad_values_dense = dense.as<float>();
  if (v.name != "v1_bwd_atomic") {  // dense only
    p.unique_rows = unique.as<int64_t>();
    p.grad_values_compact = compact.as<float>();
    p.num_unique = count.as<int64_t>();
  }
  simt::AccessCounter counter;
  memlayers::Registry<Bwd>::run(v, p);
  mem.synchronize();
  return counter.sites();
}

TEST(SimtAccess, EmbbagBackwardsUseEverySectorTheyTouch) {
  const std::pair<DType, int64_t> shapes[] = {
      {DType::f32, 1024}, {DType::bf16, 1024}, {DType::f32, 96}};
  int sorted = 0;
  for (const auto* v : memlayers::Registry<Bwd>::of(memlayers::Backend::simt))
    for (const auto& [values, dim] : shapes) {
      SCOPED_TRACE(v->name + " " + std::string(memlayers::to_string(values)) + " dim " +
                   std::to_string(dim));
      const auto sites = backward_sites(*v, values, dim);
      expect_whole_sectors(sites);
      // The sorted variants' dV rows are stores the counter sees.
      if (v->name.find("sorted") != std::string::npos) {
        ++sorted;
        EXPECT_TRUE(std::any_of(sites.begin(), sites.end(), [](const auto& s) { return s.store; }));
      }
    }
  EXPECT_GE(sorted, 2 * 3);
}

// Every site a simt pk_topk forward and backward count: batch 16, 2 heads, 128 sub-keys a half,
// k_dim 64, k 8.
TEST(SimtAccess, PkTopkVariantsUseEverySectorTheyTouch) {
  namespace pk = memlayers::pk_topk;
  const int64_t batch = 16, heads = 2, n_keys = 128, k_dim = 64, k = 8;
  const auto& mem = memlayers::simt_memory();
  memlayers::test::Rng rng(11);
  std::vector<float> q(batch * heads * k_dim), keys(heads * n_keys * k_dim / 2);
  for (auto& x : q) x = rng.signed_unit();
  for (auto& x : keys) x = rng.signed_unit();
  std::vector<int64_t> idx(batch * heads * k);
  for (std::size_t i = 0; i < idx.size(); ++i)
    idx[i] = static_cast<int64_t>(i * 7919 % (n_keys * n_keys));
  const DeviceBuffer dq_in(mem, q), dk1(mem, keys), dk2(mem, keys), di(mem, idx);
  const DeviceBuffer ds(mem, std::vector<float>(batch * heads * k, 0.5f));
  const DeviceBuffer scores(mem, batch * heads * k * sizeof(float));
  const DeviceBuffer out_idx(mem, batch * heads * k * sizeof(int64_t));
  int runs = 0;
  for (const DType dtype : {DType::f32, DType::bf16})
    for (const bool norm : {false, true}) {
      const std::string shape = std::string(memlayers::to_string(dtype)) + (norm ? " qk-norm" : "");
      pk::FwdParams f;
      f.queries = dq_in.get();
      f.keys1 = dk1.get();
      f.keys2 = dk2.get();
      f.scores = scores.as<float>();
      f.indices = out_idx.get();
      f.batch = batch, f.heads = heads, f.n_keys = n_keys, f.k_dim = k_dim, f.k = k;
      f.dtype = dtype;
      f.qk_norm = norm;
      for (const auto* v : memlayers::Registry<pk::Fwd>::of(memlayers::Backend::simt)) {
        if (!v->supports(f).empty()) continue;
        SCOPED_TRACE(describe(*v, shape));
        simt::AccessCounter counter;
        memlayers::Registry<pk::Fwd>::run(*v, f);
        mem.synchronize();
        const auto sites = counter.sites();
        expect_whole_sectors(sites);
        ++runs;
      }
      pk::BwdParams b;
      b.queries = dq_in.get();
      b.keys1 = dk1.get();
      b.keys2 = dk2.get();
      b.indices = di.get();
      b.grad_scores = ds.as<float>();
      b.batch = batch, b.heads = heads, b.n_keys = n_keys, b.k_dim = k_dim, b.k = k;
      b.dtype = dtype;
      b.qk_norm = norm;
      const DeviceBuffer gq(mem, q.size() * sizeof(float));
      const DeviceBuffer g1(mem, keys.size() * sizeof(float)), g2(mem, keys.size() * sizeof(float));
      b.grad_queries = gq.as<float>();
      b.grad_keys1.dense = g1.as<float>();
      b.grad_keys2.dense = g2.as<float>();
      for (const auto* v : memlayers::Registry<pk::Bwd>::of(memlayers::Backend::simt)) {
        SCOPED_TRACE(describe(*v, shape));
        simt::AccessCounter counter;
        memlayers::Registry<pk::Bwd>::run(*v, b);
        mem.synchronize();
        expect_whole_sectors(counter.sites());
        ++runs;
      }
    }
  EXPECT_GE(runs, 4 * (5 + 2));
}

}  // namespace
