// simt: runs CUDA kernel source on the CPU, for correctness only (DESIGN.md §3), and counts the
// sectors its cache-hinted global accesses touch (AccessCounter, below).
//
// One block at a time on one worker thread (two taking turns under ThreadSanitizer, which then
// sees races between blocks), each CUDA thread a fiber with its own stack, switched
// when it waits (simt.cpp says why, and how the sanitizers see the fibers). __syncthreads is a
// block barrier that records its call site, warp collectives (__shfl*_sync, __ballot_sync,
// __syncwarp) are rendezvous of the lanes in their mask, mma.sync (mma_bf16_m16n8k16,
// mma_tf32_m16n8k8) is a whole-warp rendezvous on PTX's fragment layout, a cp.async copy lands at
// the wait that completes its group, atomics are std::atomic_ref, __shared__ is `static` and
// dynamic shared memory an exact-size heap buffer filled with garbage, so ThreadSanitizer sees a
// missing barrier as a data race at the kernel's own lines and AddressSanitizer sees a shared
// memory overflow. Device memory is out of the host's reach except in kernels and copies, and
// host memory out of the kernels' unless registered (memory.h), as on a GPU. A thread that returns
// drops out of every barrier. A barrier that cannot complete (divergent __syncthreads, all threads
// waiting) throws simt::KernelError naming the kernel; a kernel that makes no progress for
// SIMT_WATCHDOG_SECONDS (default 120) aborts.
//
// Include this header instead of <cuda_runtime.h> when compiling a .cu file with the host
// compiler (kernels/common/cuda.cuh does that when MEMLAYERS_SIMT is defined).
#pragma once

#if defined(__CUDACC__)
#error "simt/simt.h is for the host compiler; nvcc compiles the kernels for the GPU"
#endif

// Execution-space keywords, defined before the toolkit headers so they keep ours.
#define __global__
#define __device__
#define __host__
// `__shared__` is per block: `static` where one worker runs the blocks in turn, `thread_local`
// under ThreadSanitizer, where two workers take turns at them (simt.cpp's kWorkers).
#if defined(__SANITIZE_THREAD__)
#define SIMT_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define SIMT_TSAN 1
#endif
#endif
#if defined(SIMT_TSAN)
#define __shared__ static thread_local
#else
#define __shared__ static
#endif
#define __constant__
#define __managed__
#define __grid_constant__
#define __launch_bounds__(...)

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <vector_functions.h>
#include <vector_types.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <source_location>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "simt/fields.h"
#include "simt/memory.h"

// ---- built-in variables ----
extern thread_local uint3 threadIdx;
extern thread_local uint3 blockIdx;
extern thread_local dim3 blockDim;
extern thread_local dim3 gridDim;
constexpr int warpSize = 32;

