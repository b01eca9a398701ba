// Device code shared by the CUDA product-key top-k variants (forward and backward): fp32 loads of
// fp32/bf16 inputs, the optional RMS norm, the ranking rule as a 64-bit key, a top-k list that a
// warp or a whole block fills from a stream of candidates, and the pruned k×k candidate step.
// Compiled by nvcc and by simt (kernels/common/cuda.cuh).
//
// Ranking as one unsigned 64-bit key, larger = better:
//   high 32 bits: the score mapped to an order-preserving unsigned (NaN -> 0, below -inf; -0 -> +0)
//   low 32 bits:  0xffffffff - tie, where tie is smaller for the lower index.
// Key 0 is below every real candidate (a real tie is < 0xffffffff): it pads empty slots.
// Per-half lists use tie = the sub-key index (< 2^20). The final list uses tie = i1·n_keys + i2
// when n_keys² fits in 32 bits (n_keys <= 65535, which covers every practical shape), and
// otherwise (rank of i1 among I1's indices)·1024 + (rank of i2 among I2's): the same order.
//
// The top-k list (TopList): 2·kp keys in shared memory, kp a power of two >= max(k, group size).
// [0, kp) holds the best kp seen so far, sorted descending; [kp, 2kp) collects new candidates
// that beat the current k-th best (warp-aggregated atomic append). When the pending half could
// overflow, it is bitonic-sorted and bitonic-merged into the front half. Keys are unique (the
// tie field), so the result does not depend on the append order or on when the flushes fall:
// deterministic. A warp's list keeps its pending count in a register, uniform across the warp
// (one warp appends, so the ballot's popcount is the count's change): an offer round is a read of
// the k-th best, a compare and a ballot, and one in which no key passes ends there, with no
// __syncwarp, no shared-memory count and no atomic. A block's list counts in shared memory.
#pragma once
#include <cstdint>
#include <string>
#include <type_traits>

#include "common/blas.cuh"
#include "common/cuda.cuh"
#include "pk_topk/pk_topk.h"

#if defined(__CUDACC__)
#include <cublas_v2.h>
#endif

