// SiLU-gated products and their gradients, SIMD (Highway, runtime dispatch) with a vector exp
// (hwy/contrib/math, ≤ 1 ulp): memory+'s gating (kernels/memory_layer/cpu/v1_compose.cpp) and the
// harness's SwiGLU (harness/ops_cpu.cpp), where glibc's scalar expf per element had been ~3% of a
// B-256 training step of the layer and ~5% of the harness's memory+ step. silu(h) = h·σ(h), σ
// from e = exp(-|h|) (1/(1+e) for h ≥ 0, e/(1+e) below), so no exp overflows. Single-threaded:
// callers split the rows. A scalar 1/(1+expf(-h)) rounds differently (within a few ulp).
#pragma once

#include <cstdint>

namespace memlayers {

// m[i] = y[i] · silu(h[i]) for i in [0, n).
void silu_product(const float* y, const float* h, float* m, int64_t n);

// dy[i] = u[i] · silu(h[i]) and dh[i] = u[i] · y[i] · silu'(h[i]), silu' = σ·(1 + h·(1 − σ)).
void silu_backward(const float* u, const float* y, const float* h, float* dy, float* dh, int64_t n);

}  // namespace memlayers
