// v1_bwd_scalar — embbag backward, the plain loop: dense dV is zeroed and scattered into in
// (bag, slot) order; the compact dV maps each row to its slot among the sorted unique rows by
// binary search; dw is a dot product per (bag, slot). Single-threaded, fp32 accumulation,
// deterministic. The baseline for v2_bwd_sorted.
#include <algorithm>
#include <cstring>
#include <vector>

#include "embbag/cpu/common.h"
#include "embbag/embbag.h"

namespace memlayers::embbag::cpu {
namespace {

void bwd_v1_scalar(const BwdParams& p, Stream) {
  const int64_t vs = p.values_stride ? p.values_stride : p.dim;
  const int64_t n = p.batch * p.k;
  if (p.grad_weights)
    for (int64_t i = 0; i < n; ++i) {
      const int64_t r = load_index(p.indices, p.index_dtype, i);
      const float* dy = p.grad_out + (i / p.k) * p.dim;
      float dot = 0;
      for (int64_t d = 0; d < p.dim; ++d)
        dot += dy[d] * load_value(p.values, p.values_dtype, r * vs + d);
      p.grad_weights[i] = dot;
    }
  if (p.grad_values_dense) {
    std::memset(p.grad_values_dense, 0,
                static_cast<std::size_t>(p.num_rows * p.dim) * sizeof(float));
    for (int64_t i = 0; i < n; ++i) {
      float* g = p.grad_values_dense + load_index(p.indices, p.index_dtype, i) * p.dim;
      const float* dy = p.grad_out + (i / p.k) * p.dim;
      for (int64_t d = 0; d < p.dim; ++d) g[d] += p.weights[i] * dy[d];
    }
  }
  if (p.grad_values_compact) {
    std::vector<int64_t> rows(static_cast<std::size_t>(n));
    for (int64_t i = 0; i < n; ++i) rows[i] = load_index(p.indices, p.index_dtype, i);
    std::sort(rows.begin(), rows.end());
    rows.erase(std::unique(rows.begin(), rows.end()), rows.end());
    const auto u = static_cast<int64_t>(rows.size());
    std::copy(rows.begin(), rows.end(), p.unique_rows);
    *p.num_unique = u;
    std::memset(p.grad_values_compact, 0, static_cast<std::size_t>(u * p.dim) * sizeof(float));
    for (int64_t i = 0; i < n; ++i) {
      const int64_t r = load_index(p.indices, p.index_dtype, i);
      const int64_t slot = std::lower_bound(rows.begin(), rows.end(), r) - rows.begin();
      float* g = p.grad_values_compact + slot * p.dim;
      const float* dy = p.grad_out + (i / p.k) * p.dim;
      for (int64_t d = 0; d < p.dim; ++d) g[d] += p.weights[i] * dy[d];
    }
  }
}

MEMLAYERS_REGISTER(Bwd, Variant<BwdParams>{
                            .name = "v1_bwd_scalar",
                            .backend = Backend::cpu,
                            .launch = bwd_v1_scalar,
                            .summary = "plain scatter in (bag, slot) order, dot per slot, fp32",
                            .deterministic = true,
                        });

}  // namespace
}  // namespace memlayers::embbag::cpu
