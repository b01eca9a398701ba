// v3: fused scores and selection: the (B, h, n_keys) score matrices are never written. A block
// of W warps takes a tile of 2·W queries of one head; for each half it streams the head's
// sub-keys through shared memory in tiles of 128 keys × 32 dims (inputs widened to fp32 on the
// way in), and each warp computes a 2 × 4 register block per lane (its 2 queries × 4 keys,
// FFMA; key rows padded to 33 floats so the lanes' reads hit distinct banks). The finished
// scores of a key tile go straight from registers into the warp's per-query top-k list (the
// warp-level bitonic queue of v2), then each warp runs the pruned candidate step for its queries.
// qk_norm costs no extra pass: the score is (q·k)·rsqrt(mean(q²)+eps)·rsqrt(mean(k²)+eps), with
// the key's sum of squares accumulated from the same shared tile; the scales are applied in fp64
// so the score is rounded once (near-cancelling unit-scale halves show every ulp).
// Over v2: removes the score matrices' 2·B·h·n_keys·4·2 bytes (Fwd::score_matrix_bytes) and the
// separate GEMM launch; each key tile loaded into shared memory serves 2·W queries.
// Bottleneck left: FFMA throughput (2·B·h·n_keys·n flops on CUDA cores) and the per-tile offer
// rounds. v4_fused_mma moves the scoring onto tensor cores (bf16 mma.sync m16n8k16; fp32 split
// into tf32 halves, three m16n8k8 per product).
// Measured: not yet on a GPU (simt-correct).
#include "pk_topk/cuda/common.cuh"

