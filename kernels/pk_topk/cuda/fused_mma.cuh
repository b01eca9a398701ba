// The tensor-core fused product-key search shared by pk_topk v4_fused_mma (two queries per warp,
// two blocks an SM) and v5_fused_mma_wide (four queries per warp: twice the queries per key tile):
// one kernel, templated on the queries per warp. The design is in v4_fused_mma.cu's header, what
// the wider block changes in v5_fused_mma_wide.cu's.
#pragma once
#include "common/async_copy.cuh"
#include "common/mma.cuh"
#include "pk_topk/cuda/common.cuh"

namespace memlayers::pk_topk {
namespace {

constexpr int kMaxWarps = 8;
constexpr int kRows = 16;                    // the mma's M
constexpr int kTileKeys = 128;               // 16 column blocks of 8 keys
constexpr int kTileWords = 16;               // 32-bit words of a row per tile: two k-steps
constexpr int kWords = kTileWords + 4;       // per shared row, padded
constexpr int kStages = 4;                   // tile pairs in the cp.async ring: 3 in flight
constexpr int kScoreStride = kTileKeys + 8;  // floats per score-tile row, padded
constexpr int kKeysPerThreadMax = kTileKeys / 32;
constexpr int kMinList = 64;
constexpr int64_t kSmemBudget = 200 * 1024;
constexpr int64_t kSmemMax = 227 * 1024;  // dynamic shared memory of one block (sm_90)

// Shared memory: a row workspace per query, the pair offsets, the ring of kStages stages (each a
// query tile and a key tile of kTileWords words a row), the score tile and the tile's key sums of
// squares. Every part a multiple of 16 bytes.
struct Layout {
  int warps = 0;
  int64_t rows_bytes = 0, off_bytes = 0, stage_bytes = 0, s_bytes = 0, n_bytes = 0;
  int64_t total() const {
    return rows_bytes + off_bytes + kStages * stage_bytes + s_bytes + n_bytes;
  }
};

// The query rows of the block's query tile: whole m16 row tiles.
constexpr int64_t row_tiles(int64_t queries) { return (queries + kRows - 1) / kRows; }

Layout layout(const RowSpace& sp, int warps, int queries_per_warp) {
  Layout l;
  l.warps = warps;
  const int64_t queries = int64_t{warps} * queries_per_warp;
  l.rows_bytes = queries * sp.bytes();
  l.rows_bytes = (l.rows_bytes + 15) / 16 * 16;
  l.off_bytes = ((int64_t{sp.k} + 1) * 4 + 15) / 16 * 16;
  l.stage_bytes = (row_tiles(queries) * kRows + kTileKeys) * kWords * 4;
  l.s_bytes = queries * kScoreStride * 4;
  l.n_bytes = int64_t{kTileKeys} * 4;
  return l;
}

// Two queries per warp, 8 warps while the lists fit kSmemBudget (two blocks an SM), else fewer.
// Wide: four queries per warp at 8 warps (32 queries, two row tiles), whether or not it fits
// (fused_mma_supports says).
Layout choose_layout(const RowSpace& sp, bool wide) {
  if (wide) return layout(sp, kMaxWarps, 4);
  for (int w = kMaxWarps; w > 1; w /= 2)
    if (layout(sp, w, 2).total() <= kSmemBudget) return layout(sp, w, 2);
  return layout(sp, 1, 2);
}

// Elements of T in one 32-bit shared word: two bf16, one fp32.
template <class T>
constexpr int kPerWord = static_cast<int>(sizeof(float) / sizeof(T));

// The word of elements [d, d + kPerWord) of a global row (nullptr: past the end); zeros past
// the half-width.
__device__ __forceinline__ uint32_t load_word(const __nv_bfloat16* row, int64_t d, int64_t half) {
  const __nv_bfloat16 zero = __float2bfloat16(0.f);
  return pack_bf16(row && d < half ? row[d] : zero, row && d + 1 < half ? row[d + 1] : zero);
}
__device__ __forceinline__ uint32_t load_word(const float* row, int64_t d, int64_t half) {
  return row && d < half ? __float_as_uint(row[d]) : 0u;
}

// s += the squares of a word's elements.
template <class T>
__device__ __forceinline__ void add_squares(float& s, uint32_t x) {
  if constexpr (kPerWord<T> == 1) {
    const float v = __uint_as_float(x);
    s += v * v;
  } else {
    const float lo = bf16_lo(x), hi = bf16_hi(x);
    s += lo * lo;
    s += hi * hi;
  }
}

// Starts filling `rows` shared rows of kTileWords words from global rows src(r) (nullptr: past
// the end) for elements [d0, d0 + kTileWords·kPerWord) of `half`; zeros elsewhere. Vector:
// 16-byte cp.async copies (half a multiple of 16 bytes' elements, 16-byte aligned rows; a piece
// past the end zero-filled, its source `any`, not read), which land at the stage's wait; else
// element loads, stored before this returns.
template <class T, class Src>
__device__ __forceinline__ void start_tile(uint32_t* __restrict__ dst, int rows, int64_t d0,
                                           int64_t half, bool vec, const T* any, const Src& src) {
  constexpr int kVec = 4 * kPerWord<T>;  // elements per 16-byte copy
  if (vec) {
    for (int x = threadIdx.x; x < rows * (kTileWords / 4); x += blockDim.x) {
      const int r = x / (kTileWords / 4), c = x % (kTileWords / 4);
      const T* row = src(r);
      const bool in = row && d0 + kVec * c < half;
      cp_async_16(dst + r * kWords + 4 * c, in ? row + d0 + kVec * c : any, in ? 16 : 0);
    }
  } else {
    for (int x = threadIdx.x; x < rows * kTileWords; x += blockDim.x) {
      const int r = x / kTileWords, w = x % kTileWords;
      dst[r * kWords + w] = load_word(src(r), d0 + kPerWord<T> * w, half);
    }
  }
}

// A position in a half's search: the key tile's first key and the slice's first element.
struct StepCursor {
  int64_t key0 = 0, d0 = 0;
  // Moves to the next step (slices of `elems` elements of a `half`-element row); true when the
  // step it leaves was its key tile's last.
  __device__ __forceinline__ bool advance(int64_t half, int64_t elems) {
    d0 += elems;
    if (d0 < half) return false;
    d0 = 0;
    key0 += kTileKeys;
    return true;
  }
};

template <class T, int W, int QW>
__global__ void __launch_bounds__(W * 32, W == kMaxWarps && QW == 2 ? 2 : 1)
    fused_mma_kernel(const T* __restrict__ q, const T* __restrict__ k1, const T* __restrict__ k2,
                     float* __restrict__ scores, IndexOut indices, int64_t batch, int64_t heads,
                     int64_t n_keys, int64_t k_dim, bool norm, bool vec, RowSpace sp, Layout l) {
  static_assert(QW % 2 == 0, "a warp's queries go in pairs (pair_query_scales, pair_steps)");
  constexpr int kBlocksPerWarp = kTileKeys / 8 / W;  // n8 column blocks per warp
  constexpr int kTq = W * QW;                        // queries per block
  constexpr int kRowTiles = static_cast<int>(row_tiles(kTq));
  constexpr int kStageWords = (kRowTiles * kRows + kTileKeys) * kWords;
  MEMLAYERS_DYNAMIC_SHARED(unsigned char, smem);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  int* off = reinterpret_cast<int*>(smem + l.rows_bytes);
  uint32_t* ring = reinterpret_cast<uint32_t*>(smem + l.rows_bytes + l.off_bytes);
  float* st = reinterpret_cast<float*>(ring + kStages * kStageWords);
  float* kss_tile = st + kTq * kScoreStride;
  pair_offsets(off, sp.k);
  // Query rows no stage ever fills (kTq .. kRowTiles·16) stay zero.
  for (int x = threadIdx.x; x < kStages * kStageWords; x += blockDim.x) ring[x] = 0u;
  __syncthreads();
  RowLists R[QW];
#pragma unroll
  for (int qq = 0; qq < QW; ++qq) R[qq] = carve_row(smem + (warp * QW + qq) * sp.bytes(), sp);
  const Group grp = warp_group();
  const int64_t half = k_dim / 2, btiles = ceil_div(batch, int64_t{kTq});
  const double inv_half = 1.0 / static_cast<double>(half);
  // A half's search is `steps` steps: key tile by key tile, the elements of a row kTileWords words
  // (kPerWord elements each) at a time. Both sides walk them with a StepCursor: no 64-bit
  // division.
  constexpr int64_t kStepElems = int64_t{kTileWords} * kPerWord<T>;
  const int64_t steps = ceil_div(n_keys, int64_t{kTileKeys}) * ceil_div(half, kStepElems);

  for (int64_t tile = blockIdx.x; tile < heads * btiles; tile += gridDim.x) {
    const int64_t h = tile / btiles, b0 = tile % btiles * kTq;
    const int64_t bw = b0 + warp * QW;  // this warp's first query
    for (int c = 0; c < 2; ++c) {
      const T* keys = c == 0 ? k1 : k2;
      const int64_t qoff = c * half;
      double qinv[QW];
      TopList L[QW];
#pragma unroll
      for (int p = 0; p < QW / 2; ++p) {
        double pair[2];
        pair_query_scales(q, bw + 2 * p, batch, heads, h, k_dim, qoff, norm, pair);
        qinv[2 * p] = pair[0];
        qinv[2 * p + 1] = pair[1];
      }
#pragma unroll
      for (int qq = 0; qq < QW; ++qq) {
        L[qq] = c == 0 ? R[qq].half[0] : R[qq].half[1];  // a select: no local-memory index
        list_init(L[qq], grp);
      }
      // Starts the next step into ring slot (its number) % kStages: one cp.async group, empty
      // past the last step, so that waiting for all but the kStages − 2 newest groups always
      // means "step s landed".
      int64_t next = 0;
      StepCursor started;
      const auto start_next = [&] {
        if (next < steps) {
          const int64_t key0 = started.key0, d0 = started.d0;
          uint32_t* qs = ring + next % kStages * kStageWords;
          start_tile<T>(qs, kTq, d0, half, vec, q, [&](int r) -> const T* {
            return b0 + r < batch ? q + ((b0 + r) * heads + h) * k_dim + qoff : nullptr;
          });
          start_tile<T>(qs + kRowTiles * kRows * kWords, kTileKeys, d0, half, vec, keys,
                        [&](int r) -> const T* {
                          return key0 + r < n_keys ? keys + (h * n_keys + key0 + r) * half
                                                   : nullptr;
                        });
          started.advance(half, kStepElems);
        }
        ++next;
        cp_async_commit();
      };
#pragma unroll
      for (int s = 0; s < kStages - 1; ++s) start_next();
      float acc[kRowTiles][kBlocksPerWarp][4] = {};
      float kss[kKeysPerThreadMax] = {};
      StepCursor at;  // step s
      for (int64_t s = 0; s < steps; ++s) {
        cp_async_wait<kStages - 2>();  // this thread's copies of step s have landed
        __syncthreads();  // ... and every thread's; step s − 1's slot is no longer read
        start_next();     // step s + kStages − 1
        const uint32_t* qs = ring + s % kStages * kStageWords;
        const uint32_t* ks = qs + kRowTiles * kRows * kWords;
        if (norm)
#pragma unroll
          for (int j = 0; j < kKeysPerThreadMax; ++j) {
            const int r = threadIdx.x + j * W * 32;
            if (r < kTileKeys)
              for (int w = 0; w < kTileWords; ++w) add_squares<T>(kss[j], ks[r * kWords + w]);
          }
#pragma unroll
        for (int kk = 0; kk < kTileWords / 8; ++kk) {
          uint32_t a[kRowTiles][4];
          [[maybe_unused]] uint32_t a_hi[kRowTiles][4], a_lo[kRowTiles][4];
#pragma unroll
          for (int rt = 0; rt < kRowTiles; ++rt) {
            const uint32_t* qr = qs + (rt * kRows + g) * kWords + kk * 8;
            a[rt][0] = qr[t];
            a[rt][1] = qr[8 * kWords + t];
            a[rt][2] = qr[4 + t];
            a[rt][3] = qr[8 * kWords + 4 + t];
            if constexpr (kPerWord<T> == 1) tf32_split(a[rt], a_hi[rt], a_lo[rt]);
          }
#pragma unroll
          for (int nb = 0; nb < kBlocksPerWarp; ++nb) {
            const uint32_t* kr = ks + ((warp * kBlocksPerWarp + nb) * 8 + g) * kWords + kk * 8;
            const uint32_t b[2] = {kr[t], kr[4 + t]};
            if constexpr (kPerWord<T> == 1) {
              uint32_t b_hi[2], b_lo[2];
              tf32_split(b, b_hi, b_lo);
#pragma unroll
              for (int rt = 0; rt < kRowTiles; ++rt)
                mma_3xtf32_m16n8k8(acc[rt][nb], a_hi[rt], a_lo[rt], b_hi, b_lo);
            } else {
#pragma unroll
              for (int rt = 0; rt < kRowTiles; ++rt) mma_bf16_m16n8k16(acc[rt][nb], a[rt], b);
            }
          }
        }
        const int64_t key0 = at.key0;
        if (!at.advance(half, kStepElems)) continue;
          // The key tile's last step: the accumulators of this warp's column blocks into the score
          // tile (query rows < kTq), then every query's offers of the tile's keys.
#pragma unroll
        for (int rt = 0; rt < kRowTiles; ++rt)
#pragma unroll
          for (int nb = 0; nb < kBlocksPerWarp; ++nb) {
            const int col = (warp * kBlocksPerWarp + nb) * 8 + 2 * t, row = rt * kRows + g;
            if (row < kTq)
              *reinterpret_cast<float2*>(st + row * kScoreStride + col) =
                  make_float2(acc[rt][nb][0], acc[rt][nb][1]);
            if (row + 8 < kTq)
              *reinterpret_cast<float2*>(st + (row + 8) * kScoreStride + col) =
                  make_float2(acc[rt][nb][2], acc[rt][nb][3]);
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[rt][nb][e] = 0.f;
          }
        if (norm)
#pragma unroll
          for (int j = 0; j < kKeysPerThreadMax; ++j) {
            const int r = threadIdx.x + j * W * 32;
            if (r < kTileKeys) kss_tile[r] = kss[j];
            kss[j] = 0.f;
          }
        // Every warp's scores are in the tile; the next write to it follows the next step's
        // barrier, which no thread passes before every thread's offers here are done.
        __syncthreads();
        const float* s0 = st + (warp * QW) * kScoreStride;
#pragma unroll
        for (int u = 0; u < kTileKeys / 32; ++u) {
          const int col = lane + 32 * u;
          const int64_t key = key0 + col;
          const double kinv =
              norm ? 1.0 / sqrt(static_cast<double>(kss_tile[col]) * inv_half + kNormEps) : 1.0;
          const uint32_t tie = static_cast<uint32_t>(key);
#pragma unroll
          for (int qq = 0; qq < QW; ++qq) {
            const float x = s0[qq * kScoreStride + col];
            const float v = norm ? static_cast<float>(x * (qinv[qq] * kinv)) : x;
            list_offer(L[qq], key < n_keys && bw + qq < batch, make_key(v, tie), grp);
          }
        }
      }
#pragma unroll
      for (int qq = 0; qq < QW; ++qq) list_finish(L[qq], grp);
    }
#pragma unroll
    for (int p = 0; p < QW / 2; ++p)
      pair_steps(R[2 * p], R[2 * p + 1], sp, off, n_keys, scores, indices, bw + 2 * p, batch, heads,
                 h, grp);
  }
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

template <class T, int W, int QW>
void launch_with(const char* name, const FwdParams& p, const RowSpace& sp, const Layout& l,
                 Stream stream) {
  const int64_t tiles = p.heads * ceil_div(p.batch, int64_t{W} * QW);
  const bool vec = (p.k_dim / 2) % (4 * kPerWord<T>) == 0 && aligned16(p.queries) &&
                   aligned16(p.keys1) && aligned16(p.keys2);
  launch_kernel(name, fused_mma_kernel<T, W, QW>, dim3(grid_cap(tiles)), dim3(W * 32),
                static_cast<std::size_t>(l.total()), stream, static_cast<const T*>(p.queries),
                static_cast<const T*>(p.keys1), static_cast<const T*>(p.keys2), p.scores,
                index_out(p), p.batch, p.heads, p.n_keys, p.k_dim, p.qk_norm, vec, sp, l);
}

// Launches the configuration choose_layout(.., Wide) picks; `name` is the kernel's for errors
// and profiles.
template <bool Wide>
void launch_fused_mma(const char* name, const FwdParams& p, Stream stream) {
  dispatch_dtype(p, [&](auto t) {
    using T = typename decltype(t)::type;
    const RowSpace sp = row_space(p.k, p.n_keys, kMinList);
    const Layout l = choose_layout(sp, Wide);
    if constexpr (Wide) {
      launch_with<T, kMaxWarps, 4>(name, p, sp, l, stream);
    } else {
      switch (l.warps) {
        case 8:
          return launch_with<T, 8, 2>(name, p, sp, l, stream);
        case 4:
          return launch_with<T, 4, 2>(name, p, sp, l, stream);
        case 2:
          return launch_with<T, 2, 2>(name, p, sp, l, stream);
        default:
          return launch_with<T, 1, 2>(name, p, sp, l, stream);
      }
    }
  });
}

inline std::string fused_mma_supports(const FwdParams& p, bool wide) {
  const Layout l = choose_layout(row_space(p.k, p.n_keys, kMinList), wide);
  if (l.total() <= kSmemMax) return "";
  return "k = " + std::to_string(p.k) + " needs " + std::to_string(l.total()) +
         " bytes of shared memory for " +
         (wide ? "the wide block's 32 query lists" : "one warp's lists") + "; at most 227 KiB" +
         (wide ? " (v4_fused_mma takes it, with fewer queries a block)" : "");
}

}  // namespace
}  // namespace memlayers::pk_topk
