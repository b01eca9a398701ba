// Device helpers shared by the CUDA EmbeddingBag variants: typed element access, 16-byte vector
// loads of fp32 and bf16 rows, the dtype dispatch of launchers, and the dw kernel the backward
// variants share. Compiled by nvcc and by simt (see kernels/common/cuda.cuh).
#pragma once
#include <cstdint>
#include <string>

#include "common/cuda.cuh"
#include "embbag/embbag.h"

namespace memlayers::embbag {
inline namespace MEMLAYERS_TARGET_NS {

// ---- element access ----
__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <class T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16(x);
}

template <class I>
__device__ __forceinline__ int64_t load_index(const I* idx, int64_t i) {
  return static_cast<int64_t>(__ldg(idx + i));
}

// Elements of T in one 16-byte vector: 4 fp32 or 8 bf16.
template <class T>
constexpr int kVec = 16 / sizeof(T);

// Adds w · (16 raw bytes holding kVec<T> elements) to acc[kVec<T>].
template <class T>
__device__ __forceinline__ void accumulate_raw(uint4 raw, float w, float* acc) {
  if constexpr (sizeof(T) == 4) {
    acc[0] += w * __uint_as_float(raw.x);
    acc[1] += w * __uint_as_float(raw.y);
    acc[2] += w * __uint_as_float(raw.z);
    acc[3] += w * __uint_as_float(raw.w);
  } else {
    // bf16 is the top half of an fp32: widening is a shift or a mask.
    acc[0] += w * __uint_as_float(raw.x << 16);
    acc[1] += w * __uint_as_float(raw.x & 0xffff0000u);
    acc[2] += w * __uint_as_float(raw.y << 16);
    acc[3] += w * __uint_as_float(raw.y & 0xffff0000u);
    acc[4] += w * __uint_as_float(raw.z << 16);
    acc[5] += w * __uint_as_float(raw.z & 0xffff0000u);
    acc[6] += w * __uint_as_float(raw.w << 16);
    acc[7] += w * __uint_as_float(raw.w & 0xffff0000u);
  }
}

// Adds w · (16 bytes of row at element offset e) to acc[kVec<T>]. Needs e·sizeof(T) % 16 == 0.
template <class T>
__device__ __forceinline__ void fma_vec(const T* row, int64_t e, float w, float* acc) {
  accumulate_raw<T>(__ldg(reinterpret_cast<const uint4*>(row + e)), w, acc);
}

// 16-byte row loads: through the read-only cache, or evict-first (rows used once).
struct LoadCached {
  __device__ __forceinline__ uint4 operator()(const void* p) const {
    return __ldg(static_cast<const uint4*>(p));
  }
};
struct LoadStreaming {
  __device__ __forceinline__ uint4 operator()(const void* p) const {
    return __ldcs(static_cast<const uint4*>(p));
  }
};

// acc[q] += Σ_j ws[j]·V[rows[j] + col[q] ...+kVec) for each of a lane's kSlice vectors that is
// full; rows[] holds element offsets of the k rows. kUnroll rows at a time: all their loads are
// issued before the first FMA, so each thread keeps kUnroll·kSlice loads in flight.
template <int kUnroll, class V, int kSlice, class Load>
__device__ __forceinline__ void accumulate_rows(const V* __restrict__ values, const int64_t* rows,
                                                const float* ws, int64_t k,
                                                const int64_t (&col)[kSlice],
                                                const bool (&full)[kSlice],
                                                float (&acc)[kSlice][kVec<V>], Load load) {
  int64_t j = 0;
  for (; j + kUnroll <= k; j += kUnroll) {
    uint4 raw[kUnroll][kSlice] = {};  // only full vectors are loaded and read
#pragma unroll
    for (int u = 0; u < kUnroll; ++u)
#pragma unroll
      for (int q = 0; q < kSlice; ++q)
        if (full[q]) raw[u][q] = load(values + rows[j + u] + col[q]);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u)
#pragma unroll
      for (int q = 0; q < kSlice; ++q)
        if (full[q]) accumulate_raw<V>(raw[u][q], ws[j + u], acc[q]);
  }
  for (; j < k; ++j)
#pragma unroll
    for (int q = 0; q < kSlice; ++q)
      if (full[q]) accumulate_raw<V>(load(values + rows[j] + col[q]), ws[j], acc[q]);
}

// Output stores, both cache-hinted so that simt's AccessCounter counts them: write-back (what a
// plain store is) and streaming (evict-first: y is not read again by this kernel).
struct StorePlain {
  template <class T>
  __device__ __forceinline__ void operator()(T* p, T v) const {
    __stwb(p, v);
  }
};
struct StoreStreaming {
  template <class T>
  __device__ __forceinline__ void operator()(T* p, T v) const {
    __stcs(p, v);
  }
};

// Word w of N fp32 values stored as O: the value itself (fp32) or two bf16, the lower first.
template <class O>
__device__ __forceinline__ uint32_t out_word(const float* acc, int w) {
  if constexpr (sizeof(O) == 4) {
    return __float_as_uint(acc[w]);
  } else {
    return static_cast<uint32_t>(__bfloat16_as_ushort(__float2bfloat16(acc[2 * w]))) |
           static_cast<uint32_t>(__bfloat16_as_ushort(__float2bfloat16(acc[2 * w + 1]))) << 16;
  }
}