namespace memlayers::pk_topk {
inline namespace MEMLAYERS_TARGET_NS {

// ---- element access ----
__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }

// A forward's index output, int32 or int64, chosen at run time (a uniform branch per store of
// k indices a row), so each selection kernel is compiled once for both index types.
struct IndexOut {
  void* p = nullptr;
  bool i32 = false;
  __host__ __device__ IndexOut at(int64_t offset) const {
    return {i32 ? static_cast<void*>(static_cast<int32_t*>(p) + offset)
                : static_cast<void*>(static_cast<int64_t*>(p) + offset),
            i32};
  }
  __device__ __forceinline__ void store(int64_t i, int64_t v) const {
    if (i32)
      static_cast<int32_t*>(p)[i] = static_cast<int32_t>(v);
    else
      static_cast<int64_t*>(p)[i] = v;
  }
};
inline IndexOut index_out(const FwdParams& p) { return {p.indices, p.index_dtype == DType::i32}; }

template <class I>
__device__ __forceinline__ int64_t read_index(const I* in, int64_t i) {
  return static_cast<int64_t>(__ldg(in + i));
}

template <class T>
struct Tag {
  using type = T;
};

// Calls f(Tag<T>): T the input dtype (float, bf16).
template <class P, class F>
void dispatch_dtype(const P& p, F&& f) {
  if (p.dtype == DType::bf16)
    f(Tag<__nv_bfloat16>{});
  else
    f(Tag<float>{});
}

// Calls f(Tag<T>, Tag<I>): T the input dtype (float, bf16), I the index dtype (int32, int64).
template <class P, class F>
void dispatch(const P& p, F&& f) {
  dispatch_dtype(p, [&](auto t) {
    if (p.index_dtype == DType::i32)
      f(t, Tag<int32_t>{});
    else
      f(t, Tag<int64_t>{});
  });
}

// ---- ranking keys ----
__device__ __forceinline__ uint32_t order_bits(float s) {
  if (s != s) return 0u;  // NaN: below every number
  if (s == 0.f) s = 0.f;  // -0 ranks as +0
  const uint32_t b = __float_as_uint(s);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}
__device__ __forceinline__ float order_score(uint32_t u) {
  if (u == 0u) return __uint_as_float(0x7fc00000u);
  return __uint_as_float((u & 0x80000000u) ? (u & 0x7fffffffu) : ~u);
}
__device__ __forceinline__ uint64_t make_key(float s, uint32_t tie) {
  return (static_cast<uint64_t>(order_bits(s)) << 32) | (0xffffffffu - tie);
}
__device__ __forceinline__ float key_score(uint64_t key) {
  return order_score(static_cast<uint32_t>(key >> 32));
}
__device__ __forceinline__ uint32_t key_tie(uint64_t key) {
  return 0xffffffffu - static_cast<uint32_t>(key & 0xffffffffu);
}

// Whether the final list can use i1·n_keys + i2 itself as the tie (see the top of the file).
inline bool full_index_tie(int64_t n_keys) { return n_keys * n_keys < 0xffffffffLL; }

inline int64_t pow2_at_least(int64_t x) {
  int64_t p = 1;
  while (p < x) p <<= 1;
  return p;
}

// ---- groups: a warp, or the whole block ----
// Every function taking a Group is called by all of the group's threads with uniform arguments.
struct Group {
  int rank;   // thread's rank in the group
  int size;   // 32 or blockDim.x (a multiple of 32)
  bool warp;  // true: sync with __syncwarp, else __syncthreads
  __device__ __forceinline__ void sync() const {
    if (warp)
      __syncwarp();
    else
      __syncthreads();
  }
};
__device__ __forceinline__ Group warp_group() {
  return Group{static_cast<int>(threadIdx.x % 32), 32, true};
}
__device__ __forceinline__ Group block_group() {
  return Group{static_cast<int>(threadIdx.x), static_cast<int>(blockDim.x), false};
}

// ---- bitonic networks in shared memory ----
// Sorts x[0, n) descending (Desc) or ascending; n a power of two.
template <bool Desc, class T>
__device__ __forceinline__ void bitonic_sort(T* x, int n, const Group& g) {
  for (int size = 2; size <= n; size <<= 1)
    for (int stride = size / 2; stride > 0; stride >>= 1) {
      for (int i = g.rank; i < n / 2; i += g.size) {
        const int lo = 2 * i - (i & (stride - 1)), hi = lo + stride;
        const bool desc = ((lo & size) == 0) == Desc;
        const T a = x[lo], b = x[hi];
        if (desc ? (a < b) : (b < a)) {
          x[lo] = b;
          x[hi] = a;
        }
      }
      g.sync();
    }
}

// x[0, n/2) and x[n/2, n) each sorted descending -> x[0, n) sorted descending.
__device__ __forceinline__ void bitonic_merge_desc(uint64_t* x, int n, const Group& g) {
  const int h = n / 2;
  for (int i = g.rank; i < h; i += g.size) {
    const uint64_t a = x[i], b = x[n - 1 - i];
    if (a < b) {
      x[i] = b;
      x[n - 1 - i] = a;
    }
  }
  g.sync();
  // Each half is now bitonic, and every element of the first >= every element of the second.
  for (int stride = h / 2; stride > 0; stride >>= 1) {
    for (int i = g.rank; i < h; i += g.size) {
      const int lo = 2 * i - (i & (stride - 1)), hi = lo + stride;
      const uint64_t a = x[lo], b = x[hi];
      if (a < b) {
        x[lo] = b;
        x[hi] = a;
      }
    }
    g.sync();
  }
}

// ---- the top-k list ----
struct TopList {
  uint64_t* buf;  // 2·kp keys
  int* count;     // a block's list: pending keys in buf[kp, kp + *count)
  int kp, k;
  int pending = 0;  // a warp's list: pending keys in buf[kp, kp + pending)
};

__device__ __forceinline__ void list_init(TopList& L, const Group& g) {
  for (int i = g.rank; i < 2 * L.kp; i += g.size) L.buf[i] = 0;
  if (g.rank == 0) *L.count = 0;
  L.pending = 0;
  g.sync();
}

// Merges the c pending keys into the front half. A block's list calls it after a sync, with
// c = *L.count; a warp's with c = L.pending, each lane's appends its own (the sync below orders
// them before the sort).
__device__ __forceinline__ void list_flush(const TopList& L, int c, const Group& g) {
  for (int i = c + g.rank; i < L.kp; i += g.size) L.buf[L.kp + i] = 0;
  g.sync();
  bitonic_sort<true>(L.buf + L.kp, L.kp, g);
  bitonic_merge_desc(L.buf, 2 * L.kp, g);
  if (g.rank == 0) *L.count = 0;
  g.sync();
}

// One round: each thread of the group offers one key (or none). Group size <= kp.
__device__ __forceinline__ void list_offer(TopList& L, bool valid, uint64_t key, const Group& g) {
  const unsigned lane = threadIdx.x % 32;
  if (g.warp) {
    // buf[k − 1] changes only in a flush, which ends with a __syncwarp.
    bool pass = valid && key > L.buf[L.k - 1];
    unsigned m = __ballot_sync(0xffffffffu, pass);
    if (m == 0) return;
    if (L.pending + __popc(m) > L.kp) {
      list_flush(L, L.pending, g);
      L.pending = 0;
      pass = valid && key > L.buf[L.k - 1];
      m = __ballot_sync(0xffffffffu, pass);
    }
    if (pass) L.buf[L.kp + L.pending + __popc(m & ((1u << lane) - 1u))] = key;
    L.pending += __popc(m);
    return;
  }
  g.sync();
  const int c = *L.count;
  uint64_t thr = L.buf[L.k - 1];
  g.sync();
  if (c + g.size > L.kp) {
    list_flush(L, c, g);
    thr = L.buf[L.k - 1];
  }
  const bool pass = valid && key > thr;
  const unsigned m = __ballot_sync(0xffffffffu, pass);
  int base = 0;
  if (lane == 0 && m) base = atomicAdd(L.count, __popc(m));
  base = __shfl_sync(0xffffffffu, base, 0);
  if (pass) L.buf[L.kp + base + __popc(m & ((1u << lane) - 1u))] = key;
}

// Merges what is still pending: afterwards buf[0, k) holds the k best, descending.
__device__ __forceinline__ void list_finish(TopList& L, const Group& g) {
  if (g.warp) {
    if (L.pending > 0) list_flush(L, L.pending, g);  // its first loop is before a __syncwarp
    L.pending = 0;
    return;
  }
  g.sync();
  const int c = *L.count;
  g.sync();
  if (c > 0) list_flush(L, c, g);
}

// ---- per-row shared workspace: both half lists, the final list, rank tables ----
// Byte layout, the same on host and device. Sizes in bytes are multiples of 8.
struct RowSpace {
  int kp = 0, k = 0, kq = 0;  // list size, k, rank-sort size
  bool ranks = false;         // the final tie needs rank tables (n_keys² >= 2^32)
  __host__ __device__ int64_t list_bytes() const { return 2 * int64_t{kp} * 8; }
  __host__ __device__ int64_t rank_bytes() const {
    return ranks ? 2 * (int64_t{kq} * 4 + ((int64_t{k} * 2 + 7) / 8) * 8) : 0;
  }
  // Three lists, three counters (padded to 16 bytes), rank tables.
  __host__ __device__ int64_t bytes() const { return 3 * list_bytes() + 16 + rank_bytes(); }
};

// min_kp: at least the group size (a round of offers must fit the pending half); more means
// fewer flushes.
inline RowSpace row_space(int64_t k, int64_t n_keys, int min_kp) {
  RowSpace r;
  r.k = static_cast<int>(k);
  r.kp = static_cast<int>(pow2_at_least(std::max<int64_t>(k, min_kp)));
  r.kq = static_cast<int>(pow2_at_least(std::max<int64_t>(k, 2)));  // kq·4 bytes stay 8-aligned
  r.ranks = !full_index_tie(n_keys);
  return r;
}

struct RowLists {
  TopList half[2], final_list;
  uint32_t* sorted_idx[2];  // rank r -> (sub-key index << 10 | list position), ascending
  uint16_t* rank_of[2];     // list position -> rank among the list's indices
};

__device__ __forceinline__ RowLists carve_row(unsigned char* base, const RowSpace& s) {
  RowLists r;
  int* counts = reinterpret_cast<int*>(base + 3 * s.list_bytes());
  for (int l = 0; l < 3; ++l) {
    TopList t{reinterpret_cast<uint64_t*>(base + l * s.list_bytes()), counts + l, s.kp, s.k};
    if (l < 2)
      r.half[l] = t;
    else
      r.final_list = t;
  }
  unsigned char* p = base + 3 * s.list_bytes() + 16;
  for (int c = 0; c < 2; ++c) {
    r.sorted_idx[c] = s.ranks ? reinterpret_cast<uint32_t*>(p) : nullptr;
    if (s.ranks) p += int64_t{s.kq} * 4;
    r.rank_of[c] = s.ranks ? reinterpret_cast<uint16_t*>(p) : nullptr;
    if (s.ranks) p += ((int64_t{s.k} * 2 + 7) / 8) * 8;
  }
  return r;
}

// Candidate offsets of the pruned step: off[i] = Σ_{i' < i} floor(k / (i' + 1)), i <= k.
// Written once per block by thread 0; the caller syncs.
__device__ __forceinline__ void pair_offsets(int* off, int k) {
  if (threadIdx.x != 0) return;
  int s = 0;
  for (int i = 0; i < k; ++i) {
    off[i] = s;
    s += k / (i + 1);
  }
  off[k] = s;
}

// The pruned candidate step for one row: the half lists are finished (buf[0, k) sorted). Offers
// S1[i] + S2[j] for the pairs (i + 1)(j + 1) <= k, keeps the k best, and writes them.
__device__ __forceinline__ void pair_step(const RowLists& R, const RowSpace& s, const int* off,
                                          int64_t n_keys, float* __restrict__ scores,
                                          IndexOut indices, const Group& g) {
  const int k = s.k;
  const uint64_t* L1 = R.half[0].buf;
  const uint64_t* L2 = R.half[1].buf;
  if (s.ranks) {
    for (int c = 0; c < 2; ++c) {
      const uint64_t* L = R.half[c].buf;
      for (int p = g.rank; p < s.kq; p += g.size)
        R.sorted_idx[c][p] = p < k ? (key_tie(L[p]) << 10) | static_cast<uint32_t>(p) : 0xffffffffu;
      g.sync();
      bitonic_sort<false>(R.sorted_idx[c], s.kq, g);
      for (int r = g.rank; r < k; r += g.size)
        R.rank_of[c][R.sorted_idx[c][r] & 1023u] = static_cast<uint16_t>(r);
      g.sync();
    }
  }
  TopList F = R.final_list;
  list_init(F, g);
  const int total = off[k];
  for (int base = 0; base < total; base += g.size) {
    const int c = base + g.rank;
    bool valid = c < total;
    uint64_t key = 0;
    if (valid) {
      int lo = 0, hi = k - 1;  // the largest i with off[i] <= c
      while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (off[mid] <= c)
          lo = mid;
        else
          hi = mid - 1;
      }
      const int i = lo, j = c - off[i];
      const float sum = key_score(L1[i]) + key_score(L2[j]);
      const uint32_t tie =
          s.ranks ? (static_cast<uint32_t>(R.rank_of[0][i]) << 10) | R.rank_of[1][j]
                  : static_cast<uint32_t>(int64_t{key_tie(L1[i])} * n_keys + key_tie(L2[j]));
      key = make_key(sum, tie);
    }
    list_offer(F, valid, key, g);
  }
  list_finish(F, g);
  for (int t = g.rank; t < k; t += g.size) {
    const uint64_t key = F.buf[t];
    const uint32_t tie = key_tie(key);
    int64_t index = tie;
    if (s.ranks) {
      const uint32_t p1 = R.sorted_idx[0][tie >> 10] & 1023u,
                     p2 = R.sorted_idx[1][tie & 1023u] & 1023u;
      index = int64_t{key_tie(L1[p1])} * n_keys + key_tie(L2[p2]);
    }
    scores[t] = key_score(key);
    indices.store(t, index);
  }
  g.sync();
}