namespace simt {

// Thrown by launch() when a kernel breaks a rule simt can see (divergent barrier, deadlock,
// bad launch configuration, a warp collective whose mask excludes its caller).
struct KernelError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// ---- counting a kernel's global memory requests ----
// While an AccessCounter lives, every global access a kernel makes through a cache-hinted load or
// store (__ldg, __ldcg, __ldca, __ldcs, __ldlu, __ldcv, __stcg, __stcs, __stwb, __stwt) or a
// cp.async (cp_async_16) is counted where the kernel source makes it: the lanes of a warp whose
// accesses come from the same source location, the same number of times since the same warp
// collective or block barrier, form one warp-wide request, as the GPU would issue them. Per
// request it counts the 32-byte sectors touched and the distinct bytes the lanes asked for, the
// two numbers behind Nsight Compute's sectors per request: a request of 32 lanes reading 4
// consecutive bytes each touches 4 sectors and uses all of them; lanes 8 bytes apart touch 8 and
// use half. Plain loads and stores (`p[i]`) are not seen: give the accesses that carry a kernel's
// bytes a hint to have them counted. Lanes that reach a location a different number of times
// between two collectives (a ragged inner loop) are grouped by how many times they have, which
// may differ from the GPU's grouping; shapes with whole vectors per lane are exact.
struct AccessSite {
  std::string kernel;     // the launch's name
  std::string where;      // file:line:column of the access in the kernel source
  bool store = false;     // a store (cache-hinted store) or a load (hinted load, cp.async source)
  uint64_t requests = 0;  // warp-wide requests
  uint64_t sectors = 0;   // 32-byte sectors they touched, summed over requests
  uint64_t bytes = 0;     // distinct bytes each request asked for, summed over requests
  double sectors_per_request() const { return requests ? double(sectors) / double(requests) : 0; }
  // The share of the sectors' bytes that the lanes asked for: 1 when nothing fetched is wasted.
  double efficiency() const { return sectors ? double(bytes) / (32.0 * double(sectors)) : 0; }
};

// Counts from construction to destruction; one at a time (a second throws std::logic_error).
class AccessCounter {
 public:
  AccessCounter();
  ~AccessCounter();
  AccessCounter(const AccessCounter&) = delete;
  AccessCounter& operator=(const AccessCounter&) = delete;
  // What was counted so far, one entry per (kernel, location, load or store), in that order.
  std::vector<AccessSite> sites() const;
  // Forgets what was counted so far.
  void clear();
};

namespace detail {

extern std::atomic<bool> counting_accesses;
void count_access(const void* p, std::size_t bytes, bool store, const std::source_location& at);
inline void note_access(const void* p, std::size_t bytes, bool store,
                        const std::source_location& at) {
  if (counting_accesses.load(std::memory_order_relaxed)) count_access(p, bytes, store, at);
}

struct Site {
  const char* file;
  int line;
};

// Block barrier; `count`/`any`/`all` variants return the reduction of `pred` over the block.
int block_barrier(Site site, int pred, int mode);
enum : int { kBarrierPlain = 0, kBarrierCount = 1, kBarrierAnd = 2, kBarrierOr = 3 };

// The values of all lanes of one warp collective, after every lane in the mask arrived.
struct WarpView {
  uint64_t value[32];
  int pred[32];
  unsigned arrived;  // lanes that took part
  unsigned lane;     // the caller's lane
};
void warp_collective(unsigned mask, uint64_t value, int pred, Site site, WarpView& out);
unsigned active_lanes();
unsigned char* dynamic_shared_memory();
[[noreturn]] void trap(Site site);

// The calling lane's part of mma_bf16_m16n8k16 (below): mma.sync m16n8k16, bf16 in, fp32 out.
void mma_m16n8k16_bf16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], Site site);
// The calling lane's part of mma_tf32_m16n8k8 (below): mma.sync m16n8k8, tf32 in, fp32 out.
void mma_m16n8k8_tf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], Site site);
// The calling lane's part of mma_3xtf32_m16n8k8 (kernels/common/mma.cuh): its three tf32 mma
// (A_lo·B_hi, A_hi·B_lo, A_hi·B_hi) with the arithmetic of three mma_tf32_m16n8k8 calls, in one
// warp rendezvous instead of three.
void mma_m16n8k8_3xtf32(float (&d)[4], const uint32_t (&a_hi)[4], const uint32_t (&a_lo)[4],
                        const uint32_t (&b_hi)[2], const uint32_t (&b_lo)[2], Site site);

// cp.async (kernels/common/async_copy.cuh) for the calling thread: start a copy (its source read
// now, its 16 destination bytes garbage until the wait that completes its group), close a group,
// wait until at most `pending` committed groups are outstanding (writing the others' data).
void async_copy(void* dst, const void* src, int src_bytes);
void async_commit();
void async_wait(int pending);

using KernelBody = std::function<void()>;
void run_grid(const char* kernel, dim3 grid, dim3 block, std::size_t shared_bytes,
              const KernelBody& body);

template <class T>
uint64_t to_bits(T v) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8,
                "warp shuffles move values of at most 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, static_cast<const void*>(&v), sizeof(T));
  return bits;
}

template <class T>
T from_bits(uint64_t bits) {
  T v;
  std::memcpy(static_cast<void*>(&v), &bits, sizeof(T));
  return v;
}

template <class T>
T shuffle_from(unsigned mask, T var, int src, Site site) {
  WarpView view;
  warp_collective(mask, to_bits(var), 0, site, view);
  // A source outside the segment or not taking part yields the caller's own value.
  if (src < 0 || src >= 32 || !((view.arrived >> src) & 1u)) return var;
  return from_bits<T>(view.value[src]);
}

inline unsigned lane_id() {
  unsigned linear = threadIdx.x + threadIdx.y * blockDim.x + threadIdx.z * blockDim.x * blockDim.y;
  return linear % 32u;
}

