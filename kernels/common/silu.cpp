// See silu.h.
#include "common/silu.h"

#include <algorithm>
#include <initializer_list>

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "common/silu.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>

#include <hwy/contrib/math/math-inl.h>

HWY_BEFORE_NAMESPACE();
namespace memlayers::silu_simd {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

using DF = hn::ScalableTag<float>;
using VF = hn::Vec<DF>;

// σ(h), from e = exp(-|h|) in (0, 1]: no overflow at any h; NaN stays NaN through h·σ.
HWY_INLINE VF Sigmoid(DF df, VF h) {
  const VF one = hn::Set(df, 1.0f);
  const VF e = hn::Exp(df, hn::Neg(hn::Abs(h)));
  const VF r = hn::Div(one, hn::Add(one, e));
  return hn::IfThenElse(hn::Ge(h, hn::Zero(df)), r, hn::Mul(e, r));
}

// One vector of m = y·silu(h) at element i.
HWY_INLINE void ProductAt(DF df, const float* y, const float* h, float* m, int64_t i) {
  const VF hv = hn::LoadU(df, h + i);
  hn::StoreU(hn::Mul(hn::LoadU(df, y + i), hn::Mul(hv, Sigmoid(df, hv))), df, m + i);
}

// One vector of dy = u·silu(h), dh = u·y·silu'(h) at i.
HWY_INLINE void BackwardAt(DF df, const float* u, const float* y, const float* h, float* dy,
                           float* dh, int64_t i) {
  const VF one = hn::Set(df, 1.0f);
  const VF hv = hn::LoadU(df, h + i), uv = hn::LoadU(df, u + i);
  const VF s = Sigmoid(df, hv);
  hn::StoreU(hn::Mul(uv, hn::Mul(hv, s)), df, dy + i);
  const VF grad = hn::Mul(s, hn::MulAdd(hv, hn::Sub(one, s), one));
  hn::StoreU(hn::Mul(hn::Mul(uv, hn::LoadU(df, y + i)), grad), df, dh + i);
}

// The last n − i (< one vector) elements go through zero-padded copies.
struct Tail {
  static constexpr size_t kMax = hn::MaxLanes(DF());
  HWY_ALIGN float in[3][kMax] = {};
  HWY_ALIGN float out[2][kMax] = {};
  Tail(int64_t count, std::initializer_list<const float*> from) {
    int a = 0;
    for (const float* f : from) std::copy_n(f, count, in[a++]);
  }
};

void SiluProduct(const float* y, const float* h, float* m, int64_t n) {
  const DF df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  int64_t i = 0;
  for (; i + N <= n; i += N) ProductAt(df, y, h, m, i);
  if (i == n) return;
  Tail t(n - i, {y + i, h + i});
  ProductAt(df, t.in[0], t.in[1], t.out[0], 0);
  std::copy_n(t.out[0], n - i, m + i);
}

void SiluBackward(const float* u, const float* y, const float* h, float* dy, float* dh, int64_t n) {
  const DF df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  int64_t i = 0;
  for (; i + N <= n; i += N) BackwardAt(df, u, y, h, dy, dh, i);
  if (i == n) return;
  Tail t(n - i, {u + i, y + i, h + i});
  BackwardAt(df, t.in[0], t.in[1], t.in[2], t.out[0], t.out[1], 0);
  std::copy_n(t.out[0], n - i, dy + i);
  std::copy_n(t.out[1], n - i, dh + i);
}

}  // namespace HWY_NAMESPACE
}  // namespace memlayers::silu_simd
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace memlayers {
namespace silu_simd {
HWY_EXPORT(SiluProduct);
HWY_EXPORT(SiluBackward);
}  // namespace silu_simd

void silu_product(const float* y, const float* h, float* m, int64_t n) {
  using namespace silu_simd;
  HWY_DYNAMIC_DISPATCH(SiluProduct)(y, h, m, n);
}

void silu_backward(const float* u, const float* y, const float* h, float* dy, float* dh,
                   int64_t n) {
  using namespace silu_simd;
  HWY_DYNAMIC_DISPATCH(SiluBackward)(u, y, h, dy, dh, n);
}
}  // namespace memlayers
#endif  // HWY_ONCE
