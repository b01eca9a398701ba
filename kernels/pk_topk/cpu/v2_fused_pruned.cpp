// v2_fused_pruned — the product-key top-k search with scoring and selection fused, over
// v1_blas_select:
//  - never materialises the (B, n_keys) score matrices: a block of up to 96 queries (both halves
//    packed, fp32, normalised; ~192 KiB, L2) is scored against 1024 keys at a time by a Highway
//    register-tile micro-kernel (runtime dispatch; on AVX2 6 queries × 16 keys, 12 accumulators,
//    one broadcast and two FMAs per query and d), the keys packed once per call into [d][16]
//    panels that stay in L1 while every query of the block passes over them;
//  - selects from that cache-hot (rows × 1024) chunk right away, per (row, half), with a threshold
//    filter: the chunk's own lower bound on the k-th best (the k-th largest of the values held
//    by a per-lane running top-m, m = 2·⌈k/lanes⌉ up to 8, kept in registers during one SIMD pass,
//    closed in on by bisection: select-inl.h's LaneBound) and the running k-th best of the
//    earlier chunks; one SIMD comparison pair per 8 scores rejects ~95% of them, survivors
//    (~k + a few) become integer rank keys (score bits made monotone, index complemented: one
//    compare, no NaN branch), and the k best of them are put in order by counting, each key's
//    place the number of keys above it (LargestSorted);
//  - the pruned k×k candidate step ((i+1)(j+1) <= k, further cut at the better k-th sum of row 0
//    and column 0) on rank keys, shared with v1;
//  - threads over (head, query block) (kernels/common/parallel.h). No OpenBLAS call.
// Why a micro-kernel rather than OpenBLAS sgemm on a cache-resident tile: single-threaded OpenBLAS
// measured 72-77 GFLOP/s per core on the (96 × 1024 × 256) tile and 84 on a whole
// (1024 × 1024 × 256) product; the micro-kernel ~83 (perf share × CPU time) inside v2, with the
// selection reading its output while it is hot.
// A running sorted top-k per row (insert each survivor) was tried first: ~143 insertions per row
// half for k = 32 made selection as costly as scoring; a compacting buffer ~40%; the per-chunk
// bound brought it to ~25% of the time. Counting in place of nth_element and sort (the bound, the
// lists' order, the candidate step) then took bench_pk_topk from 88 to 77 ms at the default
// shape (second Xeon host, reports/cpu-intel-xeon) and from 0.88 to 0.43 ms at the harness's
// (B 768, h 2, n_keys 128, n 16, k 8), where selection had been ~70% of the search.
// Bottleneck it targets: v1's score-matrix traffic and its nth_element over every score; what
// remains is the 2·B·h·n_keys·k_dim flops of scoring (~57% of the time, FMA-bound) and selection.
// Measured (scratch timing program, 2-core AMD EPYC VM shared with other jobs, load average 50-250
// during the runs, so CPU time is the steadier figure; v1 and v2 interleaved in the same process,
// 5 repeats each, medians): B=4096, h=4, n_keys=1024, k_dim=512, k=32, fp32, 2 threads —
// v1_blas_select 993-1019 ms wall / 651-674 ms CPU, v2_fused_pruned 467-487 ms wall / 310-322 ms
// CPU: 2.06-2.13x. One thread, B=1024: v1 158 ms, v2 78-79 ms CPU (2.0x).
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <vector>

#include <hwy/aligned_allocator.h>

#include "common/parallel.h"
#include "pk_topk/cpu/common.h"
#include "pk_topk/cpu/select.h"
#include "pk_topk/pk_topk.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "pk_topk/cpu/v2_fused_pruned.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>

#include "pk_topk/cpu/select-inl.h"

