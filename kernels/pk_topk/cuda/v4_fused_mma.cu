// v4: v3's fused search with the scores on tensor cores. A block takes 16 queries of one head
// (the mma's M; with W < 8 warps, 2·W queries and the other rows zero) and streams the head's
// sub-keys through shared memory in tiles of 128 keys × 16 32-bit words per row (rows padded to
// 20 words so the fragment reads of a warp hit 32 distinct banks). A word holds two bf16 or one
// fp32, so a tile covers 32 or 16 dims; either way a k-step is 8 words and a lane reads the same
// words (kernels/common/mma.cuh):
//   bf16: mma.sync m16n8k16, bf16 operands as stored, fp32 accumulators;
//   fp32: mma_3xtf32_m16n8k8, each operand split into tf32 hi + lo and three m16n8k8 tf32 mma
//         (A_lo·B_hi + A_hi·B_lo + A_hi·B_hi), each product within a few 2⁻²² of |q_i·k_i|:
//         fp32-level scores, which the fp32 tests' tolerance (1e-5 of ‖q‖·‖k‖) holds them to.
// Each warp owns 16 / W of the tile's 16 n8 column blocks. The finished 16 × 128 score tile goes
// through shared memory (rows padded to 136 floats: conflict-free 8-byte stores from the
// accumulator layout) to the same warp top-k lists and pruned candidate step as v3.
// qk_norm as in v3: the key's sum of squares from the same shared tile, the scales in fp64.
// Global loads are 16-byte vectors when the half-width is a multiple of 16 bytes' elements (8
// bf16, 4 fp32) and the inputs are 16-byte aligned (the paper's shapes), element loads otherwise.
//
// Predicted gain over v3 at the paper's shape (B = 4096, h = 4, n_keys = 1024, n = 512): the
// scoring is 2·B·h·n_keys·n = 17.2 GFLOP; v3 runs it as FFMA, at most ~60 TFLOP/s on an
// H100/H200's CUDA cores (~0.3 ms, plus shared-memory traffic that caps it lower).
//   bf16: on tensor cores (~990 dense bf16 TFLOP/s peak, mma.sync reaching perhaps half) the
//         scoring drops to ~0.04 ms and the kernel is bound by its selection: the B·h·2·n_keys
//         offers through the warp lists and the pruned pair step, which v3 and v4 share.
//         Expect 2–4× over v3.
//   fp32: three tf32 mma per product (~495 dense tf32 TFLOP/s peak, so ~165 for 3xTF32, perhaps
//         half of it through mma.sync) put the scoring near 0.2 ms, and the fp32 operand tiles
//         double the shared-memory fills per key. Expect 1.5–2× over v3. The bench's fp32 compute
//         floor is cuBLAS's sgemm without TF32 (~50 TFLOP/s, ~0.35 ms), so this is the variant
//         that can come within 1.3× of it.
// Bottlenecks left: the offer rounds (a ballot and an atomic per 32 candidates), no cp.async
// double-buffering of the key tiles, 32-bit fragment loads where ldmatrix would take one
// instruction per 8×8 block, and the tf32 split of every key fragment redone by each of the
// block's 16 query rows' warps (splitting once into hi and lo tiles would cost twice the shared
// memory).
// Registers (sm_90, nvcc 13): see the ptxas report (tools/check_spills.py); the minimum-blocks
// bound at 8 warps keeps two blocks of 256 threads on an SM, as v3, and keeps ptxas from
// spilling around the mma (with none it chose ~80 registers and spilled).
// Measured: not yet on a GPU (simt-correct: simt emulates both mma shapes fragment-exactly).
#include "common/mma.cuh"
#include "pk_topk/cuda/common.cuh"

