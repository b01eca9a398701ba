// Kernels for simt's own tests (see test_kernels.h). Written as ordinary CUDA: nothing here knows
// whether it runs on a GPU or on simt's CPU threads.
#include "common/async_copy.cuh"
#include "common/cuda.cuh"
#include "common/mma.cuh"
#include "tests/simt/test_kernels.h"

namespace simt_tests {
namespace {

using memlayers::ceil_div;
using memlayers::launch_kernel;

__global__ void block_reduce_kernel(const float* x, float* out, int n) {
  __shared__ float s[1024];
  unsigned t = threadIdx.x;
  long long base = static_cast<long long>(blockIdx.x) * blockDim.x * 2;
  float v = 0.f;
  if (base + t < n) v += x[base + t];
  if (base + blockDim.x + t < n) v += x[base + blockDim.x + t];
  s[t] = v;
  __syncthreads();
  unsigned p = 1;
  while (p < blockDim.x) p <<= 1;
  for (unsigned stride = p / 2; stride > 0; stride >>= 1) {
    if (t < stride && t + stride < blockDim.x) s[t] += s[t + stride];
    __syncthreads();
  }
  if (t == 0) out[blockIdx.x] = s[0];
}

__global__ void warp_reduce_kernel(const float* x, float* warp_sums, float* seg_sums, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  unsigned lane = threadIdx.x % 32;
  // Lanes that exist in this (possibly partial) warp of the block.
  unsigned lanes = min(32u, blockDim.x - threadIdx.x / 32 * 32);
  float v = i < n ? x[i] : 0.f;
  float w = v;
  for (unsigned off = 16; off > 0; off >>= 1) {
    float other = __shfl_down_sync(__activemask(), w, off);
    if (lane + off < lanes) w += other;
  }
  int warp = blockIdx.x * ((blockDim.x + 31) / 32) + threadIdx.x / 32;
  if (lane == 0) warp_sums[warp] = w;
  float seg = v;
  for (int m = 4; m > 0; m >>= 1) {
    float other = __shfl_xor_sync(__activemask(), seg, m, 8);
    if ((lane ^ m) < lanes) seg += other;
  }
  if (lane % 8 == 0) seg_sums[blockIdx.x * ((blockDim.x + 7) / 8) + threadIdx.x / 8] = seg;
}

__global__ void block_scan_kernel(const int* x, int* out, int n) {
  __shared__ int warp_totals[32];
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  unsigned nwarps = (blockDim.x + 31) / 32;
  int v = i < n ? x[i] : 0;
  for (unsigned d = 1; d < 32; d <<= 1) {
    int up = __shfl_up_sync(__activemask(), v, d);
    if (lane >= d) v += up;
  }
  unsigned lanes = min(32u, blockDim.x - warp * 32);
  if (lane == lanes - 1) warp_totals[warp] = v;
  __syncthreads();
  if (warp == 0) {
    int t = lane < nwarps ? warp_totals[lane] : 0;
    for (unsigned d = 1; d < 32; d <<= 1) {
      int up = __shfl_up_sync(__activemask(), t, d);
      if (lane >= d) t += up;
    }
    if (lane < nwarps) warp_totals[lane] = t;
  }
  __syncthreads();
  if (warp > 0) v += warp_totals[warp - 1];
  if (i < n) out[i] = v;
}

constexpr int kTile = 32, kRowsPerPass = 8;

__global__ void transpose_kernel(const float* in, float* out, int rows, int cols) {
  __shared__ float tile[kTile][kTile + 1];  // +1: no bank conflicts on the column read
  int c = blockIdx.x * kTile + threadIdx.x;
  int r0 = blockIdx.y * kTile;
  for (int j = threadIdx.y; j < kTile; j += kRowsPerPass)
    if (r0 + j < rows && c < cols)
      tile[j][threadIdx.x] = in[static_cast<long long>(r0 + j) * cols + c];
  __syncthreads();
  int r = r0 + threadIdx.x;
  int c0 = blockIdx.x * kTile;
  for (int j = threadIdx.y; j < kTile; j += kRowsPerPass)
    if (c0 + j < cols && r < rows)
      out[static_cast<long long>(c0 + j) * rows + r] = tile[threadIdx.x][j];
}

__global__ void histogram_kernel(const unsigned* x, unsigned* hist, int n, int bins) {
  __shared__ unsigned h[256];
  for (int b = threadIdx.x; b < bins; b += blockDim.x) h[b] = 0;
  __syncthreads();
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
    atomicAdd(&h[x[i] % bins], 1u);
  __syncthreads();
  for (int b = threadIdx.x; b < bins; b += blockDim.x)
    if (h[b]) atomicAdd(&hist[b], h[b]);
}

__device__ float lane_value(int lane) { return 0.5f * lane - 3.f; }

__global__ void shuffles_kernel(int* i_out, float* f_out, double* d_out, float* h_out, float* b_out,
                                int width) {
  int t = threadIdx.x;
  int lane = t % 32;
  unsigned mask = __activemask();
  int iv = 100 + lane;
  float fv = lane_value(lane);
  double dv = 1e10 + lane;
  __half hv = __float2half(lane_value(lane));
  __nv_bfloat16 bv = __float2bfloat16(lane_value(lane));
  int* io = i_out + 4 * t;
  float* fo = f_out + 4 * t;
  double* dd = d_out + 4 * t;
  float* ho = h_out + 4 * t;
  float* bo = b_out + 4 * t;
  io[0] = __shfl_sync(mask, iv, lane * 3, width);
  io[1] = __shfl_up_sync(mask, iv, 3, width);
  io[2] = __shfl_down_sync(mask, iv, 5, width);
  io[3] = __shfl_xor_sync(mask, iv, 6, width);
  fo[0] = __shfl_sync(mask, fv, lane * 3, width);
  fo[1] = __shfl_up_sync(mask, fv, 3, width);
  fo[2] = __shfl_down_sync(mask, fv, 5, width);
  fo[3] = __shfl_xor_sync(mask, fv, 6, width);
  dd[0] = __shfl_sync(mask, dv, lane * 3, width);
  dd[1] = __shfl_up_sync(mask, dv, 3, width);
  dd[2] = __shfl_down_sync(mask, dv, 5, width);
  dd[3] = __shfl_xor_sync(mask, dv, 6, width);
  ho[0] = __half2float(__shfl_sync(mask, hv, lane * 3, width));
  ho[1] = __half2float(__shfl_up_sync(mask, hv, 3, width));
  ho[2] = __half2float(__shfl_down_sync(mask, hv, 5, width));
  ho[3] = __half2float(__shfl_xor_sync(mask, hv, 6, width));
  bo[0] = __bfloat162float(__shfl_sync(mask, bv, lane * 3, width));
  bo[1] = __bfloat162float(__shfl_up_sync(mask, bv, 3, width));
  bo[2] = __bfloat162float(__shfl_down_sync(mask, bv, 5, width));
  bo[3] = __bfloat162float(__shfl_xor_sync(mask, bv, 6, width));
}

__global__ void votes_kernel(unsigned* warp_out, int* block_out) {
  int t = threadIdx.x;
  int pred = (t % 3 == 0) != (t == 7);
  unsigned mask = __activemask();
  unsigned ballot = __ballot_sync(mask, pred);
  int any = __any_sync(mask, pred);
  int all = __all_sync(mask, pred);
  int warps_per_block = (blockDim.x + 31) / 32;
  int warp = blockIdx.x * warps_per_block + t / 32;
  if (t % 32 == 0) {
    warp_out[3 * warp] = ballot;
    warp_out[3 * warp + 1] = any;
    warp_out[3 * warp + 2] = all;
  }
  int count = __syncthreads_count(pred);
  int all_b = __syncthreads_and(pred);
  int any_b = __syncthreads_or(t == static_cast<int>(blockDim.x) - 1);
  if (t == 0) {
    block_out[3 * blockIdx.x] = count;
    block_out[3 * blockIdx.x + 1] = all_b;
    block_out[3 * blockIdx.x + 2] = any_b;
  }
}

__global__ void atomics_kernel(const int* x, int* words, float* fsum, double* dsum, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  int v = x[i];
  atomicAdd(&words[0], v);
  atomicAdd(reinterpret_cast<unsigned*>(&words[1]), 1u);
  atomicMax(&words[2], v);
  atomicMin(&words[3], v);
  // The classic CAS loop. The first guess is not read from words[4]: a plain read racing with
  // other threads' CAS is a data race (ThreadSanitizer reports it under simt); any guess works.
  int old = 0;
  for (;;) {
    int seen = atomicCAS(&words[4], old, old + 1);
    if (seen == old) break;
    old = seen;
  }
  atomicExch(&words[5], 1);
  atomicAdd(fsum, static_cast<float>(v));
  atomicAdd(dsum, static_cast<double>(v) * 0.5);
}

__global__ void reverse_dynamic_kernel(const float* x, float* out, int n, int early) {
  MEMLAYERS_DYNAMIC_SHARED(float, s);
  int t = threadIdx.x;
  int base = blockIdx.x * blockDim.x;
  s[t] = base + t < n ? x[base + t] : 0.f;
  if (t < early) return;  // drops out of the barrier below
  __syncthreads();
  int src = blockDim.x - 1 - t;
  if (base + t < n) out[base + t] = s[src];
}

__global__ void mma_bf16_kernel(const __nv_bfloat16* a, const __nv_bfloat16* b, const float* c,
                                float* d, int tiles) {
  const int tile = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  if (tile >= tiles) return;  // the whole warp
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const __nv_bfloat16* A = a + tile * 256;  // A[row][col] at row·16 + col
  const __nv_bfloat16* B = b + tile * 128;  // B[k][n] at n·16 + k
  uint32_t fa[4], fb[2];
  float fd[4];
  for (int r = 0; r < 4; ++r) {
    const __nv_bfloat16* p = A + (g + 8 * (r % 2)) * 16 + 2 * t + 8 * (r / 2);
    fa[r] = memlayers::pack_bf16(p[0], p[1]);
    fd[r] = c[tile * 128 + (g + 8 * (r / 2)) * 8 + 2 * t + r % 2];
  }
  for (int r = 0; r < 2; ++r) {
    const __nv_bfloat16* p = B + g * 16 + 2 * t + 8 * r;
    fb[r] = memlayers::pack_bf16(p[0], p[1]);
  }
  mma_bf16_m16n8k16(fd, fa, fb);
  for (int r = 0; r < 4; ++r) d[tile * 128 + (g + 8 * (r / 2)) * 8 + 2 * t + r % 2] = fd[r];
}

// Per 16×8×8 tile (a warp each, two warps per block): d = c + a·b through one tf32 mma (mode 0),
// or with a and b split into tf32 halves through mma_3xtf32_m16n8k8 (mode 1) or its three
// mma_tf32_m16n8k8 written out (mode 2).
__global__ void mma_tf32_kernel(const float* a, const float* b, const float* c, float* d, int tiles,
                                int mode) {
  const int tile = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  if (tile >= tiles) return;  // the whole warp
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const float* A = a + tile * 128;  // A[row][col] at row·8 + col
  const float* B = b + tile * 64;   // B[k][n] at n·8 + k
  uint32_t fa[4], fb[2];
  float fd[4];
  for (int r = 0; r < 4; ++r) {
    fa[r] = __float_as_uint(A[(g + 8 * (r % 2)) * 8 + t + 4 * (r / 2)]);
    fd[r] = c[tile * 128 + (g + 8 * (r / 2)) * 8 + 2 * t + r % 2];
  }
  for (int r = 0; r < 2; ++r) fb[r] = __float_as_uint(B[g * 8 + t + 4 * r]);
  if (mode == 0) {
    mma_tf32_m16n8k8(fd, fa, fb);
  } else {
    uint32_t a_hi[4], a_lo[4], b_hi[2], b_lo[2];
    memlayers::tf32_split(fa, a_hi, a_lo);
    memlayers::tf32_split(fb, b_hi, b_lo);
    if (mode == 1) {
      memlayers::mma_3xtf32_m16n8k8(fd, a_hi, a_lo, b_hi, b_lo);
    } else {
      mma_tf32_m16n8k8(fd, a_lo, b_hi);
      mma_tf32_m16n8k8(fd, a_hi, b_lo);
      mma_tf32_m16n8k8(fd, a_hi, b_hi);
    }
  }
  for (int r = 0; r < 4; ++r) d[tile * 128 + (g + 8 * (r / 2)) * 8 + 2 * t + r % 2] = fd[r];
}

// A ring of S chunk slots: chunk c is one cp.async group, started S − 1 chunks ahead of its use.
template <int S>
__global__ void async_copy_kernel(const float* x, float* out, int n) {
  MEMLAYERS_DYNAMIC_SHARED(float, ring);
  const int t = threadIdx.x, threads = blockDim.x, chunk = 4 * threads;
  const int chunks = (n + chunk - 1) / chunk;
  const auto start = [&](int c) {
    if (c < chunks) {
      const int i = c * chunk + 4 * t;  // this thread's first float of chunk c
      const int src_bytes = 4 * max(0, min(4, n - i));
      cp_async_16(ring + (c % S) * chunk + 4 * t, src_bytes > 0 ? x + i : x, src_bytes);
    }
    cp_async_commit();  // an empty group past the end keeps the count of groups in step
  };
  for (int c = 0; c < S - 1; ++c) start(c);
  for (int c = 0; c < chunks; ++c) {
    cp_async_wait<S - 2>();  // this thread's part of chunk c has landed
    __syncthreads();         // ... and every thread's; chunk c − 1's slot is no longer read
    start(c + S - 1);
    const int u = (t + 1) % threads;  // the neighbour's 16 bytes
    for (int e = 0; e < 4; ++e) out[c * chunk + 4 * u + e] = ring[(c % S) * chunk + 4 * u + e];
  }
  cp_async_wait<0>();
}

// ---- host launchers ----
void block_reduce(const float* x, float* out, int n, int threads, Stream s) {
  launch_kernel("block_reduce", block_reduce_kernel, dim3(ceil_div(n, 2 * threads)), dim3(threads),
                0, s, x, out, n);
}
void warp_reduce(const float* x, float* ws, float* ss, int n, int threads, Stream s) {
  launch_kernel("warp_reduce", warp_reduce_kernel, dim3(ceil_div(n, threads)), dim3(threads), 0, s,
                x, ws, ss, n);
}
void block_scan(const int* x, int* out, int n, int threads, Stream s) {
  launch_kernel("block_scan", block_scan_kernel, dim3(ceil_div(n, threads)), dim3(threads), 0, s, x,
                out, n);
}
void transpose(const float* in, float* out, int rows, int cols, Stream s) {
  launch_kernel("transpose", transpose_kernel, dim3(ceil_div(cols, kTile), ceil_div(rows, kTile)),
                dim3(kTile, kRowsPerPass), 0, s, in, out, rows, cols);
}
void histogram(const unsigned* x, unsigned* hist, int n, int bins, int threads, Stream s) {
  int blocks = std::min(ceil_div(n, threads), 8);
  launch_kernel("histogram", histogram_kernel, dim3(blocks), dim3(threads), 0, s, x, hist, n, bins);
}
void shuffles(int* i_out, float* f_out, double* d_out, float* h_out, float* b_out, int width,
              int threads, Stream s) {
  launch_kernel("shuffles", shuffles_kernel, dim3(1), dim3(threads), 0, s, i_out, f_out, d_out,
                h_out, b_out, width);
}
void votes(unsigned* warp_out, int* block_out, int threads, int blocks, Stream s) {
  launch_kernel("votes", votes_kernel, dim3(blocks), dim3(threads), 0, s, warp_out, block_out);
}
void atomics(const int* x, int* words, float* fsum, double* dsum, int n, int threads, Stream s) {
  launch_kernel("atomics", atomics_kernel, dim3(ceil_div(n, threads)), dim3(threads), 0, s, x,
                words, fsum, dsum, n);
}
void reverse_dynamic(const float* x, float* out, int n, int threads, int early, Stream s) {
  launch_kernel("reverse_dynamic", reverse_dynamic_kernel, dim3(ceil_div(n, threads)),
                dim3(threads), threads * sizeof(float), s, x, out, n, early);
}

void mma_bf16(const __nv_bfloat16* a, const __nv_bfloat16* b, const float* c, float* d, int tiles,
              Stream s) {
  launch_kernel("mma_bf16", mma_bf16_kernel, dim3(ceil_div(tiles, 2)), dim3(64), 0, s, a, b, c, d,
                tiles);
}

void mma_tf32(const float* a, const float* b, const float* c, float* d, int tiles, int mode,
              Stream s) {
  launch_kernel("mma_tf32", mma_tf32_kernel, dim3(ceil_div(tiles, 2)), dim3(64), 0, s, a, b, c, d,
                tiles, mode);
}

void async_copy(const float* x, float* out, int n, int threads, int stages, Stream s) {
  const auto smem = static_cast<std::size_t>(stages) * threads * 4 * sizeof(float);
  switch (stages) {
    case 2:
      return launch_kernel("async_copy<2>", async_copy_kernel<2>, 1, threads, smem, s, x, out, n);
    case 3:
      return launch_kernel("async_copy<3>", async_copy_kernel<3>, 1, threads, smem, s, x, out, n);
    default:
      return launch_kernel("async_copy<4>", async_copy_kernel<4>, 1, threads, smem, s, x, out, n);
  }
}

}  // namespace

namespace MEMLAYERS_TARGET_NS {
const KernelSet& kernels() {
  static const KernelSet set{block_reduce,    warp_reduce, block_scan, transpose,
                             histogram,       shuffles,    votes,      atomics,
                             reverse_dynamic, mma_bf16,    mma_tf32,   async_copy};
  return set;
}
}  // namespace MEMLAYERS_TARGET_NS

}  // namespace simt_tests
