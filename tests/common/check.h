// Comparison with a reference (DESIGN.md §4), shared by every op's tests: the relative norm
// ‖out − ref‖ / ‖ref‖ and the elementwise bound |out − ref| ≤ atol + rtol·|ref|. NaN or inf in the
// output never passes (a poisoned element that was not written shows up that way). The result is
// returned, not asserted, so a test can also require a planted bug to be rejected.
#pragma once
#include <cmath>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>

#include "common/bf16.h"
#include "common/dtype.h"

namespace memlayers::test {

struct Tolerance {
  double rel_norm;  // bound on ‖out − ref‖ / ‖ref‖
  double rtol;      // elementwise, relative to |ref|
  double atol;      // elementwise, absolute
};

// The policy's tolerances for results stored in `storage`, with atol scaled to the result's
// magnitude (max |ref|): summation error grows with the terms, not with each element's value.
inline Tolerance tolerance_for(DType storage, std::span<const double> ref) {
  const double tol = storage == DType::bf16 ? 1e-2 : 1e-5;
  double max_abs = 0;
  for (double r : ref) max_abs = std::max(max_abs, std::abs(r));
  return {tol, tol, tol * max_abs};
}

inline double norm(std::span<const double> x) {
  double s = 0;
  for (double v : x) s += v * v;
  return std::sqrt(s);
}

struct CheckResult {
  bool ok = true;
  int64_t mismatches = 0;  // elements outside atol + rtol·|ref| (non-finite ones included)
  int64_t non_finite = 0;
  double max_error = 0;  // largest |out − ref| over finite outputs
  int64_t max_error_index = -1;
  double rel_norm = 0;
  std::string message;  // empty when ok
};

// `what` names the tensor in the message ("out", "dV compact").
inline CheckResult compare(std::string_view what, std::span<const double> out,
                           std::span<const double> ref, const Tolerance& tol) {
  CheckResult r;
  if (out.size() != ref.size()) {
    r.ok = false;
    r.message = fmt::format("{}: {} elements, reference has {}", what, out.size(), ref.size());
    return r;
  }
  double diff2 = 0;
  std::vector<int64_t> first;
  for (std::size_t i = 0; i < out.size(); ++i) {
    const double o = out[i], e = ref[i];
    bool bad;
    if (!std::isfinite(o) || !std::isfinite(e)) {
      bad = true;
      ++r.non_finite;
    } else {
      const double err = std::abs(o - e);
      diff2 += err * err;
      if (err > r.max_error) {
        r.max_error = err;
        r.max_error_index = static_cast<int64_t>(i);
      }
      bad = !(err <= tol.atol + tol.rtol * std::abs(e));
    }
    if (bad) {
      ++r.mismatches;
      if (first.size() < 5) first.push_back(static_cast<int64_t>(i));
    }
  }
  const double ref_norm = norm(ref);
  r.rel_norm = ref_norm > 0 ? std::sqrt(diff2) / ref_norm : std::sqrt(diff2);
  const bool norm_ok = r.rel_norm <= tol.rel_norm;
  r.ok = r.mismatches == 0 && norm_ok;
  if (!r.ok) {
    r.message = fmt::format(
        "{}: {} of {} elements out of tolerance (atol {:.3g} + rtol {:.3g}·|ref|), {} not finite; "
        "max error {:.6g} at [{}]; relative norm {:.3g} (limit {:.3g}){}",
        what, r.mismatches, out.size(), tol.atol, tol.rtol, r.non_finite, r.max_error,
        r.max_error_index, r.rel_norm, tol.rel_norm, first.empty() ? "" : "; first mismatches:");
    for (int64_t i : first)
      r.message += fmt::format(" [{}] got {:.8g} want {:.8g};", i, out[i], ref[i]);
  }
  return r;
}

// Elements of a host copy of a tensor, widened to double for comparison.
inline std::vector<double> to_doubles(const void* data, DType t, std::size_t n) {
  std::vector<double> out(n);
  for (std::size_t i = 0; i < n; ++i) {
    switch (t) {
      case DType::f32:
        out[i] = static_cast<const float*>(data)[i];
        break;
      case DType::bf16:
        out[i] = bf16_bits_to_float(static_cast<const uint16_t*>(data)[i]);
        break;
      case DType::i32:
        out[i] = static_cast<const int32_t*>(data)[i];
        break;
      case DType::i64:
        out[i] = static_cast<double>(static_cast<const int64_t*>(data)[i]);
        break;
      case DType::f16:
        out[i] = std::nan("");
        break;  // no op of this suite stores fp16 yet
    }
  }
  return out;
}

}  // namespace memlayers::test
