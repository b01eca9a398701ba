// v1_bwd_compose — the CPU backward of the product-key top-k search, composed from the registered
// CPU EmbeddingBag variants (the backward is an EmbeddingBag pair: pk_topk.h), per half c:
//  - bags (b, h), rows h·n_keys + i_c, weights ds: dq̂_c = embbag forward (v2_hwy_threads) over the
//    sub-key table (the original one, fp32 or bf16, or its fp32 RMS-normalised copy with qk_norm),
//    written straight into dq's half through out_stride;
//  - dK̂_c = embbag backward's dV (v2_bwd_sorted: rows sorted, fixed-order sums, so bitwise
//    deterministic) with grad_out = the fp32 (normalised) query half;
//  - with qk_norm, the RMS-norm backward dx = (dx̂ − x̂·mean(dx̂·x̂))·(1/rms(x)) on every dq half and
//    on every touched key row.
// The EmbeddingBag takes at most embbag::kMaxK slots per bag: a larger k is split into equal
// sub-bags (padded with zero-weight copies of a slot of the same bag, which add exactly nothing)
// whose dq parts are summed in a fixed order. Its compact dV needs (bags·slots) rows of capacity,
// more than pk_topk::compact_capacity: the compact key gradient goes through whichever scratch is
// smaller, that compact form or a dense (heads·n_keys) one, and is copied out.
// Bottleneck it targets: none yet — it is the correct, deterministic composition; the gathers and
// the row-sorted scatter are the EmbeddingBag's own, bandwidth-bound at large shapes.
// Measured (scratch timing program, 2-core AMD EPYC VM shared with other jobs, medians of 5):
// B=4096, h=4, n_keys=1024, k_dim=512, k=32, fp32, dq + compact dK1 and dK2 (4096 rows each) —
// 236 ms wall / 157 ms CPU; with qk_norm 305 ms wall / 198 ms CPU.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "common/error.h"
#include "common/parallel.h"
#include "embbag/embbag.h"
#include "pk_topk/cpu/common.h"
#include "pk_topk/pk_topk.h"