// ---- RMS norm ----
// 1 / sqrt(mean(x²) + kNormEps) of one row x[0, width), for a whole warp (every lane calls it and
// gets it); the sum of squares in fp32, the scale in fp64, as the fused variants apply it. A row
// that is not `valid` (past the batch) is never read.
template <class T>
__device__ __forceinline__ double warp_inv_rms(const T* __restrict__ x, int64_t width, bool valid) {
  float ss = 0.f;
  if (valid)
    for (int64_t e = threadIdx.x % 32; e < width; e += 32) {
      const float v = to_f32(x[e]);
      ss += v * v;
    }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
  return 1.0 / sqrt(static_cast<double>(ss) * (1.0 / static_cast<double>(width)) + kNormEps);
}

// out row = in row · (1 / sqrt(mean(in²) + kNormEps)), a warp per row of `width` elements.
// Rows r of the input start at r·in_stride (+ in_offset); outputs at r·out_stride (+ out_offset).
// Fixed-order reduction: deterministic.
template <class T>
__global__ void __launch_bounds__(256)
    rms_norm_rows_kernel(const T* __restrict__ in, float* __restrict__ out, int64_t rows,
                         int64_t width, int64_t in_stride, int64_t in_offset, int64_t out_stride,
                         int64_t out_offset) {
  const int lane = threadIdx.x % 32;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x / 32);
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
       r < rows; r += warps) {
    const T* x = in + r * in_stride + in_offset;
    float ss = 0.f;
    for (int64_t e = lane; e < width; e += 32) {
      const float v = to_f32(x[e]);
      ss += v * v;
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
    // The scale and the product in fp64, rounded once: a normalised element is then the
    // correctly rounded x̂ (scores of unit-scale rows cancel, and every ulp shows).
    const double inv = 1.0 / sqrt(static_cast<double>(ss) / static_cast<double>(width) +
                                  static_cast<double>(kNormEps));
    float* y = out + r * out_stride + out_offset;
    for (int64_t e = lane; e < width; e += 32)
      y[e] = static_cast<float>(static_cast<double>(to_f32(x[e])) * inv);
  }
}