namespace memlayers::pk_topk {
namespace {

constexpr int kMaxWarps = 8;
constexpr int kQueriesPerWarp = 2;
constexpr int kKeysPerLane = 4;
constexpr int kTileKeys = 32 * kKeysPerLane;  // 128
constexpr int kTileDims = 32;
constexpr int kPad = kTileDims + 1;
constexpr int kMinList = 64;
constexpr int64_t kSmemBudget = 200 * 1024;

// Shared memory: per warp two row workspaces, then the pair offsets, the query and key tiles.
struct Layout {
  int warps = 0;
  int64_t rows_bytes = 0, off_bytes = 0, q_bytes = 0, k_bytes = 0;
  int64_t total() const { return rows_bytes + off_bytes + q_bytes + k_bytes; }
};

Layout layout(const RowSpace& sp, int warps) {
  Layout l;
  l.warps = warps;
  l.rows_bytes = int64_t{warps} * kQueriesPerWarp * sp.bytes();
  l.off_bytes = ((int64_t{sp.k} + 1) * 4 + 15) / 16 * 16;
  l.q_bytes = int64_t{warps} * kQueriesPerWarp * kPad * 4;
  l.k_bytes = int64_t{kTileKeys} * kPad * 4;
  return l;
}

Layout choose_layout(const RowSpace& sp) {
  for (int w = kMaxWarps; w > 1; w /= 2)
    if (layout(sp, w).total() <= kSmemBudget) return layout(sp, w);
  return layout(sp, 1);
}

template <class T>
__global__ void __launch_bounds__(kMaxWarps * 32)
    fused_kernel(const T* __restrict__ q, const T* __restrict__ k1, const T* __restrict__ k2,
                 float* __restrict__ scores, IndexOut indices, int64_t batch, int64_t heads,
                 int64_t n_keys, int64_t k_dim, bool norm, RowSpace sp, int64_t rows_bytes,
                 int64_t off_bytes) {
  MEMLAYERS_DYNAMIC_SHARED(unsigned char, smem);
  const int warps = static_cast<int>(blockDim.x / 32), warp = threadIdx.x / 32,
            lane = threadIdx.x % 32;
  const int tq = warps * kQueriesPerWarp;
  int* off = reinterpret_cast<int*>(smem + rows_bytes);
  float* qs = reinterpret_cast<float*>(smem + rows_bytes + off_bytes);
  float* ks = qs + tq * kPad;
  pair_offsets(off, sp.k);
  __syncthreads();
  const RowLists R0 = carve_row(smem + (warp * kQueriesPerWarp + 0) * sp.bytes(), sp);
  const RowLists R1 = carve_row(smem + (warp * kQueriesPerWarp + 1) * sp.bytes(), sp);
  const Group g = warp_group();
  const int64_t half = k_dim / 2, btiles = ceil_div(batch, int64_t{tq});
  const double inv_half = 1.0 / static_cast<double>(half);

  for (int64_t tile = blockIdx.x; tile < heads * btiles; tile += gridDim.x) {
    const int64_t h = tile / btiles, b0 = tile % btiles * tq;
    const int64_t bw = b0 + warp * kQueriesPerWarp;  // this warp's first query
    for (int c = 0; c < 2; ++c) {
      const T* keys = c == 0 ? k1 : k2;
      const int64_t qoff = c * half;
      double qinv[kQueriesPerWarp];
      pair_query_scales(q, bw, batch, heads, h, k_dim, qoff, norm, qinv);
      TopList L0 = c == 0 ? R0.half[0] : R0.half[1];
      TopList L1 = c == 0 ? R1.half[0] : R1.half[1];
      list_init(L0, g);
      list_init(L1, g);
      for (int64_t key0 = 0; key0 < n_keys; key0 += kTileKeys) {
        float acc[kQueriesPerWarp][kKeysPerLane] = {};
        float kss[kKeysPerLane] = {};
        for (int64_t d0 = 0; d0 < half; d0 += kTileDims) {
          __syncthreads();  // the previous tiles are no longer read
          for (int x = threadIdx.x; x < tq * kTileDims; x += blockDim.x) {
            const int r = x / kTileDims, d = x % kTileDims;
            const int64_t b = b0 + r;
            qs[r * kPad + d] = b < batch && d0 + d < half
                                   ? to_f32(__ldg(q + (b * heads + h) * k_dim + qoff + d0 + d))
                                   : 0.f;
          }
          for (int x = threadIdx.x; x < kTileKeys * kTileDims; x += blockDim.x) {
            const int r = x / kTileDims, d = x % kTileDims;
            const int64_t key = key0 + r;
            ks[r * kPad + d] = key < n_keys && d0 + d < half
                                   ? to_f32(__ldg(keys + (h * n_keys + key) * half + d0 + d))
                                   : 0.f;
          }
          __syncthreads();
          const float* qa = qs + warp * kQueriesPerWarp * kPad;
#pragma unroll 8
          for (int d = 0; d < kTileDims; ++d) {
            const float x0 = qa[d], x1 = qa[kPad + d];
#pragma unroll
            for (int u = 0; u < kKeysPerLane; ++u) {
              const float kv = ks[(lane + 32 * u) * kPad + d];
              acc[0][u] += x0 * kv;
              acc[1][u] += x1 * kv;
              kss[u] += kv * kv;
            }
          }
        }
#pragma unroll
        for (int u = 0; u < kKeysPerLane; ++u) {
          const int64_t key = key0 + lane + 32 * u;
          const double kinv =
              norm ? 1.0 / sqrt(static_cast<double>(kss[u]) * inv_half + kNormEps) : 1.0;
          const uint32_t tie = static_cast<uint32_t>(key);
          const float s0 = norm ? static_cast<float>(acc[0][u] * (qinv[0] * kinv)) : acc[0][u];
          const float s1 = norm ? static_cast<float>(acc[1][u] * (qinv[1] * kinv)) : acc[1][u];
          list_offer(L0, key < n_keys && bw < batch, make_key(s0, tie), g);
          list_offer(L1, key < n_keys && bw + 1 < batch, make_key(s1, tie), g);
        }
      }
      list_finish(L0, g);
      list_finish(L1, g);
    }
    pair_steps(R0, R1, sp, off, n_keys, scores, indices, bw, batch, heads, h, g);
  }
}

void launch(const FwdParams& p, Stream stream) {
  dispatch_dtype(p, [&](auto t) {
    using T = typename decltype(t)::type;
    const RowSpace sp = row_space(p.k, p.n_keys, kMinList);
    const Layout l = choose_layout(sp);
    const int64_t tiles = p.heads * ceil_div(p.batch, int64_t{l.warps} * kQueriesPerWarp);
    launch_kernel("pk_topk_fwd_v3_fused", fused_kernel<T>, dim3(grid_cap(tiles)),
                  dim3(l.warps * 32), static_cast<std::size_t>(l.total()), stream,
                  static_cast<const T*>(p.queries), static_cast<const T*>(p.keys1),
                  static_cast<const T*>(p.keys2), p.scores, index_out(p), p.batch, p.heads,
                  p.n_keys, p.k_dim, p.qk_norm, sp, l.rows_bytes, l.off_bytes);
  });
}

std::string supports(const FwdParams& p) {
  const Layout l = choose_layout(row_space(p.k, p.n_keys, kMinList));
  if (l.total() > 227 * 1024)
    return "k = " + std::to_string(p.k) + " needs " + std::to_string(l.total()) +
           " bytes of shared memory for one warp's lists; at most 227 KiB";
  return "";
}

MEMLAYERS_REGISTER(Fwd, Variant<FwdParams>{"v3_fused", MEMLAYERS_KERNEL_BACKEND, launch, supports,
                                           "fused: key tiles in shared memory, 2x4 FFMA register "
                                           "blocks, warp top-k lists, no score matrix",
                                           true});

}  // namespace
}  // namespace memlayers::pk_topk