// Throws KernelError when `p`, argument `index` of `kernel` (or, for nth_in_struct >= 0, the
// pointer of that rank inside it, in field order), is one a GPU would fault on (memory.h:
// launch_pointer_problem).
void check_pointer_argument(const char* kernel, std::size_t index, const void* p,
                            std::ptrdiff_t nth_in_struct);

// A pointer argument is checked, and so is every pointer fields.h finds in a struct argument.
template <class T>
void check_argument(const char* kernel, std::size_t index, const T& arg) {
  std::ptrdiff_t nth = 0;  // a pointer's rank inside a struct argument
  auto check = [&](const void* p) {
    check_pointer_argument(kernel, index, p, std::is_pointer_v<T> ? -1 : nth++);
  };
  for_each_pointer(arg, check);
}

}  // namespace detail

// Launches `kernel` over the grid on CPU threads and returns when every block has finished.
template <class... KArgs, class... Args>
void launch(const char* name, void (*kernel)(KArgs...), dim3 grid, dim3 block,
            std::size_t shared_bytes, Args&&... args) {
  static_assert(sizeof...(KArgs) == sizeof...(Args), "kernel argument count mismatch");
  // Arguments are copied once, as CUDA copies them into the parameter space.
  std::tuple<std::decay_t<KArgs>...> params(std::forward<Args>(args)...);
  // A pointer argument is device memory or host memory registered for the device (memory.h).
  std::apply(
      [name](const auto&... arg) {
        std::size_t index = 0;
        (detail::check_argument(name, index++, arg), ...);
      },
      params);
  detail::run_grid(name, grid, block, shared_bytes, [&] { std::apply(kernel, params); });
}

}  // namespace simt

// ---- synchronisation ----
#define __syncthreads() \
  ((void)::simt::detail::block_barrier({__FILE__, __LINE__}, 0, ::simt::detail::kBarrierPlain))
#define __syncthreads_count(p) \
  ::simt::detail::block_barrier({__FILE__, __LINE__}, (p) ? 1 : 0, ::simt::detail::kBarrierCount)
#define __syncthreads_and(p) \
  ::simt::detail::block_barrier({__FILE__, __LINE__}, (p) ? 1 : 0, ::simt::detail::kBarrierAnd)
#define __syncthreads_or(p) \
  ::simt::detail::block_barrier({__FILE__, __LINE__}, (p) ? 1 : 0, ::simt::detail::kBarrierOr)
#define __trap() ::simt::detail::trap({__FILE__, __LINE__})

inline void __syncwarp(unsigned mask = 0xffffffffu) {
  ::simt::detail::WarpView view;
  ::simt::detail::warp_collective(mask, 0, 0, {"__syncwarp", 0}, view);
}
inline unsigned __activemask() { return ::simt::detail::active_lanes(); }

inline unsigned __ballot_sync(unsigned mask, int pred) {
  ::simt::detail::WarpView view;
  ::simt::detail::warp_collective(mask, 0, pred != 0, {"__ballot_sync", 0}, view);
  unsigned bits = 0;
  for (int l = 0; l < 32; ++l)
    if (((view.arrived >> l) & 1u) && view.pred[l]) bits |= 1u << l;
  return bits;
}
inline int __any_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) != 0; }
inline int __all_sync(unsigned mask, int pred) {
  ::simt::detail::WarpView view;
  ::simt::detail::warp_collective(mask, 0, pred != 0, {"__all_sync", 0}, view);
  for (int l = 0; l < 32; ++l)
    if (((view.arrived >> l) & 1u) && !view.pred[l]) return 0;
  return 1;
}

template <class T>
T __shfl_sync(unsigned mask, T var, int src_lane, int width = warpSize) {
  int lane = static_cast<int>(::simt::detail::lane_id());
  int src = (lane & ~(width - 1)) + (src_lane & (width - 1));
  return ::simt::detail::shuffle_from(mask, var, src, {"__shfl_sync", 0});
}
template <class T>
T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
  int lane = static_cast<int>(::simt::detail::lane_id());
  int src = (lane % width) >= static_cast<int>(delta) ? lane - static_cast<int>(delta) : lane;
  return ::simt::detail::shuffle_from(mask, var, src, {"__shfl_up_sync", 0});
}
template <class T>
T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
  int lane = static_cast<int>(::simt::detail::lane_id());
  int src =
      (lane % width) + static_cast<int>(delta) < width ? lane + static_cast<int>(delta) : lane;
  return ::simt::detail::shuffle_from(mask, var, src, {"__shfl_down_sync", 0});
}
template <class T>
T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = warpSize) {
  int lane = static_cast<int>(::simt::detail::lane_id());
  int src = lane ^ lane_mask;
  if (src / width != lane / width) src = lane;
  return ::simt::detail::shuffle_from(mask, var, src, {"__shfl_xor_sync", 0});
}