template <class T>
void rms_norm_rows(const T* in, float* out, int64_t rows, int64_t width, int64_t in_stride,
                   int64_t in_offset, int64_t out_stride, int64_t out_offset, Stream stream) {
  launch_kernel("pk_topk_rms_norm", rms_norm_rows_kernel<T>, dim3(grid_cap(ceil_div(rows, 8))),
                dim3(256), 0, stream, in, out, rows, width, in_stride, in_offset, out_stride,
                out_offset);
}

// Normalised fp32 copies of the queries (both halves, (B·h, k_dim)) and of both sub-key tables.
struct Normalised {
  dev::Buffer<float> q, k1, k2;
  Normalised(int64_t batch, int64_t heads, int64_t n_keys, int64_t k_dim, Stream stream)
      : q(batch * heads * k_dim, stream),
        k1(heads * n_keys * (k_dim / 2), stream),
        k2(heads * n_keys * (k_dim / 2), stream) {}
};

template <class T>
void normalise_inputs(const T* q, const T* k1, const T* k2, int64_t batch, int64_t heads,
                      int64_t n_keys, int64_t k_dim, Normalised& out, Stream stream) {
  const int64_t half = k_dim / 2, rows = batch * heads, krows = heads * n_keys;
  rms_norm_rows(q, out.q.get(), rows, half, k_dim, 0, k_dim, 0, stream);
  rms_norm_rows(q, out.q.get(), rows, half, k_dim, half, k_dim, half, stream);
  rms_norm_rows(k1, out.k1.get(), krows, half, half, 0, half, 0, stream);
  rms_norm_rows(k2, out.k2.get(), krows, half, half, 0, half, 0, stream);
}

