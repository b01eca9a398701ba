// The memory+ gating's elementwise passes, SIMD (Highway, runtime dispatch) with a vector exp
// (hwy/contrib/math, ≤ 1 ulp): where glibc's scalar expf had made them ~3% of a B-256 training
// step of the layer and ~5% of the harness's memory+ step. silu(h) = h·σ(h), σ from e = exp(-|h|)
// (1/(1+e) for h ≥ 0, e/(1+e) below), so no exp overflows. Single-threaded: callers split the
// rows. The scalar silu/silu_grad of v1_compose.cpp round differently (within a few ulp).
#pragma once

#include <cstdint>

namespace memlayers::memory_layer::cpu {

// m[i] = y[i] · silu(h[i]) for i in [0, n).
void silu_product(const float* y, const float* h, float* m, int64_t n);

// dy[i] = u[i] · silu(h[i]) and dh[i] = u[i] · y[i] · silu'(h[i]), silu' = σ·(1 + h·(1 − σ)).
void silu_backward(const float* u, const float* y, const float* h, float* dy, float* dh, int64_t n);

}  // namespace memlayers::memory_layer::cpu
