#include "reference/embbag.h"

#include <cstdint>
#include <map>
#include <vector>

#include "common/bf16.h"
#include "common/error.h"
#include "reference/fp64.h"

namespace memlayers::reference {

namespace {

using fp64::element;
using fp64::index_at;

void store(void* out, DType t, int64_t i, double v) {
  if (t == DType::bf16)
    static_cast<uint16_t*>(out)[i] = float_to_bf16_bits(static_cast<float>(v));
  else
    static_cast<float*>(out)[i] = static_cast<float>(v);
}

int64_t checked_row(const void* indices, DType t, int64_t b, int64_t j, int64_t k,
                    int64_t num_rows) {
  const int64_t r = index_at(indices, t, b * k + j);
  MEMLAYERS_CHECK(r >= 0 && r < num_rows, "index {} out of range [0, {}) at bag {}, slot {}", r,
                  num_rows, b, j);
  return r;
}

}  // namespace

void embbag_fwd(const embbag::FwdParams& p) {
  const int64_t vs = p.values_stride ? p.values_stride : p.dim;
  const int64_t os = p.out_stride ? p.out_stride : p.dim;
  std::vector<double> acc(static_cast<std::size_t>(p.dim));
  for (int64_t b = 0; b < p.batch; ++b) {
    std::fill(acc.begin(), acc.end(), 0.0);
    for (int64_t j = 0; j < p.k; ++j) {
      const int64_t r = checked_row(p.indices, p.index_dtype, b, j, p.k, p.num_rows);
      const double w = p.weights[b * p.k + j];
      for (int64_t d = 0; d < p.dim; ++d)
        acc[d] += w * element(p.values, p.values_dtype, r * vs + d);
    }
    for (int64_t d = 0; d < p.dim; ++d) store(p.out, p.out_dtype, b * os + d, acc[d]);
  }
}

void embbag_bwd(const embbag::BwdParams& p) {
  const int64_t vs = p.values_stride ? p.values_stride : p.dim;
  std::map<int64_t, std::vector<double>> grad;  // ordered: the compact form lists rows ascending
  for (int64_t b = 0; b < p.batch; ++b)
    for (int64_t j = 0; j < p.k; ++j) {
      const int64_t r = checked_row(p.indices, p.index_dtype, b, j, p.k, p.num_rows);
      const double w = p.weights[b * p.k + j];
      const float* dy = p.grad_out + b * p.dim;
      auto& g = grad[r];
      g.resize(static_cast<std::size_t>(p.dim), 0.0);
      double dot = 0;
      for (int64_t d = 0; d < p.dim; ++d) {
        g[d] += w * dy[d];
        dot += double{dy[d]} * element(p.values, p.values_dtype, r * vs + d);
      }
      if (p.grad_weights) p.grad_weights[b * p.k + j] = static_cast<float>(dot);
    }
  if (p.grad_values_dense)
    for (int64_t r = 0; r < p.num_rows; ++r) {
      auto it = grad.find(r);
      for (int64_t d = 0; d < p.dim; ++d)
        p.grad_values_dense[r * p.dim + d] =
            it == grad.end() ? 0.0f : static_cast<float>(it->second[d]);
    }
  if (p.grad_values_compact) {
    int64_t u = 0;
    for (const auto& [r, g] : grad) {
      p.unique_rows[u] = r;
      for (int64_t d = 0; d < p.dim; ++d)
        p.grad_values_compact[u * p.dim + d] = static_cast<float>(g[d]);
      ++u;
    }
    *p.num_unique = u;
  }
}

}  // namespace memlayers::reference
