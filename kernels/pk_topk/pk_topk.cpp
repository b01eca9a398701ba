// Validation, data checks, and the declared bytes and flops of the product-key top-k search
// (DESIGN.md §5), plus the registration of the reference as variants of backend `reference`.
#include "pk_topk/pk_topk.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "common/bf16.h"
#include "common/validate.h"
#include "reference/pk_topk.h"

namespace memlayers::pk_topk {

namespace {

std::string check_shape(int64_t batch, int64_t heads, int64_t n_keys, int64_t k_dim, int64_t k,
                        DType index_dtype) {
  if (batch < 1) return fmt::format("batch = {}: accepted batch >= 1", batch);
  if (heads < 1) return fmt::format("heads = {}: accepted heads >= 1", heads);
  if (n_keys < 1 || n_keys > kMaxNKeys)
    return fmt::format("n_keys = {}: accepted 1 <= n_keys <= {}", n_keys, kMaxNKeys);
  if (k_dim < 2 || k_dim > kMaxKDim || k_dim % 2 != 0)
    return fmt::format("k_dim = {}: accepted even k_dim (two halves) with 2 <= k_dim <= {}", k_dim,
                       kMaxKDim);
  if (k < 1 || k > std::min(n_keys, kMaxK))
    return fmt::format("k = {}: accepted 1 <= k <= min(n_keys = {}, {})", k, n_keys, kMaxK);
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
  // batch·heads·max(k_dim, k) bounds every flat offset into the queries and the results;
  // heads·n_keys·k_dim every offset into the keys.
  if (batch > kMax / heads / std::max(k_dim, k))
    return fmt::format("batch = {} with heads = {} overflows 64-bit offsets", batch, heads);
  if (heads > kMax / n_keys / k_dim)
    return fmt::format("heads = {} with n_keys = {} overflows 64-bit offsets", heads, n_keys);
  if (index_dtype == DType::i32 && n_keys * n_keys > std::numeric_limits<int32_t>::max())
    return fmt::format(
        "index_dtype = int32 with n_keys = {}: N = n_keys² = {} does not fit; accepted int64, "
        "or int32 when n_keys² < 2^31",
        n_keys, n_keys * n_keys);
  return {};
}

std::string check_inputs(const void* q, const void* k1, const void* k2, DType dtype,
                         DType index_dtype) {
  std::string e;
  if (!(e = check_dtype("dtype", dtype, {DType::f32, DType::bf16})).empty()) return e;
  if (!(e = check_dtype("index_dtype", index_dtype, {DType::i32, DType::i64})).empty()) return e;
  const std::size_t s = dtype_size(dtype);
  if (!(e = check_pointer("queries", q, s, true, "the (batch, heads, k_dim) queries")).empty())
    return e;
  if (!(e = check_pointer("keys1", k1, s, true, "the (heads, n_keys, k_dim/2) sub-keys")).empty())
    return e;
  return check_pointer("keys2", k2, s, true, "the (heads, n_keys, k_dim/2) sub-keys");
}

std::string check_key_grad(const char* name, const BwdParams::KeyGrad& g) {
  std::string e;
  const std::string dense = std::string(name) + ".dense", rows = std::string(name) + ".rows",
                    compact = std::string(name) + ".compact",
                    count = std::string(name) + ".num_rows";
  if (!(e = check_pointer(dense.c_str(), g.dense, 4, false, "fp32")).empty()) return e;
  if (!(e = check_pointer(rows.c_str(), g.rows, 8, false, "int64")).empty()) return e;
  if (!(e = check_pointer(compact.c_str(), g.compact, 4, false, "fp32")).empty()) return e;
  if (!(e = check_pointer(count.c_str(), g.num_rows, 8, false, "int64")).empty()) return e;
  const int set = (g.rows != nullptr) + (g.compact != nullptr) + (g.num_rows != nullptr);
  if (set != 0 && set != 3)
    return fmt::format(
        "the compact {} needs rows, compact and num_rows together; got rows {}, compact {}, "
        "num_rows {}",
        name, g.rows ? "set" : "null", g.compact ? "set" : "null", g.num_rows ? "set" : "null");
  return {};
}

}  // namespace

std::string validate(const FwdParams& p) {
  std::string e;
  if (!(e = check_shape(p.batch, p.heads, p.n_keys, p.k_dim, p.k, p.index_dtype)).empty()) return e;
  if (!(e = check_inputs(p.queries, p.keys1, p.keys2, p.dtype, p.index_dtype)).empty()) return e;
  if (!(e = check_pointer("scores", p.scores, 4, true, "the (batch, heads, k) fp32 scores"))
           .empty())
    return e;
  return check_pointer("indices", p.indices, dtype_size(p.index_dtype), true,
                       "the (batch, heads, k) indices");
}

std::string validate(const BwdParams& p) {
  std::string e;
  if (!(e = check_shape(p.batch, p.heads, p.n_keys, p.k_dim, p.k, p.index_dtype)).empty()) return e;
  if (!(e = check_inputs(p.queries, p.keys1, p.keys2, p.dtype, p.index_dtype)).empty()) return e;
  if (!(e = check_pointer("indices", p.indices, dtype_size(p.index_dtype), true,
                          "the forward's (batch, heads, k) indices"))
           .empty())
    return e;
  if (!(e = check_pointer("grad_scores", p.grad_scores, 4, true,
                          "the (batch, heads, k) fp32 d(scores)"))
           .empty())
    return e;
  if (!(e = check_pointer("grad_queries", p.grad_queries, 4, false, "fp32")).empty()) return e;
  if (!(e = check_key_grad("grad_keys1", p.grad_keys1)).empty()) return e;
  if (!(e = check_key_grad("grad_keys2", p.grad_keys2)).empty()) return e;
  if (!p.grad_queries && !p.grad_keys1.any() && !p.grad_keys2.any())
    return "no output requested: set grad_queries, or a dense or compact form of grad_keys1 or "
           "grad_keys2";
  return {};
}

int64_t compact_capacity(const BwdParams& p) { return p.heads * std::min(p.batch * p.k, p.n_keys); }

std::string find_nonfinite(const void* queries_host, DType dtype, int64_t batch, int64_t heads,
                           int64_t k_dim) {
  if (dtype != DType::f32 && dtype != DType::bf16)
    return fmt::format("dtype = {}: accepted fp32, bf16", to_string(dtype));
  if (batch > 0 && heads > 0 && k_dim > 0 && !queries_host) return "queries is null";
  for (int64_t i = 0; i < batch * heads * k_dim; ++i) {
    const float v = dtype == DType::bf16
                        ? bf16_bits_to_float(static_cast<const uint16_t*>(queries_host)[i])
                        : static_cast<const float*>(queries_host)[i];
    if (!std::isfinite(v))
      return fmt::format("queries[b={}, h={}, {}] is {}: the search needs finite queries",
                         i / (heads * k_dim), i / k_dim % heads, i % k_dim, v);
  }
  return {};
}

std::string find_bad_index(const void* indices_host, DType index_dtype, int64_t batch,
                           int64_t heads, int64_t k, int64_t n_keys) {
  if (index_dtype != DType::i32 && index_dtype != DType::i64)
    return fmt::format("index_dtype = {}: accepted int32, int64", to_string(index_dtype));
  if (batch > 0 && heads > 0 && k > 0 && !indices_host) return "indices is null";
  const int64_t n = n_keys * n_keys;
  for (int64_t i = 0; i < batch * heads * k; ++i) {
    const int64_t m = index_dtype == DType::i32
                          ? int64_t{static_cast<const int32_t*>(indices_host)[i]}
                          : static_cast<const int64_t*>(indices_host)[i];
    if (m < 0 || m >= n)
      return fmt::format("index {} out of range [0, {}) at b={}, h={}, slot {}", m, n,
                         i / (heads * k), i / k % heads, i % k);
  }
  return {};
}

double Fwd::bytes_moved(const Params& p) {
  const double B = double(p.batch), h = double(p.heads), nk = double(p.n_keys), n = double(p.k_dim),
               k = double(p.k);
  const double s = double(dtype_size(p.dtype)), si = double(dtype_size(p.index_dtype));
  return B * h * n * s + 2 * h * nk * (n / 2) * s + B * h * k * (4 + si);
}

double Fwd::flops(const Params& p) {
  return 2.0 * double(p.batch) * double(p.heads) * double(p.n_keys) * double(p.k_dim);
}

double Fwd::score_matrix_bytes(const Params& p) {
  return 2.0 * double(p.batch) * double(p.heads) * double(p.n_keys) * 4 * 2;
}

double Bwd::bytes_moved(const Params& p) {
  const double B = double(p.batch), h = double(p.heads), nk = double(p.n_keys), n = double(p.k_dim),
               k = double(p.k);
  const double s = double(dtype_size(p.dtype)), si = double(dtype_size(p.index_dtype));
  double bytes = B * h * n * s + B * h * k * (si + 4) + 2 * h * nk * (n / 2) * s;
  if (p.grad_queries) bytes += B * h * n * 4;
  for (const auto* g : {&p.grad_keys1, &p.grad_keys2}) {
    if (g->dense) bytes += h * nk * (n / 2) * 4;
    if (g->has_compact()) bytes += double(compact_capacity(p)) * ((n / 2) * 4 + 8);
  }
  return bytes;
}

double Bwd::flops(const Params& p) {
  const double per = 2.0 * double(p.batch) * double(p.heads) * double(p.k) * double(p.k_dim);
  const bool dk = p.grad_keys1.any() || p.grad_keys2.any();
  return (p.grad_queries ? per : 0.0) + (dk ? per : 0.0);
}

// ---- the reference as a variant ----
namespace {
MEMLAYERS_REGISTER(Fwd, Variant<FwdParams>{
                            .name = "reference",
                            .backend = Backend::reference,
                            .launch = [](const FwdParams& p, Stream) { reference::pk_topk_fwd(p); },
                            .summary = "fp64 scores, sorted half lists, all k×k pairs: the truth",
                            .deterministic = true,
                        });
MEMLAYERS_REGISTER(Bwd, Variant<BwdParams>{
                            .name = "reference",
                            .backend = Backend::reference,
                            .launch = [](const BwdParams& p, Stream) { reference::pk_topk_bwd(p); },
                            .summary = "fp64 sums per touched row in a std::map: the ground truth",
                            .deterministic = true,
                        });
}  // namespace

}  // namespace memlayers::pk_topk