inline unsigned __reduce_add_sync(unsigned mask, unsigned v) {
  ::simt::detail::WarpView view;
  ::simt::detail::warp_collective(mask, v, 0, {"__reduce_add_sync", 0}, view);
  unsigned s = 0;
  for (int l = 0; l < 32; ++l)
    if ((view.arrived >> l) & 1u) s += static_cast<unsigned>(view.value[l]);
  return s;
}

// ---- tensor cores ----
// One warp-wide matrix multiply-accumulate, D = A·B + D, with the register fragments of PTX's
// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 (PTX ISA, "Matrix Fragments for
// mma.m16n8k16 with floating point type"). Lane l, g = l / 4, t = l % 4; a 32-bit word holds two
// bf16, the lower column (A) or row (B) in the low 16 bits:
//   a[r]: A (16×16, row-major) row g + 8·(r % 2), columns 2·(t + 4·(r / 2)) + {0, 1}
//   b[r]: B (16×8) column g, rows 2·(t + 4·r) + {0, 1}
//   d[r]: D (16×8 fp32) row g + 8·(r / 2), column 2·t + r % 2
// Every lane of the warp must call it (mma.sync is .aligned); a lane that has returned makes it a
// KernelError. The products of two bf16 are exact in fp32; each output adds them to D in k order,
// in fp32: the hardware's order and internal rounding are not specified, so results agree with a
// GPU's to fp32 rounding of the sum, and exactly when every partial sum is representable.
inline void mma_bf16_m16n8k16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  ::simt::detail::mma_m16n8k16_bf16(d, a, b, {"mma.sync.m16n8k16", 0});
}
// The same for mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 ("Matrix Fragments for
// mma.m16n8k8", .tf32): a 32-bit word holds one tf32, an fp32 bit pattern whose low 13 bits are
// zero; the accumulators as above.
//   a[r]: A (16×8, row-major) row g + 8·(r % 2), column t + 4·(r / 2)
//   b[r]: B (8×8) column g, row t + 4·r
// The products of two tf32 are exact in fp32; sums as above. An operand with any of its low 13
// bits set is a KernelError naming the lane and the word (the hardware's treatment of such a
// value is not specified; kernels round with tf32_round, kernels/common/mma.cuh).
inline void mma_tf32_m16n8k8(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  ::simt::detail::mma_m16n8k8_tf32(d, a, b, {"mma.sync.m16n8k8", 0});
}
inline void simt_mma_3xtf32_m16n8k8(float (&d)[4], const uint32_t (&a_hi)[4],
                                    const uint32_t (&a_lo)[4], const uint32_t (&b_hi)[2],
                                    const uint32_t (&b_lo)[2]) {
  ::simt::detail::mma_m16n8k8_3xtf32(d, a_hi, a_lo, b_hi, b_lo, {"mma.sync.m16n8k8 (3xTF32)", 0});
}

// ---- asynchronous copies (cp.async) ----
// cp_async_16, cp_async_commit, cp_async_wait<N>: kernels/common/async_copy.cuh says what they do
// and how simt runs them: the data lands at the wait that completes its group, written by the
// thread that started the copy, so a read before that wait, or from another thread without a
// barrier after it, sees garbage or is a data race ThreadSanitizer reports.
inline void cp_async_16(void* dst, const void* src, int src_bytes = 16,
                        std::source_location at = std::source_location::current()) {
  if (src_bytes > 0)
    ::simt::detail::note_access(src, static_cast<std::size_t>(src_bytes), false, at);
  ::simt::detail::async_copy(dst, src, src_bytes);
}
inline void cp_async_commit() { ::simt::detail::async_commit(); }
template <int N>
inline void cp_async_wait() {
  static_assert(N >= 0 && N <= 7, "cp.async.wait_group takes 0..7");
  ::simt::detail::async_wait(N);
}

inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_system() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __nanosleep(unsigned) {}
long long clock64();

