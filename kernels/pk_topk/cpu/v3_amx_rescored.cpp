// v3_amx_rescored — v2_fused_pruned's search with the scores on the CPU's matrix units: AMX
// tiles (Intel Sapphire Rapids and later; supports() says why not elsewhere). Over v2:
//  - a block of 96 queries (bf16, rows padded to 32, the half width to 32) is scored against each
//    1024-key chunk by amx_gemm_bf16 (common/amx.h): bf16 × bf16 products summed in fp32, 32
//    queries × 32 keys a pass, the keys packed once per call in AMX's pair layout. One core's tiles
//    ran ~850 GFLOP/s on operands from L2 (1.6 TFLOP/s from L1), where v2's fp32 FMA tiles reach
//    the ~170 GFLOP/s a core's sgemm does: the scoring went from ~70% of v2's time to ~15%;
//  - bf16 inputs: those sums are the scores (each product is exact in fp32), selected as v2 does;
//  - fp32 inputs, rounded to bf16 for the tiles: each approximate score is within a bound e of
//    the fp32 score, from the rows' actual rounding residuals δ: |q̃·k̃ - q·k| <= ‖q̃‖‖δk‖ +
//    ‖δq‖‖k‖ (Cauchy-Schwarz), plus the fp32 sums and scalings, the norms bounded from above and
//    the keys' taken as the chunk's largest (AmxBlock). Only the keys whose approximation is
//    within 2e of a lower bound on the chunk's k-th best can be among its k best; those (~42 of
//    1024 at the default shape, of which 32 are the answer) are scored again in fp32 from the
//    params' rows and go through v2's selection, so every score returned is an fp32 dot product,
//    and the result is as exact as v2's (a NaN or infinite row makes e infinite: all rescored);
//  - qk_norm: the tiles take the raw rows and the scores are scaled by r_q·r_k after.
// Bottleneck it targets: v2's FMA-bound scoring. What remains at the default shape (fp32, a perf
// profile): the rescoring (~1.4 M dot products of 256, ~45% of the time; each reads a 1 KiB key
// row from L2 or L3: prefetching, four rows a pass and a key-major order were tried, no faster),
// the tiles (~25%), LargestSorted and the candidate step (~19%), and LaneBound (~8%, ~19% before
// its held values' bound became a bisection, select-inl.h's HeldBound). Tried and not kept:
// deferring the rescoring to the candidate step, for only the keys of pairs that can reach a
// lower bound on the k-th best sum (~20 of the ~42 a row half): the rescoring took ~7 ms less,
// and the bounds, the extra passes over the lists and their ordering ~7 ms more (no faster at the
// default shape and --k 64, 25% slower at the harness's).
// The elementwise bound 2⁻⁷·‖q‖‖k‖ let ~60 keys a row half through, and ran 60-64 ms.
// Measured (2-core Xeon VM with AMX, shared and ~20% slower than at its report's run;
// bench_pk_topk --backend cpu --direction fwd, the two variants alternating, two rounds):
//   default shape (B 4096, h 4, n_keys 1024, n 512, k 32) fp32   52.2-53.9 ms, v2 83.4-83.5 ms
//   --dtype bf16                                                 37.8-40.3 ms, v2 85.0-88.6 ms
//   --qk-norm                                                    59.9-62.2 ms, v2 93.0-95.0 ms
//   --k 64 / --k 8                                   86.8-87.6 / 30.2-32.3 ms, v2 112-114 / 74-77
//   ms
//   --batch 256                                                  4.42-4.45 ms, v2 5.73-5.99 ms
//   the training harness's (B 768, h 2, n_keys 128, n 16, k 8)   0.65-0.66 ms, v2 0.43-0.44 ms
// (a half width of 8 runs as 32 on the tiles, and the rescoring band costs more than the scoring
// it saves: the memory layer keeps v2 there, memory_layer/cpu/v1_compose.cpp).
// Since then LaneBound's bisection (HeldBound), the two builds alternating on a slower day:
// 53.9-54.2 against 58.2-60.4 ms at the default shape, 79.9-81.0 against 86.8-91.9 at --k 64,
// 0.62-0.66 against 0.69-0.72 at the harness's.
// The keys are packed on every call (they train: nothing is cached), a panel of 32 at a time:
// their bf16 rows into a buffer, then amx_pack_panel writes the panel in its own order, and fp32
// keys are read in place. Packing a row at a time (a word every 64 bytes, and a copy of each fp32
// row first) took ~29% of the time at --batch 256, ~20% now (perf). Alternating: --batch 256
// 3.34-3.52 against 3.98-4.41 ms, --batch 256 --dtype bf16 --qk-norm 3.36-3.66 against
// 3.80-4.08, the default shape 46.9-49.4 against 48.1-49.8; the memory layer's search stage
// (bench_memory_layer --batch 256) 4.14-4.43 against 4.53-5.00 ms. Then amx_pack_panel's
// transposes moved to AVX-512 registers, and each fp32 row is read once for its rounding and both
// sums of squares (ToBf16Squares), where three passes read it: --batch 256 2.77-2.92 (both),
// 2.93-3.07 (the transposes only) and 3.05-3.17 ms (neither), alternating; the default shape
// 41.1-41.8 against 42.1-43.6; the memory layer's search stage 3.14-3.18 against 3.33-3.60 ms.
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include <hwy/aligned_allocator.h>