// Stores acc[N] (fp32) as N elements of O at out + e. When `vector` (out + e 16-byte aligned),
// in 16-byte vectors (8 bytes when that is all: 4 bf16), else element by element. A warp whose
// lanes store their N outputs element by element issues N requests, each spread over the sectors
// of the whole warp's span and filling 1/N of each (simt's AccessCounter measured 4 B of every
// 16 at fp32, 2 of 16 at bf16); one vector store a lane fills them.
template <class O, int N, class Store>
__device__ __forceinline__ void store_vec(O* out, int64_t e, const float* acc, bool vector,
                                          Store store) {
  constexpr int kWords = N * static_cast<int>(sizeof(O)) / 4;
  static_assert(kWords % 2 == 0, "a lane's outputs fill 8 or 16-byte vectors");
  if (!vector) {
#pragma unroll
    for (int q = 0; q < N; ++q) store(out + e + q, from_float<O>(acc[q]));
  } else if constexpr (kWords == 2) {
    store(reinterpret_cast<uint2*>(out + e), make_uint2(out_word<O>(acc, 0), out_word<O>(acc, 1)));
  } else {
#pragma unroll
    for (int c = 0; c < kWords / 4; ++c)
      store(reinterpret_cast<uint4*>(out + e) + c,
            make_uint4(out_word<O>(acc, 4 * c), out_word<O>(acc, 4 * c + 1),
                       out_word<O>(acc, 4 * c + 2), out_word<O>(acc, 4 * c + 3)));
  }
}

// True when a pointer and a row stride keep every row start 16-byte aligned.
inline bool rows_aligned16(const void* p, int64_t stride_elems, std::size_t elem_size) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0 && (stride_elems * elem_size) % 16 == 0;
}

// ---- launcher dispatch over the dtypes ----
// Type tags keep the dispatch C++17 (nvcc compiles the GPU sources as C++17): the callee writes
// `[&](auto v, auto i, auto o) { using V = typename decltype(v)::type; ... }`.
template <class T>
struct Tag {
  using type = T;
};

// Calls f(Tag<V>, Tag<I>, Tag<O>) for values V in {float, bf16}, indices I in {int32, int64},
// output O in {float, bf16}.
template <class F>
void dispatch_fwd(const FwdParams& p, F&& f) {
  auto with_out = [&](auto v, auto i) {
    if (p.out_dtype == DType::bf16)
      f(v, i, Tag<__nv_bfloat16>{});
    else
      f(v, i, Tag<float>{});
  };
  auto with_idx = [&](auto v) {
    if (p.index_dtype == DType::i32)
      with_out(v, Tag<int32_t>{});
    else
      with_out(v, Tag<int64_t>{});
  };
  if (p.values_dtype == DType::bf16)
    with_idx(Tag<__nv_bfloat16>{});
  else
    with_idx(Tag<float>{});
}

// Calls f(Tag<V>, Tag<I>).
template <class F>
void dispatch_bwd(const BwdParams& p, F&& f) {
  auto with_idx = [&](auto v) {
    if (p.index_dtype == DType::i32)
      f(v, Tag<int32_t>{});
    else
      f(v, Tag<int64_t>{});
  };
  if (p.values_dtype == DType::bf16)
    with_idx(Tag<__nv_bfloat16>{});
  else
    with_idx(Tag<float>{});
}

inline int64_t values_stride(const FwdParams& p) {
  return p.values_stride ? p.values_stride : p.dim;
}
inline int64_t values_stride(const BwdParams& p) {
  return p.values_stride ? p.values_stride : p.dim;
}
inline int64_t out_stride(const FwdParams& p) { return p.out_stride ? p.out_stride : p.dim; }

// ---- dw[b,j] = dy[b,:] · V[idx[b,j],:], a warp per (bag, slot) ----
// Each warp sums its lanes' strided partial products, then reduces by shuffles in a fixed order:
// deterministic. Used by every backward variant that does not fuse dw into its pass over V.
constexpr int kDwWarps = 8;

template <class V, class I>
__global__ void __launch_bounds__(kDwWarps * 32)
    dw_warp_per_slot_kernel(const V* __restrict__ values, const I* __restrict__ indices,
                            const float* __restrict__ dy, float* __restrict__ dw, int64_t slots,
                            int64_t k, int64_t dim, int64_t stride) {
  const int lane = threadIdx.x % 32;
  for (int64_t slot = static_cast<int64_t>(blockIdx.x) * kDwWarps + threadIdx.x / 32; slot < slots;
       slot += static_cast<int64_t>(gridDim.x) * kDwWarps) {
    const int64_t b = slot / k;
    const V* row = values + load_index(indices, slot) * stride;
    const float* g = dy + b * dim;
    float acc = 0.f;
    for (int64_t d = lane; d < dim; d += 32) acc += to_float(row[d]) * __ldg(g + d);
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
    if (lane == 0) dw[slot] = acc;
  }
}

template <class V, class I>
void launch_dw_warp_per_slot(const BwdParams& p, Stream stream) {
  const int64_t slots = p.batch * p.k;
  launch_kernel("embbag_dw_warp_per_slot", dw_warp_per_slot_kernel<V, I>,
                dim3(grid_cap(ceil_div(slots, kDwWarps))), dim3(kDwWarps * 32), 0, stream,
                static_cast<const V*>(p.values), static_cast<const I*>(p.indices), p.grad_out,
                p.grad_weights, slots, p.k, p.dim, values_stride(p));
}

}  // namespace MEMLAYERS_TARGET_NS
}  // namespace memlayers::embbag
