// Validation, index check, and the declared bytes and flops of the weighted EmbeddingBag
// (DESIGN.md §5), plus the registration of the reference as variants of backend `reference`.
#include "embbag/embbag.h"

#include <cmath>
#include <cstdint>
#include <limits>

#include "common/validate.h"
#include "reference/embbag.h"

namespace memlayers::embbag {

namespace {

std::string check_shape(int64_t batch, int64_t k, int64_t dim, int64_t num_rows) {
  if (batch < 1) return fmt::format("batch = {}: accepted batch >= 1", batch);
  if (k < 1 || k > kMaxK) return fmt::format("k = {}: accepted 1 <= k <= {}", k, kMaxK);
  if (dim < 1 || dim > kMaxDim)
    return fmt::format("dim = {}: accepted 1 <= dim <= {}", dim, kMaxDim);
  if (num_rows < 1) return fmt::format("num_rows = {}: accepted num_rows >= 1", num_rows);
  // batch·k·dim bounds every flat offset into the indices, weights, outputs and compact dV.
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
  if (batch > kMax / k / dim)
    return fmt::format("batch = {} with k = {} and dim = {} overflows 64-bit offsets", batch, k,
                       dim);
  return {};
}

std::string check_stride(const char* field, int64_t stride, int64_t dim, int64_t rows) {
  if (stride != 0 && stride < dim)
    return fmt::format("{} = {}: accepted 0 (meaning dim) or >= dim = {}", field, stride, dim);
  int64_t s = stride == 0 ? dim : stride;
  if (rows > std::numeric_limits<int64_t>::max() / s)
    return fmt::format("{} = {} with {} rows overflows 64-bit offsets", field, s, rows);
  return {};
}

}  // namespace

std::string validate(const FwdParams& p) {
  std::string e;
  if (!(e = check_shape(p.batch, p.k, p.dim, p.num_rows)).empty()) return e;
  if (!(e = check_stride("values_stride", p.values_stride, p.dim, p.num_rows)).empty()) return e;
  if (!(e = check_stride("out_stride", p.out_stride, p.dim, p.batch)).empty()) return e;
  if (!(e = check_dtype("values_dtype", p.values_dtype, {DType::f32, DType::bf16})).empty())
    return e;
  if (!(e = check_dtype("index_dtype", p.index_dtype, {DType::i32, DType::i64})).empty()) return e;
  if (!(e = check_dtype("out_dtype", p.out_dtype, {DType::f32, DType::bf16})).empty()) return e;
  const std::size_t sv = dtype_size(p.values_dtype), si = dtype_size(p.index_dtype),
                    so = dtype_size(p.out_dtype);
  if (!(e = check_pointer("values", p.values, sv, true, "the (num_rows, dim) table")).empty())
    return e;
  if (!(e = check_pointer("indices", p.indices, si, true, "the (batch, k) indices")).empty())
    return e;
  if (!(e = check_pointer("weights", p.weights, 4, true, "the (batch, k) fp32 weights")).empty())
    return e;
  if (!(e = check_pointer("out", p.out, so, true, "the (batch, dim) output")).empty()) return e;
  return {};
}

std::string validate(const BwdParams& p) {
  std::string e;
  if (!(e = check_shape(p.batch, p.k, p.dim, p.num_rows)).empty()) return e;
  if (!(e = check_stride("values_stride", p.values_stride, p.dim, p.num_rows)).empty()) return e;
  if (!(e = check_dtype("values_dtype", p.values_dtype, {DType::f32, DType::bf16})).empty())
    return e;
  if (!(e = check_dtype("index_dtype", p.index_dtype, {DType::i32, DType::i64})).empty()) return e;
  const std::size_t sv = dtype_size(p.values_dtype), si = dtype_size(p.index_dtype);
  if (!(e = check_pointer("values", p.values, sv, true, "the (num_rows, dim) table")).empty())
    return e;
  if (!(e = check_pointer("indices", p.indices, si, true, "the (batch, k) indices")).empty())
    return e;
  if (!(e = check_pointer("weights", p.weights, 4, true, "the (batch, k) fp32 weights")).empty())
    return e;
  if (!(e = check_pointer("grad_out", p.grad_out, 4, true, "the (batch, dim) fp32 dy")).empty())
    return e;
  if (!(e = check_pointer("grad_weights", p.grad_weights, 4, false, "fp32")).empty()) return e;
  if (!(e = check_pointer("grad_values_dense", p.grad_values_dense, 4, false, "fp32")).empty())
    return e;
  if (!(e = check_pointer("unique_rows", p.unique_rows, 8, false, "int64")).empty()) return e;
  if (!(e = check_pointer("grad_values_compact", p.grad_values_compact, 4, false, "fp32")).empty())
    return e;
  if (!(e = check_pointer("num_unique", p.num_unique, 8, false, "int64")).empty()) return e;
  const int compact =
      (p.unique_rows != nullptr) + (p.grad_values_compact != nullptr) + (p.num_unique != nullptr);
  if (compact != 0 && compact != 3)
    return fmt::format(
        "compact dV needs unique_rows, grad_values_compact and num_unique together; got "
        "unique_rows {}, grad_values_compact {}, num_unique {}",
        p.unique_rows ? "set" : "null", p.grad_values_compact ? "set" : "null",
        p.num_unique ? "set" : "null");
  if (!p.grad_weights && !p.grad_values_dense && compact == 0)
    return "no output requested: set grad_weights, grad_values_dense, or the compact trio "
           "(unique_rows, grad_values_compact, num_unique)";
  if (p.grad_values_dense && p.num_rows > std::numeric_limits<int64_t>::max() / p.dim)
    return fmt::format("grad_values_dense of {} x {} overflows 64-bit offsets", p.num_rows, p.dim);
  return {};
}

std::string find_bad_index(const void* indices_host, DType index_dtype, int64_t batch, int64_t k,
                           int64_t num_rows) {
  if (index_dtype != DType::i32 && index_dtype != DType::i64)
    return fmt::format("index_dtype = {}: accepted int32, int64", to_string(index_dtype));
  if (batch > 0 && k > 0 && !indices_host) return "indices is null";
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t j = 0; j < k; ++j) {
      const int64_t i = b * k + j;
      const int64_t r = index_dtype == DType::i32
                            ? int64_t{static_cast<const int32_t*>(indices_host)[i]}
                            : static_cast<const int64_t*>(indices_host)[i];
      if (r < 0 || r >= num_rows)
        return fmt::format("index {} out of range [0, {}) at bag {}, slot {}", r, num_rows, b, j);
    }
  return {};
}