// ---- atomics ----
// Returns the old value, as CUDA's do. Relaxed order, like CUDA's plain atomics.
#define SIMT_ATOMIC_RMW(NAME, T, EXPR)                                           \
  inline T NAME(T* address, T val) {                                             \
    std::atomic_ref<T> ref(*address);                                            \
    T old = ref.load(std::memory_order_relaxed);                                 \
    while (!ref.compare_exchange_weak(old, (EXPR), std::memory_order_relaxed)) { \
    }                                                                            \
    return old;                                                                  \
  }
inline int atomicAdd(int* a, int v) {
  return std::atomic_ref<int>(*a).fetch_add(v, std::memory_order_relaxed);
}
inline unsigned atomicAdd(unsigned* a, unsigned v) {
  return std::atomic_ref<unsigned>(*a).fetch_add(v, std::memory_order_relaxed);
}
inline unsigned long long atomicAdd(unsigned long long* a, unsigned long long v) {
  return std::atomic_ref<unsigned long long>(*a).fetch_add(v, std::memory_order_relaxed);
}
SIMT_ATOMIC_RMW(atomicAdd, float, old + val)
SIMT_ATOMIC_RMW(atomicAdd, double, old + val)
inline int atomicSub(int* a, int v) {
  return std::atomic_ref<int>(*a).fetch_sub(v, std::memory_order_relaxed);
}
inline unsigned atomicSub(unsigned* a, unsigned v) {
  return std::atomic_ref<unsigned>(*a).fetch_sub(v, std::memory_order_relaxed);
}
SIMT_ATOMIC_RMW(atomicMax, int, std::max(old, val))
SIMT_ATOMIC_RMW(atomicMax, unsigned, std::max(old, val))
SIMT_ATOMIC_RMW(atomicMax, long long, std::max(old, val))
SIMT_ATOMIC_RMW(atomicMax, unsigned long long, std::max(old, val))
SIMT_ATOMIC_RMW(atomicMin, int, std::min(old, val))
SIMT_ATOMIC_RMW(atomicMin, unsigned, std::min(old, val))
SIMT_ATOMIC_RMW(atomicMin, long long, std::min(old, val))
SIMT_ATOMIC_RMW(atomicMin, unsigned long long, std::min(old, val))
SIMT_ATOMIC_RMW(atomicAnd, int, old& val)
SIMT_ATOMIC_RMW(atomicAnd, unsigned, old& val)
SIMT_ATOMIC_RMW(atomicOr, int, old | val)
SIMT_ATOMIC_RMW(atomicOr, unsigned, old | val)
SIMT_ATOMIC_RMW(atomicXor, int, old ^ val)
SIMT_ATOMIC_RMW(atomicXor, unsigned, old ^ val)
#undef SIMT_ATOMIC_RMW
template <class T>
T atomicExch(T* a, T v) {
  return std::atomic_ref<T>(*a).exchange(v, std::memory_order_relaxed);
}
template <class T>
T atomicCAS(T* a, T compare, T val) {
  std::atomic_ref<T>(*a).compare_exchange_strong(compare, val, std::memory_order_relaxed);
  return compare;  // the old value, whether or not it was swapped
}
inline __nv_bfloat16 atomicAdd(__nv_bfloat16* a, __nv_bfloat16 v) {
  static_assert(sizeof(__nv_bfloat16) == sizeof(unsigned short));
  std::atomic_ref<unsigned short> ref(*reinterpret_cast<unsigned short*>(a));
  unsigned short old = ref.load(std::memory_order_relaxed);
  for (;;) {
    __nv_bfloat16 sum =
        __float2bfloat16(__bfloat162float(std::bit_cast<__nv_bfloat16>(old)) + __bfloat162float(v));
    if (ref.compare_exchange_weak(old, std::bit_cast<unsigned short>(sum),
                                  std::memory_order_relaxed))
      return std::bit_cast<__nv_bfloat16>(old);
  }
}

// ---- loads and stores with cache hints: plain accesses on the CPU, counted (AccessCounter) ----
#define SIMT_HINTED_LOAD(NAME)                                                           \
  template <class T>                                                                     \
  inline T NAME(const T* p, std::source_location at = std::source_location::current()) { \
    ::simt::detail::note_access(p, sizeof(T), false, at);                                \
    return *p;                                                                           \
  }
