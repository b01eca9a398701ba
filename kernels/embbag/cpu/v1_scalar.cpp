// v1_scalar — embbag forward, the plain loop: one bag at a time, one row at a time, fp32
// accumulation in a per-bag buffer. The baseline every optimised CPU variant is measured against;
// the compiler may vectorise the inner loop, but nothing else is done for bandwidth (no threads,
// no prefetch, a dtype branch per element).
#include <vector>

#include "embbag/cpu/common.h"
#include "embbag/embbag.h"

namespace memlayers::embbag::cpu {
namespace {

void fwd_v1_scalar(const FwdParams& p, Stream) {
  const int64_t vs = p.values_stride ? p.values_stride : p.dim;
  const int64_t os = p.out_stride ? p.out_stride : p.dim;
  std::vector<float> acc(static_cast<std::size_t>(p.dim));
  for (int64_t b = 0; b < p.batch; ++b) {
    std::fill(acc.begin(), acc.end(), 0.0f);
    for (int64_t j = 0; j < p.k; ++j) {
      const int64_t r = load_index(p.indices, p.index_dtype, b * p.k + j);
      const float w = p.weights[b * p.k + j];
      for (int64_t d = 0; d < p.dim; ++d)
        acc[d] += w * load_value(p.values, p.values_dtype, r * vs + d);
    }
    for (int64_t d = 0; d < p.dim; ++d) store_value(p.out, p.out_dtype, b * os + d, acc[d]);
  }
}

MEMLAYERS_REGISTER(Fwd, Variant<FwdParams>{
                            .name = "v1_scalar",
                            .backend = Backend::cpu,
                            .launch = fwd_v1_scalar,
                            .summary = "plain loop over bags and rows, fp32 accumulation",
                            .deterministic = true,
                        });

}  // namespace
}  // namespace memlayers::embbag::cpu