// ---- the fused variants' warp: two consecutive queries (bw, bw + 1) of head h ----
// Their norm scales for one half (query offset qoff), 1.0 each without the norm: fp64, so the
// score is rounded once from (q·k)·qinv·kinv (see v1's norm). Every lane calls it.
template <class T>
__device__ __forceinline__ void pair_query_scales(const T* __restrict__ q, int64_t bw,
                                                  int64_t batch, int64_t heads, int64_t h,
                                                  int64_t k_dim, int64_t qoff, bool norm,
                                                  double (&qinv)[2]) {
#pragma unroll
  for (int qq = 0; qq < 2; ++qq) {
    const bool valid = bw + qq < batch;
    qinv[qq] = norm ? warp_inv_rms(valid ? q + ((bw + qq) * heads + h) * k_dim + qoff : q,
                                   k_dim / 2, valid)
                    : 1.0;
  }
}

// Both rows' pruned candidate steps, for the rows inside the batch.
__device__ __forceinline__ void pair_steps(const RowLists& R0, const RowLists& R1,
                                           const RowSpace& sp, const int* off, int64_t n_keys,
                                           float* __restrict__ scores, IndexOut indices, int64_t bw,
                                           int64_t batch, int64_t heads, int64_t h,
                                           const Group& g) {
  if (bw < batch)
    pair_step(R0, sp, off, n_keys, scores + (bw * heads + h) * sp.k,
              indices.at((bw * heads + h) * sp.k), g);
  if (bw + 1 < batch)
    pair_step(R1, sp, off, n_keys, scores + ((bw + 1) * heads + h) * sp.k,
              indices.at(((bw + 1) * heads + h) * sp.k), g);
}