namespace memlayers::pk_topk {
namespace {

constexpr int kMaxWarps = 8;
constexpr int kQueriesPerWarp = 2;
constexpr int kRows = 16;                    // the mma's M
constexpr int kTileKeys = 128;               // 16 column blocks of 8 keys
constexpr int kTileWords = 16;               // 32-bit words of a row per tile: two k-steps
constexpr int kWords = kTileWords + 4;       // per shared row, padded
constexpr int kScoreStride = kTileKeys + 8;  // floats per score-tile row, padded
constexpr int kKeysPerThreadMax = kTileKeys / 32;
constexpr int kMinList = 64;
constexpr int64_t kSmemBudget = 200 * 1024;

// Shared memory: per warp two row workspaces, the pair offsets, the query and key tiles (words),
// the score tile and the tile's key sums of squares. Every part a multiple of 16 bytes.
struct Layout {
  int warps = 0;
  int64_t rows_bytes = 0, off_bytes = 0, q_bytes = 0, k_bytes = 0, s_bytes = 0, n_bytes = 0;
  int64_t total() const { return rows_bytes + off_bytes + q_bytes + k_bytes + s_bytes + n_bytes; }
};

Layout layout(const RowSpace& sp, int warps) {
  Layout l;
  l.warps = warps;
  l.rows_bytes = int64_t{warps} * kQueriesPerWarp * sp.bytes();
  l.rows_bytes = (l.rows_bytes + 15) / 16 * 16;
  l.off_bytes = ((int64_t{sp.k} + 1) * 4 + 15) / 16 * 16;
  l.q_bytes = int64_t{kRows} * kWords * 4;
  l.k_bytes = int64_t{kTileKeys} * kWords * 4;
  l.s_bytes = int64_t{warps} * kQueriesPerWarp * kScoreStride * 4;
  l.n_bytes = int64_t{kTileKeys} * 4;
  return l;
}

Layout choose_layout(const RowSpace& sp) {
  for (int w = kMaxWarps; w > 1; w /= 2)
    if (layout(sp, w).total() <= kSmemBudget) return layout(sp, w);
  return layout(sp, 1);
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

// Fills `rows` shared rows of kTileWords words from global rows src(r) (nullptr: past the end)
// for elements [d0, d0 + kTileWords·kPerWord) of `half`; zeros elsewhere. Vector: 16-byte loads
// (half a multiple of 16 bytes' elements, 16-byte aligned rows), else element loads.
template <class T, class Src>
__device__ __forceinline__ void fill_tile(uint32_t* __restrict__ dst, int rows, int64_t d0,
                                          int64_t half, bool vec, const Src& src) {
  constexpr int kVec = 4 * kPerWord<T>;  // elements per 16-byte load
  if (vec) {
    for (int x = threadIdx.x; x < rows * (kTileWords / 4); x += blockDim.x) {
      const int r = x / (kTileWords / 4), c = x % (kTileWords / 4);
      const T* row = src(r);
      uint4 v = make_uint4(0u, 0u, 0u, 0u);
      if (row && d0 + kVec * c < half) v = *reinterpret_cast<const uint4*>(row + d0 + kVec * c);
      *reinterpret_cast<uint4*>(dst + r * kWords + 4 * c) = v;
    }
  } else {
    for (int x = threadIdx.x; x < rows * kTileWords; x += blockDim.x) {
      const int r = x / kTileWords, w = x % kTileWords;
      dst[r * kWords + w] = load_word(src(r), d0 + kPerWord<T> * w, half);
    }
  }
}

template <class T, class I, int W>
__global__ void __launch_bounds__(W * 32, W == 8 ? 2 : 1)
    fused_mma_kernel(const T* __restrict__ q, const T* __restrict__ k1, const T* __restrict__ k2,
                     float* __restrict__ scores, I* __restrict__ indices, int64_t batch,
                     int64_t heads, int64_t n_keys, int64_t k_dim, bool norm, bool vec, RowSpace sp,
                     Layout l) {
  constexpr int kBlocksPerWarp = kTileKeys / 8 / W;  // n8 column blocks per warp
  constexpr int kTq = W * kQueriesPerWarp;           // queries per block
  MEMLAYERS_DYNAMIC_SHARED(unsigned char, smem);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  int* off = reinterpret_cast<int*>(smem + l.rows_bytes);
  uint32_t* qs = reinterpret_cast<uint32_t*>(smem + l.rows_bytes + l.off_bytes);
  uint32_t* ks = qs + kRows * kWords;
  float* st = reinterpret_cast<float*>(ks + kTileKeys * kWords);
  float* kss_tile = st + kTq * kScoreStride;
  pair_offsets(off, sp.k);
  // Rows the query tile never fills (2·W .. 15) stay zero.
  for (int x = threadIdx.x; x < kRows * kWords; x += blockDim.x) qs[x] = 0u;
  __syncthreads();
  const RowLists R0 = carve_row(smem + (warp * kQueriesPerWarp + 0) * sp.bytes(), sp);
  const RowLists R1 = carve_row(smem + (warp * kQueriesPerWarp + 1) * sp.bytes(), sp);
  const Group grp = warp_group();
  const int64_t half = k_dim / 2, btiles = ceil_div(batch, int64_t{kTq});
  const double inv_half = 1.0 / static_cast<double>(half);

  for (int64_t tile = blockIdx.x; tile < heads * btiles; tile += gridDim.x) {
    const int64_t h = tile / btiles, b0 = tile % btiles * kTq;
    const int64_t bw = b0 + warp * kQueriesPerWarp;  // this warp's first query
    for (int c = 0; c < 2; ++c) {
      const T* keys = c == 0 ? k1 : k2;
      const int64_t qoff = c * half;
      double qinv[kQueriesPerWarp];
      pair_query_scales(q, bw, batch, heads, h, k_dim, qoff, norm, qinv);
      const TopList L0 = c == 0 ? R0.half[0] : R0.half[1];
      const TopList L1 = c == 0 ? R1.half[0] : R1.half[1];
      list_init(L0, grp);
      list_init(L1, grp);
      const auto query_row = [&](int r) -> const T* {
        return b0 + r < batch ? q + ((b0 + r) * heads + h) * k_dim + qoff : nullptr;
      };
      for (int64_t key0 = 0; key0 < n_keys; key0 += kTileKeys) {
        const auto key_row = [&](int r) -> const T* {
          return key0 + r < n_keys ? keys + (h * n_keys + key0 + r) * half : nullptr;
        };
        float acc[kBlocksPerWarp][4] = {};
        float kss[kKeysPerThreadMax] = {};
        for (int64_t d0 = 0; d0 < half; d0 += kTileWords * kPerWord<T>) {
          __syncthreads();  // the previous tiles are no longer read
          fill_tile<T>(qs, kTq, d0, half, vec, query_row);
          fill_tile<T>(ks, kTileKeys, d0, half, vec, key_row);
          __syncthreads();
          if (norm)
#pragma unroll
            for (int j = 0; j < kKeysPerThreadMax; ++j) {
              const int r = threadIdx.x + j * W * 32;
              if (r < kTileKeys)
                for (int w = 0; w < kTileWords; ++w) add_squares<T>(kss[j], ks[r * kWords + w]);
            }
#pragma unroll
          for (int kk = 0; kk < kTileWords / 8; ++kk) {
            const uint32_t a[4] = {qs[g * kWords + kk * 8 + t], qs[(g + 8) * kWords + kk * 8 + t],
                                   qs[g * kWords + kk * 8 + 4 + t],
                                   qs[(g + 8) * kWords + kk * 8 + 4 + t]};
            [[maybe_unused]] uint32_t a_hi[4], a_lo[4];
            if constexpr (kPerWord<T> == 1) tf32_split(a, a_hi, a_lo);
#pragma unroll
            for (int nb = 0; nb < kBlocksPerWarp; ++nb) {
              const uint32_t* kr = ks + ((warp * kBlocksPerWarp + nb) * 8 + g) * kWords + kk * 8;
              const uint32_t b[2] = {kr[t], kr[4 + t]};
              if constexpr (kPerWord<T> == 1)
                mma_3xtf32_m16n8k8(acc[nb], a_hi, a_lo, b);
              else
                mma_bf16_m16n8k16(acc[nb], a, b);
            }
          }
        }
        // The accumulators of this warp's column blocks into the score tile (query rows < 2·W).
#pragma unroll
        for (int nb = 0; nb < kBlocksPerWarp; ++nb) {
          const int col = (warp * kBlocksPerWarp + nb) * 8 + 2 * t;
          if (g < kTq)
            *reinterpret_cast<float2*>(st + g * kScoreStride + col) =
                make_float2(acc[nb][0], acc[nb][1]);
          if (g + 8 < kTq)
            *reinterpret_cast<float2*>(st + (g + 8) * kScoreStride + col) =
                make_float2(acc[nb][2], acc[nb][3]);
        }
        if (norm)
#pragma unroll
          for (int j = 0; j < kKeysPerThreadMax; ++j) {
            const int r = threadIdx.x + j * W * 32;
            if (r < kTileKeys) kss_tile[r] = kss[j];
          }
        __syncthreads();
        const float* s0 = st + (warp * kQueriesPerWarp) * kScoreStride;
#pragma unroll
        for (int u = 0; u < kTileKeys / 32; ++u) {
          const int col = lane + 32 * u;
          const int64_t key = key0 + col;
          const double kinv =
              norm ? 1.0 / sqrt(static_cast<double>(kss_tile[col]) * inv_half + kNormEps) : 1.0;
          const uint32_t tie = static_cast<uint32_t>(key);
          const float x0 = s0[col], x1 = s0[kScoreStride + col];
          const float v0 = norm ? static_cast<float>(x0 * (qinv[0] * kinv)) : x0;
          const float v1 = norm ? static_cast<float>(x1 * (qinv[1] * kinv)) : x1;
          list_offer(L0, key < n_keys && bw < batch, make_key(v0, tie), grp);
          list_offer(L1, key < n_keys && bw + 1 < batch, make_key(v1, tie), grp);
        }
      }
      list_finish(L0, grp);
      list_finish(L1, grp);
    }
    pair_steps(R0, R1, sp, off, n_keys, scores, indices, bw, batch, heads, h, grp);
  }
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

template <class T, class I, int W>
void launch_with(const FwdParams& p, const RowSpace& sp, const Layout& l, Stream stream) {
  const int64_t tiles = p.heads * ceil_div(p.batch, int64_t{W} * kQueriesPerWarp);
  const bool vec = (p.k_dim / 2) % (4 * kPerWord<T>) == 0 && aligned16(p.queries) &&
                   aligned16(p.keys1) && aligned16(p.keys2);
  launch_kernel("pk_topk_fwd_v4_fused_mma", fused_mma_kernel<T, I, W>, dim3(grid_cap(tiles)),
                dim3(W * 32), static_cast<std::size_t>(l.total()), stream,
                static_cast<const T*>(p.queries), static_cast<const T*>(p.keys1),
                static_cast<const T*>(p.keys2), p.scores, static_cast<I*>(p.indices), p.batch,
                p.heads, p.n_keys, p.k_dim, p.qk_norm, vec, sp, l);
}

void launch(const FwdParams& p, Stream stream) {
  dispatch(p, [&](auto t, auto i) {
    using T = typename decltype(t)::type;
    using I = typename decltype(i)::type;
    const RowSpace sp = row_space(p.k, p.n_keys, kMinList);
    const Layout l = choose_layout(sp);
    switch (l.warps) {
      case 8:
        return launch_with<T, I, 8>(p, sp, l, stream);
      case 4:
        return launch_with<T, I, 4>(p, sp, l, stream);
      case 2:
        return launch_with<T, I, 2>(p, sp, l, stream);
      default:
        return launch_with<T, I, 1>(p, sp, l, stream);
    }
  });
}

std::string supports(const FwdParams& p) {
  const Layout l = choose_layout(row_space(p.k, p.n_keys, kMinList));
  if (l.total() > 227 * 1024)
    return "k = " + std::to_string(p.k) + " needs " + std::to_string(l.total()) +
           " bytes of shared memory for one warp's lists; at most 227 KiB";
  return "";
}

MEMLAYERS_REGISTER(Fwd,
                   Variant<FwdParams>{"v4_fused_mma", MEMLAYERS_KERNEL_BACKEND, launch, supports,
                                      "v3 with the scores on tensor cores: bf16 mma.sync "
                                      "m16n8k16, fp32 as 3xTF32 m16n8k8; no score matrix",
                                      true});

}  // namespace
}  // namespace memlayers::pk_topk
