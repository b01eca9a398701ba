// The cuda and simt backends of the harness's optimiser table (harness/optim.h), written once for
// nvcc and for simt like harness/cuda/ops.cu.
//  - adamw and sparse_adam: a thread per element, the AdamW formula of optim.h in the host step's
//    operation order with explicitly rounded operations (__fmul_rn, __fadd_rn, __fsqrt_rn, IEEE
//    division), so nvcc cannot contract them into FMAs: the step equals the host step bitwise.
//    The per-step constants (bias corrections in fp64) are computed on the host as optim.cpp does.
//  - sparse_adam's row ids are checked on the host, by optim.cpp's check: the launcher copies them
//    to host memory first (n_rows·8 bytes, synchronising), so bad ids throw before anything is
//    written, as on the host backends.
//  - sum_squares: fp64 partial sums over fixed chunks of 2^14 elements (a block per chunk, a
//    fixed tree), then one block sums the partials in a fixed tree: the same result for any grid,
//    written to host memory.
#include <cmath>
#include <cstdint>
#include <vector>

#include "common/cuda.cuh"
#include "harness/cuda/device.cuh"
#include "harness/cuda/tables.h"
#include "harness/optim.h"

namespace memlayers::harness {
inline namespace MEMLAYERS_TARGET_NS {
namespace {

using device::for_each;

// optim.cpp's AdamConstants: the per-step constants of the AdamW formula.
struct AdamConstants {
  float beta1, beta2, one_minus_beta1, one_minus_beta2, eps, grad_scale;
  float step_size;     // lr / (1 − β1ᵗ)
  float inv_sqrt_bc2;  // 1 / sqrt(1 − β2ᵗ)
  float decay_factor;  // 1 − lr·wd
};

AdamConstants constants(const AdamHyper& h) {
  AdamConstants k;
  k.beta1 = h.beta1, k.beta2 = h.beta2;
  k.one_minus_beta1 = 1.0f - h.beta1, k.one_minus_beta2 = 1.0f - h.beta2;
  k.eps = h.eps, k.grad_scale = h.grad_scale;
  const double t = static_cast<double>(h.step);
  k.step_size = static_cast<float>(h.lr / (1.0 - std::pow(double(h.beta1), t)));
  k.inv_sqrt_bc2 = static_cast<float>(1.0 / std::sqrt(1.0 - std::pow(double(h.beta2), t)));
  k.decay_factor = static_cast<float>(1.0 - double(h.lr) * double(h.weight_decay));
  return k;
}

// One element of AdamW, rounding as the host's adam_element does:
// g = grad·s; m = β1·m + (1−β1)·g; v = β2·v + ((1−β2)·g)·g;
// p = p·decay − (step·m) / (sqrt(v)·inv_sqrt_bc2 + eps).
__device__ __forceinline__ void adam_element(const AdamConstants& k, float& p, float grad, float& m,
                                             float& v) {
  const float g = __fmul_rn(grad, k.grad_scale);
  m = __fadd_rn(__fmul_rn(k.beta1, m), __fmul_rn(k.one_minus_beta1, g));
  v = __fadd_rn(__fmul_rn(k.beta2, v), __fmul_rn(__fmul_rn(k.one_minus_beta2, g), g));
  const float denom = __fadd_rn(__fmul_rn(__fsqrt_rn(v), k.inv_sqrt_bc2), k.eps);
  p = __fadd_rn(__fmul_rn(p, k.decay_factor), -(__fmul_rn(k.step_size, m) / denom));
}

struct AdamWElem {
  float *params, *m, *v;
  const float* grads;
  AdamConstants k;
  __device__ void operator()(int64_t i) const { adam_element(k, params[i], grads[i], m[i], v[i]); }
};

// Element c of gradient row j updates element row_ids[j]·dim + c of the table and its moments.
struct SparseAdamElem {
  float *table, *m, *v;
  const int64_t* row_ids;
  const float* grad_rows;
  int64_t dim;
  AdamConstants k;
  __device__ void operator()(int64_t i) const {
    const int64_t j = i / dim, e = row_ids[j] * dim + (i - j * dim);
    adam_element(k, table[e], grad_rows[i], m[e], v[e]);
  }
};

constexpr int64_t kChunk = int64_t{1} << 14;

// partial[ch] = Σ x² over chunk ch in fp64 (a block per chunk, grid-stride over chunks).
__global__ void __launch_bounds__(device::kThreads)
    sum_squares_chunks_kernel(const float* x, int64_t n, int64_t chunks, double* partial) {
  __shared__ double sh[device::kThreads];
  for (int64_t ch = blockIdx.x; ch < chunks; ch += gridDim.x) {
    const int64_t end = n < (ch + 1) * kChunk ? n : (ch + 1) * kChunk;
    double acc = 0.0;
    for (int64_t i = ch * kChunk + threadIdx.x; i < end; i += device::kThreads)
      acc += double(x[i]) * double(x[i]);
    acc = device::block_sum(acc, sh);
    if (threadIdx.x == 0) partial[ch] = acc;
  }
}

__global__ void __launch_bounds__(device::kThreads)
    sum_partials_kernel(const double* partial, int64_t chunks, double* out) {
  __shared__ double sh[device::kThreads];
  double acc = 0.0;
  for (int64_t c = threadIdx.x; c < chunks; c += device::kThreads) acc += partial[c];
  acc = device::block_sum(acc, sh);
  if (threadIdx.x == 0) *out = acc;
}

void adamw(const AdamWStep& s) {
  validate(s);
  for_each("harness_adamw", s.n, AdamWElem{s.params, s.m, s.v, s.grads, constants(s.h)});
}

void sparse_adam(const SparseAdamStep& s) {
  validate(s);
  if (s.n_rows == 0) return;
  const std::vector<int64_t> ids = device::to_host(s.row_ids, s.n_rows);
  detail::check_sparse_row_ids(ids.data(), s.n_rows, s.rows);
  for_each("harness_sparse_adam", s.n_rows * s.dim,
           SparseAdamElem{s.table, s.m, s.v, s.row_ids, s.grad_rows, s.dim, constants(s.h)});
}

void sum_squares(const SumSquares& s) {
  validate(s);
  if (s.n == 0) {
    *s.out = 0.0;
    return;
  }
  const int64_t chunks = ceil_div(s.n, kChunk);
  dev::Buffer<double> partial(static_cast<std::size_t>(chunks), device::kStream),
      total(1, device::kStream);
  launch_kernel("harness_sum_squares_chunks", sum_squares_chunks_kernel, dim3(grid_cap(chunks)),
                dim3(device::kThreads), 0, device::kStream, s.x, s.n, chunks, partial.get());
  launch_kernel("harness_sum_squares_total", sum_partials_kernel, dim3(1), dim3(device::kThreads),
                0, device::kStream, partial.get(), chunks, total.get());
  *s.out = device::to_host(total.get(), 1)[0];
}

OptimOps make_optim_ops() {
  OptimOps t;
  t.backend = MEMLAYERS_KERNEL_BACKEND;
  t.memory = &device::memory();
  t.adamw = adamw;
  t.sparse_adam = sparse_adam;
  t.sum_squares = sum_squares;
  return t;
}

}  // namespace
}  // namespace MEMLAYERS_TARGET_NS

namespace detail {
#if defined(__CUDACC__)
OptimOps cuda_optim_ops() { return make_optim_ops(); }
#else
OptimOps simt_optim_ops() { return make_optim_ops(); }
#endif
}  // namespace detail

}  // namespace memlayers::harness