#include "common/amx.h"
#include "common/parallel.h"
#include "pk_topk/cpu/common.h"
#include "pk_topk/cpu/select.h"
#include "pk_topk/pk_topk.h"

// foreach_target includes this file once per SIMD target: declare the scalar parts once.
#ifndef MEMLAYERS_PK_TOPK_V3_AMX_RESCORED_ONCE
#define MEMLAYERS_PK_TOPK_V3_AMX_RESCORED_ONCE
namespace memlayers::pk_topk::cpu {

constexpr int64_t kV3Chunk = 1024;    // keys scored per row before a selection pass
constexpr int64_t kV3BlockRows = 96;  // queries a block (a multiple of kAmxRows)

// |x| rounded to an fp32 upper bound of sqrt(Σ x²) from an fp32 sum of squares: the sum's
// rounding (n·2⁻²⁴ of it, n <= kMaxKDim) and the sqrt's are inside the 2⁻⁹ margin, and
// sqrt(n)·2⁻⁶⁰ covers squares that underflowed. Infinite when the sum is not finite.
inline float norm_bound(float sum_sq, int64_t n) {
  if (!(sum_sq < std::numeric_limits<float>::infinity()))
    return std::numeric_limits<float>::infinity();
  const double b = std::sqrt(double(sum_sq) * (1.0 + 0x1p-9)) + std::sqrt(double(n)) * 0x1p-60;
  return static_cast<float>(b * (1.0 + 0x1p-20));
}

// fp32 to bf16 bits, round to nearest even (a NaN may become an infinity: norm_bound has then
// made the row's bound infinite, so every score of it is computed again in fp32).
inline uint16_t to_bf16_rne(float f) {
  const uint32_t u = std::bit_cast<uint32_t>(f);
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

// Upper bounds on a row's scaled norm r·‖x‖ and on the scaled norm r·‖x - x̃‖ of what rounding it
// to bf16 (x̃) left out: the two terms of the rescoring's error bound (AmxBlock).
struct RowNorms {
  float norm = 0, resid = 0;
  void widen_to(const RowNorms& o) {  // the larger of each; NaN (a NaN row) as infinity
    norm = std::isnan(o.norm) ? std::numeric_limits<float>::infinity() : std::max(norm, o.norm);
    resid = std::isnan(o.resid) ? std::numeric_limits<float>::infinity() : std::max(resid, o.resid);
  }
};

// The sub-keys of every (head, half) as bf16 panels of kAmxKeys keys in AMX's layout (amx.h),
// zero past n_keys and past the half width; per key its RMS scale (1 without qk_norm), and per
// panel the largest of its keys' RowNorms (infinite where a key is not finite; fp32 keys only).
struct AmxKeys {
  int64_t depth = 0, panels = 0;  // depth: the half width rounded up to kAmxDepth
  hwy::AlignedFreeUniquePtr<uint16_t[]> data;
  std::vector<float> scale;
  std::vector<RowNorms> panel_norms;
  const uint16_t* panel(int64_t head_half, int64_t j) const {
    return data.get() + (head_half * panels + j) * kAmxKeys * depth;
  }
};

}  // namespace memlayers::pk_topk::cpu
#endif

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "pk_topk/cpu/v3_amx_rescored.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>

#include "pk_topk/cpu/select-inl.h"

HWY_BEFORE_NAMESPACE();
namespace memlayers::pk_topk::cpu {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

using DF = hn::ScalableTag<float>;

// Σ a[i]·b[i] in fp32, four accumulators, a fixed order.
float Dot(const float* HWY_RESTRICT a, const float* HWY_RESTRICT b, int64_t n) {
  const DF df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  auto c0 = hn::Zero(df), c1 = c0, c2 = c0, c3 = c0;
  int64_t i = 0;
  for (; i + 4 * N <= n; i += 4 * N) {
    c0 = hn::MulAdd(hn::LoadU(df, a + i), hn::LoadU(df, b + i), c0);
    c1 = hn::MulAdd(hn::LoadU(df, a + i + N), hn::LoadU(df, b + i + N), c1);
    c2 = hn::MulAdd(hn::LoadU(df, a + i + 2 * N), hn::LoadU(df, b + i + 2 * N), c2);
    c3 = hn::MulAdd(hn::LoadU(df, a + i + 3 * N), hn::LoadU(df, b + i + 3 * N), c3);
  }
  for (; i + N <= n; i += N) c0 = hn::MulAdd(hn::LoadU(df, a + i), hn::LoadU(df, b + i), c0);
  float s = hn::GetLane(hn::SumOfLanes(df, hn::Add(hn::Add(c0, c1), hn::Add(c2, c3))));
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

// fp32 lanes (their bits u) rounded to bf16 bits, to nearest even as to_bf16_rne: each 32-bit
// lane holds its bf16 bits in its low half.
template <class DU>
hn::Vec<DU> Bf16Bits(DU du, hn::Vec<DU> u) {
  return hn::ShiftRight<16>(
      hn::Add(u, hn::Add(hn::Set(du, 0x7fffu), hn::And(hn::ShiftRight<16>(u), hn::Set(du, 1u)))));
}
// Bf16Bits' lanes stored as N consecutive bf16 values at dst.
template <class DU>
void StoreBf16Bits(DU /* du */, hn::Vec<DU> bits, uint16_t* HWY_RESTRICT dst) {
  const hn::RebindToSigned<DU> di;
  const hn::Rebind<uint16_t, DU> d16;
  hn::StoreU(hn::DemoteTo(d16, hn::BitCast(di, bits)), d16, dst);
}

// dst[0, n) = x rounded to bf16 bits (to nearest even, as to_bf16_rne).
void ToBf16(const float* HWY_RESTRICT x, int64_t n, uint16_t* HWY_RESTRICT dst) {
  const DF df;
  const hn::RebindToUnsigned<DF> du;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  int64_t i = 0;
  for (; i + N <= n; i += N)
    StoreBf16Bits(du, Bf16Bits(du, hn::BitCast(du, hn::LoadU(df, x + i))), dst + i);
  for (; i < n; ++i) dst[i] = to_bf16_rne(x[i]);
}

// ToBf16 in the same pass as the row's two sums of squares, each in fp32: Σ x[i]² (first) and
// Σ (x[i] - the bf16 dst[i])² (second; each difference is exact in fp32). One read of the row
// where rounding, a dot product and a residual pass read it three times.
std::pair<float, float> ToBf16Squares(const float* HWY_RESTRICT x, int64_t n,
                                      uint16_t* HWY_RESTRICT dst) {
  const DF df;
  const hn::RebindToUnsigned<DF> du;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  auto squares = hn::Zero(df), resid = squares;
  int64_t i = 0;
  for (; i + N <= n; i += N) {
    const auto v = hn::LoadU(df, x + i);
    const auto r = Bf16Bits(du, hn::BitCast(du, v));
    StoreBf16Bits(du, r, dst + i);
    const auto d = hn::Sub(v, hn::BitCast(df, hn::ShiftLeft<16>(r)));
    squares = hn::MulAdd(v, v, squares);
    resid = hn::MulAdd(d, d, resid);
  }
  float sq = hn::GetLane(hn::SumOfLanes(df, squares));
  float rs = hn::GetLane(hn::SumOfLanes(df, resid));
  for (; i < n; ++i) {
    dst[i] = to_bf16_rne(x[i]);
    const float d = x[i] - bf16_bits_to_float(dst[i]);
    sq += x[i] * x[i];
    rs += d * d;
  }
  return {sq, rs};
}

// One row half as AMX reads it: `row` (fp32, n wide) rounded to bf16 into dst[0, n), dst[n, depth)
// zero. Returns the row's RMS scale r (1 without norm) and, through norms when the rescoring needs
// them (fp32 inputs; else null), bounds on r·‖row‖ and on r·‖row - its bf16 rounding‖.
float PackRow(const float* row, int64_t n, int64_t depth, bool qk_norm, uint16_t* dst,
              RowNorms* norms) {
  std::pair<float, float> squares{0.0f, 0.0f};
  if (norms) {
    squares = ToBf16Squares(row, n, dst);
  } else {
    ToBf16(row, n, dst);
  }
  std::fill(dst + n, dst + depth, uint16_t{0});
  const float r = qk_norm ? inv_rms(row, n) : 1.0f;
  if (norms) {
    const double scale = double(r) * (1.0 + 0x1p-20);
    norms->norm = static_cast<float>(double(norm_bound(squares.first, n)) * scale);
    norms->resid = static_cast<float>(double(norm_bound(squares.second, n)) * scale);
  }
  return r;
}

AmxKeys PackAmxKeys(const FwdParams& p) {
  const int64_t half = p.k_dim / 2, nk = p.n_keys;
  AmxKeys ak;
  ak.depth = (half + kAmxDepth - 1) / kAmxDepth * kAmxDepth;
  ak.panels = (nk + kAmxKeys - 1) / kAmxKeys;
  const int64_t jobs = p.heads * 2 * ak.panels;
  const bool rescored = p.dtype == DType::f32;  // only the rescoring reads the norms
  const bool in_place = p.dtype == DType::f32;  // fp32 keys are read where they are, not widened
  ak.data = hwy::AllocateAligned<uint16_t>(static_cast<std::size_t>(jobs * kAmxKeys * ak.depth));
  ak.scale.assign(static_cast<std::size_t>(p.heads * 2 * nk), 1.0f);
  ak.panel_norms.assign(static_cast<std::size_t>(jobs), RowNorms{});
  parallel_for(jobs, balanced_grain(jobs, 1), [&](int64_t j0, int64_t j1) {
    std::vector<float> row(static_cast<std::size_t>(in_place ? 0 : half));
    std::vector<uint16_t> bits(static_cast<std::size_t>(kAmxKeys * ak.depth));  // the panel's rows
    for (int64_t j = j0; j < j1; ++j) {
      const int64_t hh = j / ak.panels, pan = j % ak.panels, h = hh / 2, c = hh % 2;
      const int64_t keys = std::min(kAmxKeys, nk - pan * kAmxKeys);
      const void* src = c == 0 ? p.keys1 : p.keys2;
      RowNorms worst;
      for (int64_t t = 0; t < keys; ++t) {
        const int64_t key = pan * kAmxKeys + t;
        const int64_t off = (h * nk + key) * half;
        if (!in_place) widen(src, p.dtype, off, half, row.data());
        const float* x = in_place ? static_cast<const float*>(src) + off : row.data();
        RowNorms norms;
        ak.scale[static_cast<std::size_t>(hh * nk + key)] = PackRow(
            x, half, ak.depth, p.qk_norm, bits.data() + t * ak.depth, rescored ? &norms : nullptr);
        worst.widen_to(norms);
      }
      amx_pack_panel(bits.data(), ak.depth, keys, half, ak.depth,
                     ak.data.get() + j * kAmxKeys * ak.depth);
      ak.panel_norms[static_cast<std::size_t>(j)] = worst;
    }
  });
  return ak;
}

// The per-block state of one thread.
struct AmxBlockState {
  Scratch<uint16_t> qbits;       // [half][row][depth]: the block's query halves, bf16
  std::vector<float> qscale;     // [half][row]
  std::vector<RowNorms> qnorms;  // [half][row]
  Scratch<float> scores;         // [row][chunk key]
  Scratch<uint64_t> keys;
  std::vector<TopKBuffer> lists;  // [row][half]
  std::vector<Entry> best;
  std::vector<uint64_t> cand;
  std::vector<float> row;
};

// x rounded toward -inf to fp32 (a NaN stays NaN).
inline float DownToFloat(double x) {
  float f = static_cast<float>(x);
  if (double(f) > x) f = std::nextafter(f, -std::numeric_limits<float>::infinity());
  return f;
}

// Feeds one row half's chunk of approximate scores s[0, n) (bf16 products, fp32 sums; keys
// base + i) into its top-k with fp32 scores. Each approximation is within e of the fp32 score
// that the rescoring computes, rq·rk·(q·k) from the params' fp32 rows. The chunk's k best
// approximations are >= bound (LaneBound), so their keys score >= bound - e in fp32: the chunk's
// k-th best is >= bound - e, and a key whose approximation is below bound - 2e cannot reach it.
// The others are scored again, and kept by !(v < bound - e) and the earlier chunks' threshold,
// as SelectChunk keeps its scores. A NaN bound or e rescores and keeps every key.
void RescoreChunk(const float* s, int64_t n, int64_t base, float e, const float* q, float rq,
                  const float* keys, const float* key_scale, int64_t half, TopKBuffer& l) {
  const float bound = LaneBound(s, n, l.k), thr = l.threshold;
  const float keep = DownToFloat(double(bound) - double(e));
  ForEachKept<false>(s, n, DownToFloat(double(bound) - 2.0 * double(e)), 0.0f, [&](int64_t i) {
    const int64_t key = base + i;
    const float v = rq * key_scale[key] * Dot(q, keys + key * half, half);
    if (!(v < keep) && !(v <= thr)) l.append(v, key);
  });
}

// s[i] *= rq · key_scale[i] for i in [0, n).
void ScaleRow(float* s, int64_t n, float rq, const float* key_scale) {
  const DF df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  const auto r = hn::Set(df, rq);
  int64_t i = 0;
  for (; i + N <= n; i += N)
    hn::StoreU(hn::Mul(hn::LoadU(df, s + i), hn::Mul(r, hn::LoadU(df, key_scale + i))), df, s + i);
  for (; i < n; ++i) s[i] *= rq * key_scale[i];
}

void AmxBlock(const FwdParams& p, const AmxKeys& ak, int64_t h, int64_t b0, int64_t rows,
              AmxBlockState& st) {
  const int64_t half = p.k_dim / 2, depth = ak.depth, k = p.k, nk = p.n_keys, H = p.heads;
  const int64_t chunk_panels = std::clamp<int64_t>(kV3Chunk / kAmxKeys, 1, ak.panels);
  const int64_t ld = chunk_panels * kAmxKeys;
  const int64_t padded = (rows + kAmxRows - 1) / kAmxRows * kAmxRows;
  const bool exact = p.dtype == DType::bf16;  // bf16 products are exact in fp32: no rescoring

  uint16_t* qbits = st.qbits.at_least(2 * padded * depth);
  st.qscale.resize(static_cast<std::size_t>(2 * rows));
  st.qnorms.resize(static_cast<std::size_t>(2 * rows));
  st.row.resize(static_cast<std::size_t>(half));
  for (int c = 0; c < 2; ++c) {
    for (int64_t r = 0; r < rows; ++r) {
      widen(p.queries, p.dtype, ((b0 + r) * H + h) * p.k_dim + c * half, half, st.row.data());
      st.qscale[static_cast<std::size_t>(c * rows + r)] =
          PackRow(st.row.data(), half, depth, p.qk_norm, qbits + (c * padded + r) * depth,
                  exact ? nullptr : &st.qnorms[static_cast<std::size_t>(c * rows + r)]);
    }
    std::fill(qbits + (c * padded + rows) * depth, qbits + (c + 1) * padded * depth, uint16_t{0});
  }
  float* scores = st.scores.at_least(padded * ld);
  const int64_t cap = k + ld;
  uint64_t* keys = st.keys.at_least(rows * 2 * cap);
  st.lists.resize(static_cast<std::size_t>(rows * 2));
  for (int64_t i = 0; i < rows * 2; ++i) st.lists[i].reset(k, keys + i * cap);

  const AmxTiles tiles;
  for (int c = 0; c < 2; ++c) {
    const void* raw_keys = c == 0 ? p.keys1 : p.keys2;  // fp32 when rescored
    for (int64_t j0 = 0; j0 < ak.panels; j0 += chunk_panels) {
      const int64_t j1 = std::min(ak.panels, j0 + chunk_panels);
      amx_gemm_bf16(qbits + c * padded * depth, depth, padded, ak.panel(h * 2 + c, j0), j1 - j0,
                    depth, scores, ld);
      const int64_t base = j0 * kAmxKeys, n = std::min(nk, j1 * kAmxKeys) - base;
      const float* key_scale = ak.scale.data() + (h * 2 + c) * nk;
      RowNorms kn;  // the chunk's largest
      for (int64_t j = j0; j < j1; ++j)
        kn.widen_to(ak.panel_norms[static_cast<std::size_t>((h * 2 + c) * ak.panels + j)]);
      for (int64_t r = 0; r < rows; ++r) {
        TopKBuffer& l = st.lists[r * 2 + c];
        float* s = scores + r * ld;
        const float rq = st.qscale[static_cast<std::size_t>(c * rows + r)];
        if (p.qk_norm) ScaleRow(s, n, rq, key_scale + base);
        l.compact();
        if (exact) {
          SelectChunk(s, n, base, l);
          continue;
        }
        // |approximation - fp32 score| <= e. With x̃ the bf16 rounding of x and δx = x - x̃,
        // |q̃·k̃ - q·k| = |q̃·δk + δq·k| <= ‖q̃‖‖δk‖ + ‖δq‖‖k‖ (Cauchy-Schwarz over the actual
        // residuals: ~2.5× tighter than the elementwise 2⁻⁷·‖q‖‖k‖), ‖q̃‖ <= ‖q‖ + ‖δq‖; both fp32
        // sums and the scalings round within (2n + 8)·2⁻²⁴ of ‖q̃‖‖k̃‖ + ‖q‖‖k‖; the products
        // AMX flushes to zero (below 2⁻¹²⁶ a term) within the 2⁻⁸⁰ term. All norms scaled by
        // the rows' RMS scales and bounded from above.
        const RowNorms qn = st.qnorms[static_cast<std::size_t>(c * rows + r)];
        const double Q = qn.norm, Qd = qn.resid, K = kn.norm, Kd = kn.resid;
        const double gamma = double(2 * half + 8) * 0x1p-24 * 1.01;
        const double bound = (Q + Qd) * Kd + Qd * K + gamma * ((Q + Qd) * (K + Kd) + Q * K) +
                             0x1p-80 * (1 + Q + Qd) * (1 + K + Kd);
        const float e = static_cast<float>(bound * (1.0 + 0x1p-20));
        const float* q =
            static_cast<const float*>(p.queries) + ((b0 + r) * H + h) * p.k_dim + c * half;
        RescoreChunk(s, n, base, e, q, rq, static_cast<const float*>(raw_keys) + h * nk * half,
                     key_scale, half, l);
      }
    }
  }
  FinishRows(p, h, b0, rows, st.lists, st.best, st.cand);
}

void AmxForward(const FwdParams& p) {
  const AmxKeys ak = PackAmxKeys(p);
  const int64_t mb = kV3BlockRows;
  ForEachBlock<AmxBlockState>(p, mb, [&](int64_t h, int64_t b0, int64_t rows, AmxBlockState& st) {
    AmxBlock(p, ak, h, b0, rows, st);
  });
}

}  // namespace HWY_NAMESPACE
}  // namespace memlayers::pk_topk::cpu
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace memlayers::pk_topk::cpu {
HWY_EXPORT(AmxForward);
namespace {

MEMLAYERS_REGISTER(Fwd, Variant<FwdParams>{
                            .name = "v3_amx_rescored",
                            .backend = Backend::cpu,
                            .launch =
                                [](const FwdParams& p, Stream) {
                                  HWY_DYNAMIC_DISPATCH(AmxForward)
                                  (p);
                                },
                            .supports = [](const FwdParams&) { return amx_unavailable(); },
                            .summary = "bf16 tile products on AMX per 96-query block and 1024-key "
                                       "chunk; fp32 inputs: the keys within the bf16 error bound "
                                       "of the k-th best scored again in fp32",
                            .deterministic = true,
                        });

}  // namespace
}  // namespace memlayers::pk_topk::cpu
#endif  // HWY_ONCE
