// v1_blas_select — the straightforward CPU baseline of the product-key top-k search, the figure
// the optimised variants are measured against:
//  - bf16 inputs widened to fp32 and, with qk_norm, each query half and each sub-key row
//    RMS-normalised (fp32) into scratch copies first; fp32 inputs without the norm are used in
//    place;
//  - per head, both (batch, n_keys) score matrices by OpenBLAS sgemm (common/blas.h: one OpenBLAS
//    thread on each thread of the pool), materialised in full (in row chunks of at most 64 MiB
//    per half, so a huge batch cannot exhaust memory) and read back;
//  - per (b, h) row, threaded over rows (kernels/common/parallel.h): std::nth_element of each
//    half's (score, index) pairs, the k best sorted, then the pruned k×k candidate step
//    ((i+1)(j+1) <= k) and the final top-k.
// Bottleneck it leaves: the 2·B·h·n_keys·4 bytes of score matrices written and read back, and a
// selection that touches every score several times.
// Measured (scratch timing program, 2-core AMD EPYC VM shared with other jobs, interleaved with
// v2_fused_pruned in the same process, medians of 5): B=4096, h=4, n_keys=1024, k_dim=512, k=32,
// fp32, 2 threads — 993-1019 ms wall, 651-674 ms CPU; one thread at B=1024, 158 ms CPU, of which
// the sgemm is ~51 ms (OpenBLAS ~84 GFLOP/s per core) and the selection the rest.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "common/blas.h"
#include "common/parallel.h"
#include "pk_topk/cpu/common.h"
#include "pk_topk/pk_topk.h"

namespace memlayers::pk_topk::cpu {
namespace {

// The fp32 (optionally normalised) copy of a (rows, k_dim) query or (rows, half) key array, each
// `width`-wide segment normalised on its own. Empty when the input can be used as it is.
std::vector<float> prepare(const void* src, DType t, int64_t rows, int64_t row_width, int64_t width,
                           bool norm) {
  if (t == DType::f32 && !norm) return {};
  std::vector<float> out(static_cast<std::size_t>(rows * row_width));
  const int64_t segments = rows * (row_width / width);
  parallel_for(segments, balanced_grain(segments, std::max<int64_t>(1, 4096 / width)),
               [&](int64_t s0, int64_t s1) {
                 for (int64_t s = s0; s < s1; ++s)
                   load_row(src, t, s * width, width, norm, out.data() + s * width);
               });
  return out;
}

void forward(const FwdParams& p, Stream) {
  const int64_t B = p.batch, H = p.heads, nk = p.n_keys, half = p.k_dim / 2, k = p.k;
  const std::vector<float> q_copy = prepare(p.queries, p.dtype, B * H, p.k_dim, half, p.qk_norm);
  const std::vector<float> k1_copy = prepare(p.keys1, p.dtype, H * nk, half, half, p.qk_norm);
  const std::vector<float> k2_copy = prepare(p.keys2, p.dtype, H * nk, half, half, p.qk_norm);
  const float* q = q_copy.empty() ? static_cast<const float*>(p.queries) : q_copy.data();
  const float* keys[2] = {k1_copy.empty() ? static_cast<const float*>(p.keys1) : k1_copy.data(),
                          k2_copy.empty() ? static_cast<const float*>(p.keys2) : k2_copy.data()};

  const int64_t chunk = std::clamp<int64_t>((int64_t{16} << 20) / nk, 1, B);
  std::vector<float> scores[2];
  for (auto& s : scores) s.resize(static_cast<std::size_t>(chunk * nk));

  for (int64_t h = 0; h < H; ++h)
    for (int64_t b0 = 0; b0 < B; b0 += chunk) {
      const int64_t rows = std::min(chunk, B - b0);
      for (int c = 0; c < 2; ++c)  // scores[c] (rows, nk) = q_c (rows, half) · K_c[h]ᵀ
        host_blas::gemm(false, true, rows, nk, half, 1.0f, q + (b0 * H + h) * p.k_dim + c * half,
                        H * p.k_dim, keys[c] + h * nk * half, half, 0.0f, scores[c].data(), nk);
      parallel_for(rows, balanced_grain(rows, std::max<int64_t>(1, 16384 / nk)),
                   [&](int64_t r0, int64_t r1) {
                     std::vector<Entry> all(static_cast<std::size_t>(nk)),
                         best(static_cast<std::size_t>(2 * k));
                     std::vector<uint64_t> cand;
                     for (int64_t r = r0; r < r1; ++r) {
                       for (int c = 0; c < 2; ++c) {
                         const float* row = scores[c].data() + r * nk;
                         for (int64_t i = 0; i < nk; ++i)
                           all[i] = {row[i], static_cast<int32_t>(i)};
                         std::nth_element(all.begin(), all.begin() + (k - 1), all.end());
                         std::sort(all.begin(), all.begin() + k);
                         std::copy_n(all.begin(), k, best.begin() + c * k);
                       }
                       combine(best.data(), best.data() + k, k, nk, cand, p.scores, p.indices,
                               p.index_dtype, ((b0 + r) * H + h) * k);
                     }
                   });
    }
}

MEMLAYERS_REGISTER(Fwd, Variant<FwdParams>{
                            .name = "v1_blas_select",
                            .backend = Backend::cpu,
                            .launch = forward,
                            .supports =
                                [](const FwdParams& p) {
                                  // cblas takes int sizes and leading dimensions.
                                  if (p.heads * p.k_dim > INT32_MAX)
                                    return std::string(
                                        "heads·k_dim beyond 2^31 - 1 does not fit cblas's int "
                                        "leading dimension");
                                  return std::string();
                                },
                            .summary = "OpenBLAS sgemm of both (B, n_keys) score matrices per "
                                       "head, nth_element per half row, pruned k×k candidates",
                            .deterministic = true,
                        });

}  // namespace
}  // namespace memlayers::pk_topk::cpu
