// v2_bwd_grouped — the CPU backward of the product-key top-k search (pk_topk.h), which merges
// each bag's repeated sub-key rows before any row is read. Bags are (b, h); a group is one
// (half c, head h), whose sub-key rows form one (n_keys, n/2) table: 1 MiB at the paper's shape,
// so a thread working on one group keeps it in its L2.
//  1. Per group, over blocks of tokens: each bag's distinct rows i_c, with the ds of the slots
//     that chose them summed in slot order. A bag's k best pairs share rows: at the default
//     shape 32 slots hold ~12 distinct rows per half, so ~2.7× fewer rows to read and to scatter
//     than one per slot. Then dq̂_c = Σ w·K̂_c[h, i] over those rows, through the RMS-norm
//     backward when qk_norm (K̂ = K·rms⁻¹(K): the norm folds into the weight), written to dq;
//     the sum is held in registers a block of columns at a time across the bag's rows.
//  2. Plan, per group: each touched row gets a slot (ascending row ids: the compact form's
//     order), and the groups' slots are cut into parts of about equal work.
//  3. Per part: the bags of its group in token order, each term that lands in its slots adding
//     w·q̂ to its row (the row's first term writes it). The part's rows stay in cache and the query
//     rows stream in order; no atomics, and each row sums its terms in bag order whatever the
//     thread count or the cut, so the result is bitwise the same on any number of threads. Then the
//     norm backward of each touched row, and the copies into the forms requested.
// Highway SIMD (runtime dispatch) for the row updates, bf16 rows widened in registers; subnormal
// ds flushed (common/denormals.h) as in the EmbeddingBag.
// Bottleneck it targets: v1_bwd_compose's per-slot work (one row read and one row scatter per
// slot, a sort of every slot, each through the whole 8 MiB of sub-keys at once).
// What is left: pass 3 updates each term's dK row in L2 (a 1 KiB read and write a term), and
// pass 1 reads a sub-key row from L2 a term and merges the bag's slots; they take about half
// the time each at the default shape (the plan ~5%). Prefetching pass 3's rows a term or more
// ahead (for reading or for writing) made it slower: its rows' traffic with L2 bounds it, not
// their latency. Pass 1's merge of a bag's slots (about half of pass 1 in a perf profile) ran
// slower when split into a loop that finds the slots' rows and one that merges them (16.8-17.3
// against 15.3-16.0 ms), and slower still with the rows' first slots written beforehand, from
// the last slot down, so that no lookup waits on the slot before (18.6-19.3 against 16.3-17.6).
// Measured (bench_pk_topk, 2-core Xeon VM; B 4096, h 4, n_keys 1024, n 512, k 32, fp32, dq and
// compact dK): 13.6-13.8 ms against 56-61 ms for v1_bwd_compose; with qk_norm 20.5 against
// 90.6 ms; at B 256, 1.20 against 2.73 ms (qk_norm 2.22 against 13.2 ms). Pass 1's dq summed in
// registers (in place of an axpy per row on dq) took the default shape from 17.2-18.2 to
// 15.6-16.8 ms on a busier day, bf16 16.6 to 14.5-15.6 ms, qk_norm 21.4-24.0 to 20.5-20.9 ms.
// Pass 3 writing each row's first term in place of zeroing the part first: B 256 1.28-1.41 to
// 1.16-1.26 ms, the default shape 16.0-16.7 to 15.5-15.6 ms.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "common/denormals.h"
#include "common/dense_rows.h"
#include "common/error.h"
#include "common/parallel.h"
#include "pk_topk/cpu/common.h"
#include "pk_topk/pk_topk.h"

