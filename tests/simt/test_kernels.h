// Small CUDA kernels that exercise every simt primitive, compiled twice (simt and, with nvcc, the
// GPU) so the same checks run on both. Pointers are device pointers of the matching backend.
#pragma once
#include <cstdint>

#include <cuda_bf16.h>

#include "common/backend.h"

namespace simt_tests {

using memlayers::Stream;

struct KernelSet {
  // out[b] = sum of x[b·2·threads, (b+1)·2·threads) — shared-memory tree, any block size.
  void (*block_reduce)(const float* x, float* out, int n, int threads, Stream s);
  // Per warp, the sum of its lanes' x (shuffle-down), and per 8-lane segment (xor, width 8);
  // slots are numbered block by block: ceil(threads/32) warps and ceil(threads/8) segments each.
  void (*warp_reduce)(const float* x, float* warp_sums, float* seg_sums, int n, int threads,
                      Stream s);
  // Inclusive prefix sums within each block (warp shfl_up scans, then across warps).
  void (*block_scan)(const int* x, int* out, int n, int threads, Stream s);
  // out (cols × rows) = transpose of in (rows × cols), through a 32×33 shared tile.
  void (*transpose)(const float* in, float* out, int rows, int cols, Stream s);
  // hist[v % bins] counts, shared-memory histogram then global atomics (bins ≤ 256).
  void (*histogram)(const unsigned* x, unsigned* hist, int n, int bins, int threads, Stream s);
  // Each lane shuffles f(lane) with idx/up/down/xor at the given width; 4 results per thread:
  // [shfl(src = lane·3), up(delta 3), down(delta 5), xor(mask 6)], for int, float, double,
  // __half and __nv_bfloat16 (the last two carried back as float).
  void (*shuffles)(int* i_out, float* f_out, double* d_out, float* h_out, float* b_out, int width,
                   int threads, Stream s);
  // Per thread pred = (t % 3 == 0) ^ (t == 7); per warp: ballot, any, all; per block:
  // __syncthreads_count / _and / _or. warp_out: 3 words per warp; block_out: 3 ints per block.
  void (*votes)(unsigned* warp_out, int* block_out, int threads, int blocks, Stream s);
  // All atomics on a few global words: [0] int add, [1] unsigned add, [2] max, [3] min,
  // [4] CAS-loop increment, [5] exch count; float and double sums of x.
  void (*atomics)(const int* x, int* words, float* fsum, double* dsum, int n, int threads,
                  Stream s);
  // out = reverse of x within each block, through dynamic shared memory of `threads` floats,
  // with the first `early` threads returning before the barrier (they drop out of it).
  void (*reverse_dynamic)(const float* x, float* out, int n, int threads, int early, Stream s);
  // Per 16×8×16 tile (a warp each, two warps per block): d = c + a·b through mma.sync m16n8k16,
  // the fragments loaded with PTX's documented layout. a: 16×16 bf16 row-major; b: 8 columns of
  // 16 bf16 each (b[n·16 + k]); c, d: 16×8 fp32 row-major; `tiles` of each, back to back.
  void (*mma_bf16)(const __nv_bfloat16* a, const __nv_bfloat16* b, const float* c, float* d,
                   int tiles, Stream s);
  // Per 16×8×8 tile, the same through mma.sync m16n8k8 with tf32 operands: a 16×8 fp32
  // row-major, b 8 columns of 8 (b[n·8 + k]). Mode 0: one mma on the values as given (they must
  // be tf32 values); 1: the fp32 product through mma_3xtf32_m16n8k8; 2: the same three mma
  // written out as mma_tf32_m16n8k8 calls.
  void (*mma_tf32)(const float* a, const float* b, const float* c, float* d, int tiles, int mode,
                   Stream s);
  // out[0, padded) = x[0, n) then zeros, padded = n rounded up to threads·4 floats: chunks of
  // threads·4 floats through a ring of `stages` (2..4) slots in dynamic shared memory, copied by
  // cp.async (16 bytes a thread, zero-filled past n, one group per chunk, `stages` − 1 in
  // flight); each chunk written out by the neighbouring thread (t + 1) % threads, so it crosses
  // threads after the barrier. One block; x 16-byte aligned.
  void (*async_copy)(const float* x, float* out, int n, int threads, int stages, Stream s);
};

namespace simt {
const KernelSet& kernels();
}
#if defined(MEMLAYERS_HAVE_CUDA)
namespace gpu {
const KernelSet& kernels();
}
#endif

}  // namespace simt_tests