namespace memlayers::pk_topk::cpu {
namespace {

// dx̂ → dx in place through x̂ = x / rms(x), for one row of width n; x is the raw (widened) row.
// In fp64: for narrow rows (n = 1 is the extreme, where dx = dx̂·(1 − x̂²)/rms) the difference
// cancels almost completely, and fp32 would keep only its rounding error.
void norm_backward(float* g, const float* x, int64_t n) {
  double ss = 0;
  for (int64_t i = 0; i < n; ++i) ss += double{x[i]} * x[i];
  const double r = 1.0 / std::sqrt(ss / static_cast<double>(n) + double{kNormEps});
  double m = 0;
  for (int64_t i = 0; i < n; ++i) m += double{g[i]} * (x[i] * r);
  m /= static_cast<double>(n);
  for (int64_t i = 0; i < n; ++i) g[i] = static_cast<float>((g[i] - x[i] * r * m) * r);
}

// The bag layout handed to the EmbeddingBag: `sub` sub-bags of `slots` slots per (b, h).
struct Bags {
  int64_t sub, slots, count;  // count = batch·heads·sub
};

// Rows h·n_keys + i_c and weights ds for half c, in the sub-bag layout.
void bag_rows(const BwdParams& p, const Bags& g, int c, std::vector<int64_t>& rows,
              std::vector<float>& w) {
  const int64_t R = p.batch * p.heads, k = p.k, nk = p.n_keys;
  rows.resize(static_cast<std::size_t>(g.count * g.slots));
  w.resize(rows.size());
  parallel_for(R, balanced_grain(R, std::max<int64_t>(1, 4096 / k)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t h = r % p.heads, base = r * g.sub * g.slots;
      for (int64_t t = 0; t < g.sub * g.slots; ++t) {
        // Padding (t >= k, last sub-bag only) repeats that sub-bag's first slot with weight 0.
        const int64_t src = t < k ? t : (t / g.slots) * g.slots;
        const int64_t m = load_index(p.indices, p.index_dtype, r * k + src);
        rows[base + t] = h * nk + (c == 0 ? m / nk : m % nk);
        w[base + t] = t < k ? p.grad_scores[r * k + t] : 0.0f;
      }
    }
  });
}

// The fp32 RMS-normalised copy of a (rows, half) key table.
std::vector<float> normalised_keys(const void* keys, DType t, int64_t rows, int64_t half) {
  std::vector<float> out(static_cast<std::size_t>(rows * half));
  parallel_for(rows, balanced_grain(rows, std::max<int64_t>(1, 4096 / half)),
               [&](int64_t r0, int64_t r1) {
                 for (int64_t r = r0; r < r1; ++r)
                   load_row(keys, t, r * half, half, true, out.data() + r * half);
               });
  return out;
}

void grad_queries(const BwdParams& p, const Bags& g, int c, const void* table, DType table_dtype,
                  const std::vector<int64_t>& rows, const std::vector<float>& w) {
  const int64_t R = p.batch * p.heads, half = p.k_dim / 2;
  std::vector<float> parts;  // (count, half) when the bags are split
  embbag::FwdParams e;
  e.values = table, e.values_dtype = table_dtype;
  e.indices = rows.data(), e.index_dtype = DType::i64, e.weights = w.data();
  e.batch = g.count, e.k = g.slots, e.dim = half, e.num_rows = p.heads * p.n_keys;
  e.out_dtype = DType::f32;
  if (g.sub == 1) {
    e.out = p.grad_queries + c * half, e.out_stride = p.k_dim;
  } else {
    parts.resize(static_cast<std::size_t>(g.count * half));
    e.out = parts.data();
  }
  Registry<embbag::Fwd>::run(Registry<embbag::Fwd>::find(Backend::cpu, "v2_hwy_threads"), e);

  parallel_for(R, balanced_grain(R, std::max<int64_t>(1, 4096 / half)),
               [&](int64_t r0, int64_t r1) {
                 std::vector<float> x(static_cast<std::size_t>(half));
                 for (int64_t r = r0; r < r1; ++r) {
                   float* dq = p.grad_queries + r * p.k_dim + c * half;
                   if (g.sub > 1) {  // sub-bags summed in order: deterministic
                     std::copy_n(parts.data() + r * g.sub * half, half, dq);
                     for (int64_t s = 1; s < g.sub; ++s)
                       for (int64_t d = 0; d < half; ++d)
                         dq[d] += parts[(r * g.sub + s) * half + d];
                   }
                   if (p.qk_norm) {
                     widen(p.queries, p.dtype, r * p.k_dim + c * half, half, x.data());
                     norm_backward(dq, x.data(), half);
                   }
                 }
               });
}

// Ascending ids of the rows the indices touch in half c.
std::vector<int64_t> touched_rows(const std::vector<int64_t>& rows, int64_t num_rows) {
  std::vector<uint8_t> hit(static_cast<std::size_t>(num_rows), 0);
  for (int64_t r : rows) hit[r] = 1;
  std::vector<int64_t> out;
  for (int64_t r = 0; r < num_rows; ++r)
    if (hit[r]) out.push_back(r);
  return out;
}

void grad_keys(const BwdParams& p, const Bags& g, int c, const BwdParams::KeyGrad& out,
               const void* table, DType table_dtype, const std::vector<int64_t>& rows,
               const std::vector<float>& w) {
  const int64_t R = p.batch * p.heads, half = p.k_dim / 2, num_rows = p.heads * p.n_keys;
  const void* keys = c == 0 ? p.keys1 : p.keys2;

  // grad_out: the fp32 (normalised) query half of each bag, repeated for each sub-bag.
  std::vector<float> qhat(static_cast<std::size_t>(g.count * half));
  parallel_for(R, balanced_grain(R, std::max<int64_t>(1, 4096 / half)),
               [&](int64_t r0, int64_t r1) {
                 for (int64_t r = r0; r < r1; ++r) {
                   float* dst = qhat.data() + r * g.sub * half;
                   load_row(p.queries, p.dtype, r * p.k_dim + c * half, half, p.qk_norm, dst);
                   for (int64_t s = 1; s < g.sub; ++s) std::copy_n(dst, half, dst + s * half);
                 }
               });

  embbag::BwdParams e;
  e.values = table, e.values_dtype = table_dtype;
  e.indices = rows.data(), e.index_dtype = DType::i64, e.weights = w.data();
  e.grad_out = qhat.data();
  e.batch = g.count, e.k = g.slots, e.dim = half, e.num_rows = num_rows;

  // Where dK̂ lands: the caller's dense array, else the smaller scratch form.
  const int64_t slots = g.count * g.slots;
  const bool via_compact = !out.dense && slots <= num_rows;
  std::vector<float> dense_scratch, compact_scratch;
  std::vector<int64_t> unique;
  int64_t num_unique = 0;
  float* dense = out.dense;
  if (via_compact) {
    compact_scratch.resize(static_cast<std::size_t>(slots * half));
    unique.resize(static_cast<std::size_t>(slots));
    e.grad_values_compact = compact_scratch.data(), e.unique_rows = unique.data();
    e.num_unique = &num_unique;
  } else {
    if (!dense) {
      dense_scratch.resize(static_cast<std::size_t>(num_rows * half));
      dense = dense_scratch.data();
    }
    e.grad_values_dense = dense;
  }
  Registry<embbag::Bwd>::run(Registry<embbag::Bwd>::find(Backend::cpu, "v2_bwd_sorted"), e);
  if (!via_compact) {
    unique = touched_rows(rows, num_rows);
    num_unique = static_cast<int64_t>(unique.size());
  }

  // The touched rows' gradients: through the norm, then into the requested forms. Untouched
  // dense rows are zero, and so is their norm backward.
  const int64_t grain = balanced_grain(num_unique, std::max<int64_t>(1, 4096 / half));
  parallel_for(num_unique, grain, [&](int64_t u0, int64_t u1) {
    std::vector<float> x(static_cast<std::size_t>(half));
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t id = unique[u];
      float* row = via_compact ? compact_scratch.data() + u * half : dense + id * half;
      if (p.qk_norm) {
        widen(keys, p.dtype, id * half, half, x.data());
        norm_backward(row, x.data(), half);
      }
      if (out.has_compact()) {
        out.rows[u] = id;
        std::memcpy(out.compact + u * half, row, static_cast<std::size_t>(half) * sizeof(float));
      }
    }
  });
  if (out.has_compact()) *out.num_rows = num_unique;
}