// foreach_target includes this file once per SIMD target: declare shared types once.
#ifndef MEMLAYERS_PK_TOPK_V2_BWD_GROUPED_TYPES
#define MEMLAYERS_PK_TOPK_V2_BWD_GROUPED_TYPES
namespace memlayers::pk_topk::cpu::grouped {

// A distinct sub-key row of one bag's half and the summed ds of the slots that chose it. `at` is
// the row's index i in the head's table in pass 1, its slot in the (half, head) group after the
// plan (both below n_keys <= 2^20).
struct Term {
  int32_t at;
  float w;
};

// One half's terms. Bag (b, h) is bg = h·batch + b: its terms are terms[start[bg], + count[bg]),
// in the order its slots first chose them, and a unit of pass 1 packs its bags' terms densely.
// After the plan: rows[s] is slot s's row id h·n_keys + i (ascending), and head h's group holds
// slots [offset[h], offset[h + 1]).
struct HalfTerms {
  std::unique_ptr<Term[]> terms;  // capacity heads·batch·k, written only where used
  std::vector<int64_t> start;
  std::vector<int32_t> count;
  std::vector<int64_t> rows, offset;
};

// Slots [lo, hi) of the group (half c, head h), numbered within the group.
struct Part {
  int c;
  int64_t h, lo, hi;
};

struct Ctx {
  const BwdParams* p;
  HalfTerms ht[2];
  bool dk[2];                    // the key gradient of half c is requested
  std::vector<float> key_rms;    // qk_norm with dq: 1/rms of every sub-key row, K1's first
  std::vector<float> query_rms;  // qk_norm: 1/rms of each bag's query halves, [r·2 + c]
  int64_t block = 1;             // tokens per unit of pass 1
  std::vector<Part> parts;
};

// m / n_keys and m % n_keys without a 64-bit divide per slot (tens of cycles each, 64 a bag): the
// quotient by a double reciprocal, corrected to exact (m < 2^40 is exact in a double, so the
// estimate is off by at most one).
struct Divider {
  int64_t n;
  double inv;
  explicit Divider(int64_t d) : n(d), inv(1.0 / static_cast<double>(d)) {}
  int64_t quotient(int64_t m) const {
    auto q = static_cast<int64_t>(static_cast<double>(m) * inv);
    if (q * n > m) --q;
    if ((q + 1) * n <= m) ++q;
    return q;
  }
};

inline const void* row_at(const void* base, DType t, int64_t elem) {
  return static_cast<const char*>(base) + elem * static_cast<int64_t>(dtype_size(t));
}

}  // namespace memlayers::pk_topk::cpu::grouped
#endif

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "pk_topk/cpu/v2_bwd_grouped.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>

#include "embbag/cpu/hwy_rows-inl.h"