#define SIMT_HINTED_STORE(NAME)                                                            \
  template <class T>                                                                       \
  inline void NAME(T* p, T v, std::source_location at = std::source_location::current()) { \
    ::simt::detail::note_access(p, sizeof(T), true, at);                                   \
    *p = v;                                                                                \
  }
SIMT_HINTED_LOAD(__ldg)
SIMT_HINTED_LOAD(__ldcg)
SIMT_HINTED_LOAD(__ldca)
SIMT_HINTED_LOAD(__ldcs)
SIMT_HINTED_LOAD(__ldlu)
SIMT_HINTED_LOAD(__ldcv)
SIMT_HINTED_STORE(__stcg)
SIMT_HINTED_STORE(__stcs)
SIMT_HINTED_STORE(__stwb)
SIMT_HINTED_STORE(__stwt)
#undef SIMT_HINTED_LOAD
#undef SIMT_HINTED_STORE

// ---- integer and bit intrinsics ----
inline int __popc(unsigned x) { return std::popcount(x); }
inline int __popcll(unsigned long long x) { return std::popcount(x); }
inline int __clz(int x) { return std::countl_zero(static_cast<unsigned>(x)); }
inline int __clzll(long long x) { return std::countl_zero(static_cast<unsigned long long>(x)); }
inline int __ffs(int x) { return x == 0 ? 0 : std::countr_zero(static_cast<unsigned>(x)) + 1; }
inline int __ffsll(long long x) {
  return x == 0 ? 0 : std::countr_zero(static_cast<unsigned long long>(x)) + 1;
}
inline unsigned __brev(unsigned x) {
  unsigned r = 0;
  for (int i = 0; i < 32; ++i) r |= ((x >> i) & 1u) << (31 - i);
  return r;
}
inline unsigned __umulhi(unsigned a, unsigned b) {
  return static_cast<unsigned>((static_cast<unsigned long long>(a) * b) >> 32);
}
inline int __mul24(int a, int b) { return a * b; }
inline unsigned __umul24(unsigned a, unsigned b) { return a * b; }
inline int min(int a, int b) { return std::min(a, b); }
inline int max(int a, int b) { return std::max(a, b); }
inline unsigned min(unsigned a, unsigned b) { return std::min(a, b); }
inline unsigned max(unsigned a, unsigned b) { return std::max(a, b); }
inline long min(long a, long b) { return std::min(a, b); }
inline long max(long a, long b) { return std::max(a, b); }
inline unsigned long min(unsigned long a, unsigned long b) { return std::min(a, b); }
inline unsigned long max(unsigned long a, unsigned long b) { return std::max(a, b); }
inline double min(double a, double b) { return std::fmin(a, b); }
inline double max(double a, double b) { return std::fmax(a, b); }
inline long long min(long long a, long long b) { return std::min(a, b); }
inline long long max(long long a, long long b) { return std::max(a, b); }
inline unsigned long long min(unsigned long long a, unsigned long long b) { return std::min(a, b); }
inline unsigned long long max(unsigned long long a, unsigned long long b) { return std::max(a, b); }
inline float min(float a, float b) { return std::fmin(a, b); }
inline float max(float a, float b) { return std::fmax(a, b); }

// ---- float intrinsics ----
inline int __float_as_int(float x) { return std::bit_cast<int>(x); }
inline unsigned __float_as_uint(float x) { return std::bit_cast<unsigned>(x); }
inline float __int_as_float(int x) { return std::bit_cast<float>(x); }
inline float __uint_as_float(unsigned x) { return std::bit_cast<float>(x); }
inline long long __double_as_longlong(double x) { return std::bit_cast<long long>(x); }
inline double __longlong_as_double(long long x) { return std::bit_cast<double>(x); }
inline float __expf(float x) { return std::exp(x); }
inline float __exp10f(float x) { return std::pow(10.0f, x); }
inline float __logf(float x) { return std::log(x); }
inline float __log2f(float x) { return std::log2(x); }
inline float __sinf(float x) { return std::sin(x); }
inline float __cosf(float x) { return std::cos(x); }
inline float __tanf(float x) { return std::tan(x); }
inline float __powf(float x, float y) { return std::pow(x, y); }
inline float __fdividef(float x, float y) { return x / y; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return std::sqrt(x); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline float __saturatef(float x) { return std::clamp(x, 0.0f, 1.0f); }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