// ---- the per-half score matrices, (B, h, n_keys) fp32 ----
// s[(b·h + hd)·n_keys + i] = q[(b·h + hd)·k_dim + off + :half] · K[(hd·n_keys + i)·half + :half]
#if !defined(__CUDACC__)
// simt has no cuBLAS. Stand-in: a thread per score, grid-stride, fp32 sum in dimension order.
// No shared-memory tiling: under simt a block barrier switches through every thread of the block,
// and a tiled GEMM would only add barriers; this kernel is never compiled for the GPU.
template <class T>
__global__ void __launch_bounds__(256)
    score_gemm_kernel(const T* __restrict__ q, const T* __restrict__ keys, float* __restrict__ s,
                      int64_t batch, int64_t heads, int64_t n_keys, int64_t k_dim, int64_t off) {
  const int64_t half = k_dim / 2, total = batch * heads * n_keys;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < total;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = t / n_keys, i = t % n_keys, hd = row % heads;
    const T* x = q + row * k_dim + off;
    const T* y = keys + (hd * n_keys + i) * half;
    float acc = 0.f;
    for (int64_t d = 0; d < half; ++d) acc += to_f32(x[d]) * to_f32(y[d]);
    s[t] = acc;
  }
}
#endif

// Both halves' score matrices. T = float or bf16 (inputs as stored; fp32 accumulation).
template <class T>
void score_matrices(const T* q, const T* k1, const T* k2, int64_t batch, int64_t heads,
                    int64_t n_keys, int64_t k_dim, float* s1, float* s2, Stream stream) {
  const int64_t half = k_dim / 2;
#if defined(__CUDACC__)
  // Column-major view, per head: S_h (n_keys × B, ld heads·n_keys) = K_hᵀ-op · Q_h, where K_h is
  // (half × n_keys, ld half) and Q_h is (half × B, ld heads·k_dim).
  cublasHandle_t h = blas::handle();
  blas::check(cublasSetStream(h, static_cast<cudaStream_t>(stream)), "cublasSetStream");
  const float one = 1.f, zero = 0.f;
  const T* keys[2] = {k1, k2};
  float* out[2] = {s1, s2};
  for (int c = 0; c < 2; ++c) {
    const int m = static_cast<int>(n_keys), n = static_cast<int>(batch),
              kk = static_cast<int>(half);
    if constexpr (std::is_same_v<T, float>) {
      blas::check(cublasSgemmStridedBatched(
                      h, CUBLAS_OP_T, CUBLAS_OP_N, m, n, kk, &one, keys[c], kk, n_keys * half,
                      q + c * half, static_cast<int>(heads * k_dim), k_dim, &zero, out[c],
                      static_cast<int>(heads * n_keys), n_keys, static_cast<int>(heads)),
                  "cublasSgemmStridedBatched");
    } else {
      blas::check(cublasGemmStridedBatchedEx(
                      h, CUBLAS_OP_T, CUBLAS_OP_N, m, n, kk, &one, keys[c], CUDA_R_16BF, kk,
                      n_keys * half, q + c * half, CUDA_R_16BF, static_cast<int>(heads * k_dim),
                      k_dim, &zero, out[c], CUDA_R_32F, static_cast<int>(heads * n_keys), n_keys,
                      static_cast<int>(heads), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                  "cublasGemmStridedBatchedEx");
    }
  }
#else
  const int64_t blocks = ceil_div(batch * heads * n_keys, int64_t{256});
  launch_kernel("pk_topk_score_gemm", score_gemm_kernel<T>, dim3(grid_cap(blocks)), dim3(256), 0,
                stream, q, k1, s1, batch, heads, n_keys, k_dim, int64_t{0});
  launch_kernel("pk_topk_score_gemm", score_gemm_kernel<T>, dim3(grid_cap(blocks)), dim3(256), 0,
                stream, q, k2, s2, batch, heads, n_keys, k_dim, half);
#endif
}

// Calls f(q, k1, k2) with a search's queries and sub-key tables as its sums read them: fp32
// normalised copies (made here, living through the call) with qk_norm, else the inputs as stored
// (T). P: FwdParams or BwdParams.
template <class T, class P, class F>
void with_normalised(const P& p, Stream stream, F&& f) {
  const auto* q = static_cast<const T*>(p.queries);
  const auto* k1 = static_cast<const T*>(p.keys1);
  const auto* k2 = static_cast<const T*>(p.keys2);
  if (p.qk_norm) {
    Normalised n(p.batch, p.heads, p.n_keys, p.k_dim, stream);
    normalise_inputs(q, k1, k2, p.batch, p.heads, p.n_keys, p.k_dim, n, stream);
    f(static_cast<const float*>(n.q.get()), static_cast<const float*>(n.k1.get()),
      static_cast<const float*>(n.k2.get()));
  } else {
    f(q, k1, k2);
  }
}

// Score matrices of a forward, with the norm applied first when asked. s1, s2: (B·h·n_keys).
template <class T>
void forward_scores(const FwdParams& p, float* s1, float* s2, Stream stream) {
  with_normalised<T>(p, stream, [&](const auto* q, const auto* k1, const auto* k2) {
    score_matrices(q, k1, k2, p.batch, p.heads, p.n_keys, p.k_dim, s1, s2, stream);
  });
}

// What the materialising variants (v1, v2) cannot take.
inline std::string materialised_supports(const FwdParams& p) {
  constexpr int64_t kIntMax = 2147483647;
  if (p.n_keys > kIntMax || p.batch > kIntMax || p.heads * p.n_keys > kIntMax ||
      p.heads * p.k_dim > kIntMax)
    return "the cuBLAS GEMM takes 32-bit sizes and leading dimensions: batch, heads·n_keys and "
           "heads·k_dim must be < 2^31";
  return "";
}

}  // namespace MEMLAYERS_TARGET_NS
}  // namespace memlayers::pk_topk