HWY_BEFORE_NAMESPACE();
namespace memlayers::pk_topk::cpu {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;
using embbag::cpu::HWY_NAMESPACE::LoadRow;
using embbag::cpu::HWY_NAMESPACE::LoadScalar;
using grouped::Ctx;
using grouped::Divider;
using grouped::HalfTerms;
using grouped::Part;
using grouped::row_at;
using grouped::Term;

// acc[0, n) += w · row[0, n), the row fp32 or bf16; kFirst: acc = 0 + w · row, acc not read (the
// bits of zeroing it first).
template <bool kBf16, bool kFirst = false>
HWY_INLINE void Axpy(float* HWY_RESTRICT acc, const void* row, float w, int64_t n) {
  const hn::ScalableTag<float> df;
  const auto N = static_cast<int64_t>(hn::Lanes(df));
  const auto vw = hn::Set(df, w);
  const auto old = [&](auto dn, int64_t i) {
    if constexpr (kFirst)
      return hn::Zero(dn);
    else
      return hn::LoadU(dn, acc + i);
  };
  int64_t d = 0;
  for (; d + 2 * N <= n; d += 2 * N) {
    const auto a0 = hn::MulAdd(vw, LoadRow<kBf16>(df, row, d), old(df, d));
    const auto a1 = hn::MulAdd(vw, LoadRow<kBf16>(df, row, d + N), old(df, d + N));
    hn::StoreU(a0, df, acc + d);
    hn::StoreU(a1, df, acc + d + N);
  }
  for (; d + N <= n; d += N)
    hn::StoreU(hn::MulAdd(vw, LoadRow<kBf16>(df, row, d), old(df, d)), df, acc + d);
  // What is left of a vector on wide targets, 8 and then 4 lanes at a time: the harness's rows
  // are 8 wide, all tail on AVX-512. Fused like the scalar fma, so the bits do not change.
  const auto narrow = [&](auto dn) {
    const auto Nn = static_cast<int64_t>(hn::Lanes(dn));
    if (Nn >= N || d + Nn > n) return;
    const auto v = hn::MulAdd(hn::Set(dn, w), LoadRow<kBf16>(dn, row, d), old(dn, d));
    hn::StoreU(v, dn, acc + d);
    d += Nn;
  };
  narrow(hn::CappedTag<float, 8>());
  narrow(hn::CappedTag<float, 4>());
  for (; d < n; ++d) acc[d] = std::fma(w, LoadScalar<kBf16>(row, d), kFirst ? 0.0f : acc[d]);
}

// out[0, n) = Σ_u w[u] · rows[u][0, n) over u in [0, m), the rows fp32 or bf16: the sums held in
// registers a few vectors at a time across all the rows, so no partial sum goes through memory,
// and the rows' loads of one column block issue together. Each element's sum starts at 0 and adds
// the rows in order by fma, the bits of m Axpy calls on a zeroed out.
template <bool kBf16>
HWY_INLINE void SumRows(float* HWY_RESTRICT out, const void* const* rows, const float* w, int32_t m,
                        int64_t n) {
  const hn::ScalableTag<float> df;
  const auto N = static_cast<int64_t>(hn::Lanes(df));
  int64_t d = 0;
  for (; d + 4 * N <= n; d += 4 * N) {
    auto a0 = hn::Zero(df), a1 = hn::Zero(df), a2 = hn::Zero(df), a3 = hn::Zero(df);
    for (int32_t u = 0; u < m; ++u) {
      const auto vw = hn::Set(df, w[u]);
      a0 = hn::MulAdd(vw, LoadRow<kBf16>(df, rows[u], d), a0);
      a1 = hn::MulAdd(vw, LoadRow<kBf16>(df, rows[u], d + N), a1);
      a2 = hn::MulAdd(vw, LoadRow<kBf16>(df, rows[u], d + 2 * N), a2);
      a3 = hn::MulAdd(vw, LoadRow<kBf16>(df, rows[u], d + 3 * N), a3);
    }
    hn::StoreU(a0, df, out + d);
    hn::StoreU(a1, df, out + d + N);
    hn::StoreU(a2, df, out + d + 2 * N);
    hn::StoreU(a3, df, out + d + 3 * N);
  }
  // The rest a vector, then 8 and 4 lanes, then an element at a time.
  const auto column = [&](auto dn) {
    const auto Nn = static_cast<int64_t>(hn::Lanes(dn));
    if (Nn > N) return;
    for (; d + Nn <= n; d += Nn) {
      auto a = hn::Zero(dn);
      for (int32_t u = 0; u < m; ++u)
        a = hn::MulAdd(hn::Set(dn, w[u]), LoadRow<kBf16>(dn, rows[u], d), a);
      hn::StoreU(a, dn, out + d);
    }
  };
  column(df);
  column(hn::CappedTag<float, 8>());
  column(hn::CappedTag<float, 4>());
  for (; d < n; ++d) {
    float a = 0.0f;
    for (int32_t u = 0; u < m; ++u) a = std::fma(w[u], LoadScalar<kBf16>(rows[u], d), a);
    out[d] = a;
  }
}

// A row's elements [i, i + Lanes(dd)) widened to fp64 (from fp32 or bf16).
template <bool kBf16, class DD>
HWY_INLINE hn::Vec<DD> LoadF64(DD dd, const void* row, int64_t i) {
  const hn::Rebind<float, DD> df;
  if constexpr (kBf16) {
    const hn::Rebind<uint16_t, DD> d16;
    const hn::Rebind<uint32_t, DD> d32;
    const auto bits = hn::PromoteTo(d32, hn::LoadU(d16, static_cast<const uint16_t*>(row) + i));
    return hn::PromoteTo(dd, hn::BitCast(df, hn::ShiftLeft<16>(bits)));
  } else {
    return hn::PromoteTo(dd, hn::LoadU(df, static_cast<const float*>(row) + i));
  }
}

// Σ a[i]·b[i] over [0, n) in fp64, each row fp32 or bf16 (a == b allowed). Fixed lane and tail
// order: the same bits on every run of one build and CPU.
template <bool kBf16A, bool kBf16B>
HWY_INLINE double DotF64(const void* a, const void* b, int64_t n) {
  const hn::ScalableTag<double> dd;
  const auto N = static_cast<int64_t>(hn::Lanes(dd));
  auto s0 = hn::Zero(dd), s1 = hn::Zero(dd);
  int64_t i = 0;
  for (; i + 2 * N <= n; i += 2 * N) {
    s0 = hn::MulAdd(LoadF64<kBf16A>(dd, a, i), LoadF64<kBf16B>(dd, b, i), s0);
    s1 = hn::MulAdd(LoadF64<kBf16A>(dd, a, i + N), LoadF64<kBf16B>(dd, b, i + N), s1);
  }
  for (; i + N <= n; i += N)
    s0 = hn::MulAdd(LoadF64<kBf16A>(dd, a, i), LoadF64<kBf16B>(dd, b, i), s0);
  double s = hn::GetLane(hn::SumOfLanes(dd, hn::Add(s0, s1)));
  for (; i < n; ++i) s += double{LoadScalar<kBf16A>(a, i)} * double{LoadScalar<kBf16B>(b, i)};
  return s;
}

// 1 / sqrt(mean(x²) + kNormEps) of a row, in fp64 (the backward needs an accurate rms, not the
// forward's bits).
template <bool kBf16>
HWY_INLINE double InvRms(const void* x, int64_t n) {
  return 1.0 / std::sqrt(DotF64<kBf16, kBf16>(x, x, n) / static_cast<double>(n) + double{kNormEps});
}

// dx̂ → dx in place through x̂ = x / rms(x) (v1_bwd_compose's norm_backward, vectorised), r =
// InvRms(x): g fp32, x the raw row, fp32 or bf16; in fp64, where narrow rows need it.
template <bool kBf16>
HWY_INLINE void NormBackward(float* HWY_RESTRICT g, const void* x, int64_t n, double r) {
  const double rm = r * (DotF64<false, kBf16>(g, x, n) * r / static_cast<double>(n));
  const hn::ScalableTag<double> dd;
  const hn::Rebind<float, decltype(dd)> df;
  const auto N = static_cast<int64_t>(hn::Lanes(dd));
  const auto vrm = hn::Set(dd, rm), vr = hn::Set(dd, r);
  int64_t i = 0;
  for (; i + N <= n; i += N) {
    const auto gi = hn::PromoteTo(dd, hn::LoadU(df, g + i));
    const auto dx = hn::Mul(hn::NegMulAdd(LoadF64<kBf16>(dd, x, i), vrm, gi), vr);
    hn::StoreU(hn::DemoteTo(df, dx), df, g + i);
  }
  for (; i < n; ++i)
    g[i] = static_cast<float>((double{g[i]} - double{LoadScalar<kBf16>(x, i)} * rm) * r);
}

// Pass 1, unit (half c, head h, tokens [b0, b1)): the bags' terms and their dq halves.
template <bool kBf16>
void Bags(Ctx& x, int c, int64_t h, int64_t b0, int64_t b1) {
  const BwdParams& p = *x.p;
  const int64_t half = p.k_dim / 2, nk = p.n_keys, k = p.k;
  const void* keys = c == 0 ? p.keys1 : p.keys2;
  HalfTerms& ht = x.ht[c];
  const Divider div(nk);
  std::vector<int32_t> first(static_cast<std::size_t>(nk), -1);  // row i → its term, this bag
  std::vector<const void*> rows(static_cast<std::size_t>(k));    // a bag's rows and weights
  std::vector<float> w(static_cast<std::size_t>(k));
  const float* rms =
      p.qk_norm && p.grad_queries ? x.key_rms.data() + (c * p.heads + h) * nk : nullptr;
  int64_t pos = (h * p.batch + b0) * k;
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t r = b * p.heads + h, bg = h * p.batch + b;
    Term* t = ht.terms.get() + pos;
    int32_t n = 0;
    for (int64_t s = 0; s < k; ++s) {
      const int64_t m = load_index(p.indices, p.index_dtype, r * k + s);
      const int64_t i1 = div.quotient(m), i = c == 0 ? i1 : m - i1 * nk;
      // Branch-free (whether a row is new is a coin flip to the predictor): term n is set up
      // as if it were, and kept only if it is.
      const int32_t seen = first[i], u = seen < 0 ? n : seen;
      t[n] = {static_cast<int32_t>(i), 0.0f};
      t[u].w += p.grad_scores[r * k + s];
      first[i] = u;
      n += seen < 0;
    }
    for (int32_t u = 0; u < n; ++u) first[t[u].at] = -1;
    ht.start[bg] = pos, ht.count[bg] = n;
    pos += n;

    const int64_t q_off = r * p.k_dim + c * half;
    const void* q = row_at(p.queries, p.dtype, q_off);
    const double rq = p.qk_norm ? InvRms<kBf16>(q, half) : 1.0;
    if (p.qk_norm) x.query_rms[r * 2 + c] = static_cast<float>(rq);
    if (!p.grad_queries) continue;
    float* dq = p.grad_queries + q_off;
    for (int32_t u = 0; u < n; ++u) {
      rows[u] = row_at(keys, p.dtype, (h * nk + t[u].at) * half);
      w[u] = rms ? t[u].w * rms[t[u].at] : t[u].w;
    }
    SumRows<kBf16>(dq, rows.data(), w.data(), n, half);
    if (p.qk_norm) NormBackward<kBf16>(dq, q, half, rq);
  }
}

