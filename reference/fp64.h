// Small fp64 helpers the CPU references share: typed reads of the Params' untyped pointers, the
// dot product, and the RMS norm of the product-key search (forward and backward).
#pragma once
#include <cmath>
#include <cstdint>
#include <vector>

#include "common/bf16.h"
#include "common/dtype.h"
#include "pk_topk/pk_topk.h"

namespace memlayers::reference::fp64 {

using Vec = std::vector<double>;

// Element i of an fp32 or bf16 array, widened exactly.
inline double element(const void* data, DType t, int64_t i) {
  return t == DType::bf16 ? double{bf16_bits_to_float(static_cast<const uint16_t*>(data)[i])}
                          : double{static_cast<const float*>(data)[i]};
}

// Element i of an int32 or int64 index array.
inline int64_t index_at(const void* indices, DType t, int64_t i) {
  return t == DType::i32 ? int64_t{static_cast<const int32_t*>(indices)[i]}
                         : static_cast<const int64_t*>(indices)[i];
}

inline double dot(const Vec& a, const Vec& b) {
  double s = 0;
  for (std::size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// sqrt(mean(x²) + kNormEps): the QK-norm's divisor.
inline double rms(const Vec& x) {
  double s = 0;
  for (double v : x) s += v * v;
  return std::sqrt(s / double(x.size()) + double(pk_topk::kNormEps));
}

// x / rms(x) when norm is set, else x.
inline Vec normalised(Vec x, bool norm) {
  if (norm) {
    const double r = rms(x);
    for (double& v : x) v /= r;
  }
  return x;
}

// dx from dx̂ through x̂ = x / rms(x): (dx̂ − x̂·mean(dx̂·x̂)) / rms(x). x is the raw row.
inline Vec norm_backward(const Vec& x, const Vec& dxhat) {
  const double r = rms(x);
  double m = 0;
  for (std::size_t i = 0; i < x.size(); ++i) m += dxhat[i] * x[i] / r;
  m /= double(x.size());
  Vec dx(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) dx[i] = (dxhat[i] - x[i] / r * m) / r;
  return dx;
}

}  // namespace memlayers::reference::fp64