double expected_unique_rows(int64_t draws, int64_t num_rows) {
  if (draws <= 0 || num_rows <= 0) return 0.0;
  const double n = static_cast<double>(num_rows);
  // N·(1 − (1 − 1/N)^n) with expm1/log1p: exact to rounding even when 1/N is below fp64's eps.
  return -n * std::expm1(static_cast<double>(draws) * std::log1p(-1.0 / n));
}

double Fwd::bytes_moved(const Params& p) {
  const double B = static_cast<double>(p.batch), k = static_cast<double>(p.k),
               dim = static_cast<double>(p.dim);
  const double sv = static_cast<double>(dtype_size(p.values_dtype)),
               si = static_cast<double>(dtype_size(p.index_dtype)),
               sy = static_cast<double>(dtype_size(p.out_dtype));
  return B * k * dim * sv + B * k * (si + 4) + B * dim * sy;
}

double Fwd::flops(const Params& p) {
  return 2.0 * static_cast<double>(p.batch) * static_cast<double>(p.k) * static_cast<double>(p.dim);
}

double Bwd::bytes_moved(const Params& p, double unique_rows) {
  const double B = static_cast<double>(p.batch), k = static_cast<double>(p.k),
               dim = static_cast<double>(p.dim);
  const double sv = static_cast<double>(dtype_size(p.values_dtype)),
               si = static_cast<double>(dtype_size(p.index_dtype));
  const bool dw = p.grad_weights != nullptr;
  const bool dv = p.grad_values_dense != nullptr || p.grad_values_compact != nullptr;
  double bytes = 0;
  if (dw || dv) bytes += B * dim * 4;                             // dy, read by both
  if (dw) bytes += B * k * dim * sv + B * k * 4;                  // rows re-read, dw written
  if (dv) bytes += unique_rows * dim * 4 + B * k * (si + 4) * 2;  // rows written, the sort
  return bytes;
}

double Bwd::dense_zeroing_bytes(const Params& p) {
  return static_cast<double>(p.num_rows) * static_cast<double>(p.dim) * 4;
}

double Bwd::flops(const Params& p) {
  const double per =
      2.0 * static_cast<double>(p.batch) * static_cast<double>(p.k) * static_cast<double>(p.dim);
  const bool dv = p.grad_values_dense != nullptr || p.grad_values_compact != nullptr;
  return (p.grad_weights ? per : 0.0) + (dv ? per : 0.0);
}

// ---- the reference as a variant ----
// Registered beside the op so that reference/ stays plain loops with no registry in sight.
namespace {
MEMLAYERS_REGISTER(Fwd, Variant<FwdParams>{
                            .name = "reference",
                            .backend = Backend::reference,
                            .launch = [](const FwdParams& p, Stream) { reference::embbag_fwd(p); },
                            .summary = "obvious loops, fp64 accumulation: the ground truth",
                            .deterministic = true,
                        });
MEMLAYERS_REGISTER(Bwd, Variant<BwdParams>{
                            .name = "reference",
                            .backend = Backend::reference,
                            .launch = [](const BwdParams& p, Stream) { reference::embbag_bwd(p); },
                            .summary = "per-row fp64 sums in a std::map: the ground truth",
                            .deterministic = true,
                        });
}  // namespace

}  // namespace memlayers::embbag