// Pass 3, one part: every term in its slots added in bag order to its row (the first written),
// then each row's norm backward and its copies.
template <bool kBf16>
void Scatter(const Ctx& x, const Part& part) {
  const BwdParams& p = *x.p;
  const int64_t half = p.k_dim / 2, c = part.c, h = part.h;
  const HalfTerms& ht = x.ht[c];
  const BwdParams::KeyGrad& out = c == 0 ? p.grad_keys1 : p.grad_keys2;
  const int64_t base = ht.offset[h];  // the group's first slot in the half
  // Where the group's slot s is summed: compact row base + s when the compact form is
  // requested, else the dense row of its id.
  auto dst = [&](int64_t s) {
    return out.has_compact() ? out.compact + (base + s) * half
                             : out.dense + ht.rows[base + s] * half;
  };
  // Every slot has a term (the plan made slots of touched rows only); a row's first term writes
  // it, in place of zeroing the part's rows first (at B 256 a group's rows are ~1 MiB: a pass
  // through L2 of its own).
  std::vector<uint8_t> written(static_cast<std::size_t>(part.hi - part.lo), 0);
  for (int64_t b = 0; b < p.batch; ++b) {
    const int64_t r = b * p.heads + h, bg = h * p.batch + b;
    const Term* t = ht.terms.get() + ht.start[bg];
    const void* q = row_at(p.queries, p.dtype, r * p.k_dim + c * half);
    const float scale = p.qk_norm ? x.query_rms[r * 2 + c] : 1.0f;
    for (int32_t u = 0; u < ht.count[bg]; ++u) {
      const int64_t s = t[u].at;
      if (s < part.lo || s >= part.hi) continue;
      const float w = p.qk_norm ? t[u].w * scale : t[u].w;
      if (written[s - part.lo]) {
        Axpy<kBf16>(dst(s), q, w, half);
      } else {
        Axpy<kBf16, true>(dst(s), q, w, half);
        written[s - part.lo] = 1;
      }
    }
  }
  const void* keys = c == 0 ? p.keys1 : p.keys2;
  for (int64_t s = part.lo; s < part.hi; ++s) {
    const int64_t id = ht.rows[base + s];
    float* row = dst(s);
    if (p.qk_norm) {
      const void* key = row_at(keys, p.dtype, id * half);
      NormBackward<kBf16>(row, key, half, InvRms<kBf16>(key, half));
    }
    if (out.has_compact()) {
      out.rows[base + s] = id;
      if (out.dense)
        std::memcpy(out.dense + id * half, row, static_cast<std::size_t>(half) * sizeof(float));
    }
  }
}