HWY_BEFORE_NAMESPACE();
namespace memlayers::pk_topk::cpu {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

using DF = hn::ScalableTag<float>;
constexpr int kMR = 6;            // query rows per register tile
constexpr int64_t kChunk = 1024;  // keys scored per row before a selection pass

// The sub-keys of every (head, half), fp32 (normalised), in panels of nr keys: panel j holds keys
// [j·nr, j·nr + nr) as [d][nr], zero-padded past n_keys.
struct PackedKeys {
  int64_t nr, panels, half;
  hwy::AlignedFreeUniquePtr<float[]> data;
  const float* panel(int64_t head_half, int64_t j) const {
    return data.get() + (head_half * panels + j) * nr * half;
  }
};

PackedKeys PackKeys(const FwdParams& p, int64_t nr) {
  const int64_t half = p.k_dim / 2, nk = p.n_keys;
  PackedKeys pk{nr, (nk + nr - 1) / nr, half, nullptr};
  const int64_t per = pk.panels * nr * half, jobs = p.heads * 2 * pk.panels;
  pk.data = hwy::AllocateAligned<float>(static_cast<std::size_t>(2 * p.heads * per));
  parallel_for(jobs, balanced_grain(jobs, std::max<int64_t>(1, 4096 / (nr * half))),
               [&](int64_t j0, int64_t j1) {
                 std::vector<float> row(static_cast<std::size_t>(half));
                 for (int64_t j = j0; j < j1; ++j) {
                   const int64_t hh = j / pk.panels, pan = j % pk.panels;
                   const int64_t h = hh / 2, c = hh % 2;
                   float* dst = pk.data.get() + (hh * pk.panels + pan) * nr * half;
                   for (int64_t t = 0; t < nr; ++t) {
                     const int64_t key = pan * nr + t;
                     if (key < nk)
                       load_row(c == 0 ? p.keys1 : p.keys2, p.dtype, (h * nk + key) * half, half,
                                p.qk_norm, row.data());
                     else
                       std::fill(row.begin(), row.end(), 0.0f);
                     for (int64_t d = 0; d < half; ++d) dst[d * nr + t] = row[d];
                   }
                 }
               });
  return pk;
}

// The per-row state of one query block.
struct BlockState {
  std::vector<float> qpack;  // [half c][group][d][rows of the group]
  Scratch<float> scores;     // [row][chunk key]: the block's scores for one chunk of keys
  Scratch<uint64_t> keys;
  std::vector<TopKBuffer> lists;  // [row][half]
  std::vector<Entry> best;        // the two sorted half lists of one row
  std::vector<uint64_t> cand;
};

// Scores MR queries (packed [d][MR]) against one key panel ([d][nr], nr = 2 vectors) into
// out[r·ld + 0, nr): one broadcast and two FMAs per query and d. For the last rows of a block.
template <int MR>
HWY_NOINLINE void TilePanel(const float* HWY_RESTRICT a, const float* HWY_RESTRICT b, int64_t half,
                            float* HWY_RESTRICT out, int64_t ld) {
  const DF df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  hn::Vec<DF> c0[MR], c1[MR];
  for (int r = 0; r < MR; ++r) c0[r] = c1[r] = hn::Zero(df);
  for (int64_t d = 0; d < half; ++d) {
    const auto b0 = hn::Load(df, b + d * 2 * N), b1 = hn::Load(df, b + d * 2 * N + N);
    for (int r = 0; r < MR; ++r) {
      const auto av = hn::Set(df, a[d * MR + r]);
      c0[r] = hn::MulAdd(av, b0, c0[r]);
      c1[r] = hn::MulAdd(av, b1, c1[r]);
    }
  }
  for (int r = 0; r < MR; ++r) {
    hn::StoreU(c0[r], df, out + r * ld);
    hn::StoreU(c1[r], df, out + r * ld + N);
  }
}

// The full-height tile with its twelve accumulators as named variables: GCC keeps the array
// version's accumulators in registers too, but also zero-fills stack copies of the arrays on
// every call (two `rep stos`, measurable at 256 iterations per call).
HWY_NOINLINE void TilePanel6(const float* HWY_RESTRICT a, const float* HWY_RESTRICT b, int64_t half,
                             float* HWY_RESTRICT out, int64_t ld) {
  const DF df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  auto c00 = hn::Zero(df), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
  auto c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
  for (int64_t d = 0; d < half; ++d, a += 6) {
    const auto b0 = hn::Load(df, b + d * 2 * N), b1 = hn::Load(df, b + d * 2 * N + N);
    auto av = hn::Set(df, a[0]);
    c00 = hn::MulAdd(av, b0, c00), c01 = hn::MulAdd(av, b1, c01);
    av = hn::Set(df, a[1]);
    c10 = hn::MulAdd(av, b0, c10), c11 = hn::MulAdd(av, b1, c11);
    av = hn::Set(df, a[2]);
    c20 = hn::MulAdd(av, b0, c20), c21 = hn::MulAdd(av, b1, c21);
    av = hn::Set(df, a[3]);
    c30 = hn::MulAdd(av, b0, c30), c31 = hn::MulAdd(av, b1, c31);
    av = hn::Set(df, a[4]);
    c40 = hn::MulAdd(av, b0, c40), c41 = hn::MulAdd(av, b1, c41);
    av = hn::Set(df, a[5]);
    c50 = hn::MulAdd(av, b0, c50), c51 = hn::MulAdd(av, b1, c51);
  }
  hn::StoreU(c00, df, out), hn::StoreU(c01, df, out + N);
  hn::StoreU(c10, df, out + ld), hn::StoreU(c11, df, out + ld + N);
  hn::StoreU(c20, df, out + 2 * ld), hn::StoreU(c21, df, out + 2 * ld + N);
  hn::StoreU(c30, df, out + 3 * ld), hn::StoreU(c31, df, out + 3 * ld + N);
  hn::StoreU(c40, df, out + 4 * ld), hn::StoreU(c41, df, out + 4 * ld + N);
  hn::StoreU(c50, df, out + 5 * ld), hn::StoreU(c51, df, out + 5 * ld + N);
}

using TileFn = void (*)(const float*, const float*, int64_t, float*, int64_t);
constexpr TileFn kTiles[kMR + 1] = {nullptr,      TilePanel<1>, TilePanel<2>, TilePanel<3>,
                                    TilePanel<4>, TilePanel<5>, TilePanel6};

void Block(const FwdParams& p, const PackedKeys& pk, int64_t h, int64_t b0, int64_t rows,
           BlockState& st) {
  const int64_t half = pk.half, k = p.k, nk = p.n_keys, H = p.heads, nr = pk.nr;
  const int64_t chunk_panels = std::clamp<int64_t>(kChunk / nr, 1, pk.panels);
  const int64_t ld = chunk_panels * nr;
  // Pack the block's query halves as [c][group of MR rows][d][row in group].
  st.qpack.resize(static_cast<std::size_t>(2 * rows * half));
  std::vector<float> row(static_cast<std::size_t>(half));
  for (int c = 0; c < 2; ++c)
    for (int64_t r = 0; r < rows; ++r) {
      load_row(p.queries, p.dtype, ((b0 + r) * H + h) * p.k_dim + c * half, half, p.qk_norm,
               row.data());
      const int64_t g0 = r / kMR * kMR, mr = std::min<int64_t>(kMR, rows - g0);
      float* dst = st.qpack.data() + c * rows * half + g0 * half;
      for (int64_t d = 0; d < half; ++d) dst[d * mr + (r - g0)] = row[d];
    }
  float* scores = st.scores.at_least(rows * ld);
  const int64_t cap = k + ld;  // the k best so far plus one chunk
  uint64_t* keys = st.keys.at_least(rows * 2 * cap);
  st.lists.resize(static_cast<std::size_t>(rows * 2));
  for (int64_t i = 0; i < rows * 2; ++i) st.lists[i].reset(k, keys + i * cap);

  for (int c = 0; c < 2; ++c)
    for (int64_t j0 = 0; j0 < pk.panels; j0 += chunk_panels) {
      const int64_t j1 = std::min(pk.panels, j0 + chunk_panels);
      // A panel stays in L1 while every group of the block passes over it; the block's scores
      // for the chunk (rows × 1024 keys) stay in L2 for the selection right after.
      for (int64_t j = j0; j < j1; ++j) {
        const float* panel = pk.panel(h * 2 + c, j);
        for (int64_t g0 = 0; g0 < rows; g0 += kMR) {
          const int64_t mr = std::min<int64_t>(kMR, rows - g0);
          kTiles[mr](st.qpack.data() + c * rows * half + g0 * half, panel, half,
                     scores + g0 * ld + (j - j0) * nr, ld);
        }
      }
      const int64_t base = j0 * nr, n = std::min(nk, j1 * nr) - base;
      for (int64_t r = 0; r < rows; ++r) {
        TopKBuffer& l = st.lists[r * 2 + c];
        l.compact();  // the k best of the earlier chunks, and their k-th best as threshold
        SelectChunk(scores + r * ld, n, base, l);
      }
    }
  FinishRows(p, h, b0, rows, st.lists, st.best, st.cand);
}

void Forward(const FwdParams& p) {
  const DF df;
  const int64_t nr = 2 * static_cast<int64_t>(hn::Lanes(df)), half = p.k_dim / 2;
  const PackedKeys pk = PackKeys(p, nr);
  // Query block: both packed halves within ~192 KiB of L2, a multiple of the tile height, at
  // most 96 rows. Each key panel is then read from L3 once per 96 queries; the block's chunk of
  // scores (96 × 1024 × 4 bytes) spills from L2 to L3, which measured cheaper than smaller
  // blocks (more panel traffic) or smaller chunks (more selection passes): 24/48/96/192 rows ×
  // 256/512/1024 keys tried, 96 × 1024 best by 5-10%.
  const int64_t fit = (192 << 10) / (2 * half * 4);
  const int64_t mb = std::clamp<int64_t>(fit / kMR * kMR, kMR, 96);
  ForEachBlock<BlockState>(p, mb, [&](int64_t h, int64_t b0, int64_t rows, BlockState& st) {
    Block(p, pk, h, b0, rows, st);
  });
}

}  // namespace HWY_NAMESPACE
}  // namespace memlayers::pk_topk::cpu
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace memlayers::pk_topk::cpu {
HWY_EXPORT(Forward);
namespace {

MEMLAYERS_REGISTER(Fwd, Variant<FwdParams>{
                            .name = "v2_fused_pruned",
                            .backend = Backend::cpu,
                            .launch =
                                [](const FwdParams& p, Stream) {
                                  HWY_DYNAMIC_DISPATCH(Forward)
                                  (p);
                                },
                            .summary = "Highway 6x16 register tiles per 96-query block and "
                                       "1024-key chunk, selected while cache-hot through a SIMD "
                                       "threshold filter, no score matrix, pruned k×k candidates",
                            .deterministic = true,
                        });

}  // namespace
}  // namespace memlayers::pk_topk::cpu
#endif  // HWY_ONCE