void backward(const BwdParams& p, Stream) {
  if (std::string why = find_bad_index(p.indices, p.index_dtype, p.batch, p.heads, p.k, p.n_keys);
      !why.empty())
    fail("pk_topk_bwd/v1_bwd_compose: {}", why);
  const int64_t half = p.k_dim / 2;
  Bags g;
  g.sub = (p.k + embbag::kMaxK - 1) / embbag::kMaxK;
  g.slots = (p.k + g.sub - 1) / g.sub;
  g.count = p.batch * p.heads * g.sub;

  std::vector<int64_t> rows;
  std::vector<float> w;
  for (int c = 0; c < 2; ++c) {
    const BwdParams::KeyGrad& out = c == 0 ? p.grad_keys1 : p.grad_keys2;
    const bool dk = out.dense || out.has_compact();
    if (!p.grad_queries && !dk) continue;
    bag_rows(p, g, c, rows, w);
    const void* keys = c == 0 ? p.keys1 : p.keys2;
    std::vector<float> normalised;
    if (p.qk_norm && p.grad_queries)
      normalised = normalised_keys(keys, p.dtype, p.heads * p.n_keys, half);
    const void* table = p.qk_norm && p.grad_queries ? normalised.data() : keys;
    const DType table_dtype = p.qk_norm && p.grad_queries ? DType::f32 : p.dtype;
    if (p.grad_queries) grad_queries(p, g, c, table, table_dtype, rows, w);
    if (dk) grad_keys(p, g, c, out, table, table_dtype, rows, w);
  }
}

MEMLAYERS_REGISTER(Bwd, Variant<BwdParams>{
                            .name = "v1_bwd_compose",
                            .backend = Backend::cpu,
                            .launch = backward,
                            .summary = "EmbeddingBag pair per half: v2_hwy_threads for dq, "
                                       "v2_bwd_sorted's dV for dK, RMS-norm backward on top",
                            .deterministic = true,
                        });

}  // namespace
}  // namespace memlayers::pk_topk::cpu