// Pass 0 (qk_norm with dq: key_rms), pass 1 (every unit of the halves in use) or pass 3 (every
// part).
void Run(Ctx& x, int pass) {
  const BwdParams& p = *x.p;
  const bool bf16 = p.dtype == DType::bf16;
  if (pass == 0) {
    const int64_t rows = p.heads * p.n_keys, half = p.k_dim / 2;
    parallel_for(2 * rows, balanced_grain(2 * rows, std::max<int64_t>(1, 4096 / half)),
                 [&](int64_t r0, int64_t r1) {
                   for (int64_t r = r0; r < r1; ++r) {
                     const void* key = row_at(r < rows ? p.keys1 : p.keys2, p.dtype,
                                              (r < rows ? r : r - rows) * half);
                     x.key_rms[r] = static_cast<float>(bf16 ? InvRms<true>(key, half)
                                                            : InvRms<false>(key, half));
                   }
                 });
    return;
  }
  if (pass == 1) {
    const int64_t blocks = (p.batch + x.block - 1) / x.block, units = 2 * p.heads * blocks;
    parallel_for(units, 1, [&](int64_t u0, int64_t u1) {
      const FlushDenormals ftz;  // subnormal ds or products: a microcode assist per FMA
      for (int64_t u = u0; u < u1; ++u) {
        const int c = static_cast<int>(u / (p.heads * blocks));
        const int64_t h = u / blocks % p.heads, b0 = u % blocks * x.block;
        if (!p.grad_queries && !x.dk[c]) continue;
        (bf16 ? Bags<true> : Bags<false>)(x, c, h, b0, std::min(p.batch, b0 + x.block));
      }
    });
    return;
  }
  parallel_for(static_cast<int64_t>(x.parts.size()), 1, [&](int64_t a, int64_t b) {
    const FlushDenormals ftz;
    for (int64_t i = a; i < b; ++i) (bf16 ? Scatter<true> : Scatter<false>)(x, x.parts[i]);
  });
}

}  // namespace HWY_NAMESPACE
}  // namespace memlayers::pk_topk::cpu
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace memlayers::pk_topk::cpu {
HWY_EXPORT(Run);
namespace {
using grouped::Ctx;
using grouped::Part;
using grouped::Term;

// Pass 2: the slots of each group (in parallel), numbered across the heads of each half, and
// the parts: about 4 per thread in all, a group's share following its share of the terms, its
// slots cut into that many equal runs.
void plan(Ctx& x) {
  const BwdParams& p = *x.p;
  const int64_t nk = p.n_keys, groups = 2 * p.heads;
  // Per group: the terms of each row i, then the row's slot in the group; the touched rows.
  std::vector<int32_t> slot(static_cast<std::size_t>(groups * nk), 0);
  std::vector<std::vector<int32_t>> touched(static_cast<std::size_t>(groups));
  std::vector<int64_t> work(static_cast<std::size_t>(groups), 0);
  auto each_term = [&](int64_t g, auto&& fn) {  // the group's terms, bag by bag
    grouped::HalfTerms& ht = x.ht[g / p.heads];
    const int64_t h = g % p.heads;
    for (int64_t bg = h * p.batch; bg < (h + 1) * p.batch; ++bg)
      for (int32_t u = 0; u < ht.count[bg]; ++u) fn(ht.terms[ht.start[bg] + u]);
  };
  parallel_for(groups, 1, [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g) {
      if (!x.dk[g / p.heads]) continue;
      int32_t* count = slot.data() + g * nk;
      each_term(g, [&](const Term& t) { ++count[t.at]; });
      for (int32_t i = 0; i < nk; ++i) {
        if (!count[i]) continue;
        work[g] += count[i];
        count[i] = static_cast<int32_t>(touched[g].size());
        touched[g].push_back(i);
      }
    }
  });
  int64_t total = 0;
  for (int64_t w : work) total += w;
  const int64_t want = 4 * int64_t{num_threads()};
  for (int c = 0; c < 2; ++c) {
    if (!x.dk[c]) continue;
    grouped::HalfTerms& ht = x.ht[c];
    ht.rows.clear();
    ht.offset.assign(static_cast<std::size_t>(p.heads + 1), 0);
    for (int64_t h = 0; h < p.heads; ++h) {
      const int64_t g = c * p.heads + h;
      ht.offset[h] = static_cast<int64_t>(ht.rows.size());
      for (int32_t i : touched[g]) ht.rows.push_back(h * nk + i);
      const auto n = static_cast<int64_t>(touched[g].size());
      if (n == 0) continue;
      const int64_t pieces = std::clamp<int64_t>((want * work[g] + total - 1) / total, 1, n);
      for (int64_t j = 0; j < pieces; ++j)
        x.parts.push_back({c, h, n * j / pieces, n * (j + 1) / pieces});
    }
    ht.offset[p.heads] = static_cast<int64_t>(ht.rows.size());
  }
  // Each term's row index becomes its slot in the group.
  parallel_for(groups, 1, [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g) {
      if (!x.dk[g / p.heads]) continue;
      const int32_t* local = slot.data() + g * nk;
      each_term(g, [&](Term& t) { t.at = local[t.at]; });
    }
  });
}

void backward(const BwdParams& p, Stream) {
  if (std::string why = find_bad_index(p.indices, p.index_dtype, p.batch, p.heads, p.k, p.n_keys);
      !why.empty())
    fail("pk_topk_bwd/v2_bwd_grouped: {}", why);
  const int64_t R = p.batch * p.heads, half = p.k_dim / 2, num_rows = p.heads * p.n_keys;
  Ctx x;
  x.p = &p;
  const BwdParams::KeyGrad* out[2] = {&p.grad_keys1, &p.grad_keys2};
  for (int c = 0; c < 2; ++c) x.dk[c] = out[c]->dense || out[c]->has_compact();
  if (!p.grad_queries && !x.dk[0] && !x.dk[1]) return;

  for (int c = 0; c < 2; ++c)
    if (p.grad_queries || x.dk[c]) {
      x.ht[c].terms.reset(new Term[static_cast<std::size_t>(R * p.k)]);
      x.ht[c].start.resize(static_cast<std::size_t>(R));
      x.ht[c].count.resize(static_cast<std::size_t>(R));
    }
  if (p.qk_norm) x.query_rms.resize(static_cast<std::size_t>(2 * R));
  if (p.qk_norm && p.grad_queries) {
    x.key_rms.resize(static_cast<std::size_t>(2 * num_rows));
    HWY_DYNAMIC_DISPATCH(Run)(x, 0);
  }
  // Pass 1's units: each (half, head) group cut into blocks of tokens, about 8 units per thread.
  const int64_t units_wanted = 8 * int64_t{num_threads()};
  x.block = std::max<int64_t>(1, (2 * p.heads * p.batch + units_wanted - 1) / units_wanted);
  HWY_DYNAMIC_DISPATCH(Run)(x, 1);
  if (!x.dk[0] && !x.dk[1]) return;

  plan(x);
  // Dense rows no term touches are zeroed here; the touched ones are written by their part.
  for (int c = 0; c < 2; ++c) {
    if (!x.dk[c]) continue;
    const std::vector<int64_t>& rows = x.ht[c].rows;
    if (out[c]->has_compact()) *out[c]->num_rows = static_cast<int64_t>(rows.size());
    if (!out[c]->dense) continue;
    zero_untouched_rows(out[c]->dense, num_rows, half, static_cast<int64_t>(rows.size()),
                        [&](int64_t i) { return rows[i]; });
  }
  HWY_DYNAMIC_DISPATCH(Run)(x, 3);
}

MEMLAYERS_REGISTER(Bwd, Variant<BwdParams>{
                            .name = "v2_bwd_grouped",
                            .backend = Backend::cpu,
                            .launch = backward,
                            .summary = "each bag's repeated sub-key rows merged first; per "
                                       "(half, head) group: dq by token blocks, dK by parts of "
                                       "rows in bag order (no atomics); Highway SIMD",
                            .deterministic = true,
                        });

}  // namespace
}  // namespace memlayers::pk_topk::cpu
#endif  // HWY_ONCE
