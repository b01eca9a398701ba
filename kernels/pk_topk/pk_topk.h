// Product-key top-k search (DESIGN.md §1 steps 1–4), per token b and head h:
//   q̂ = q, or with qk_norm each half RMS-normalised: q̂1 = q1 / sqrt(mean(q1²) + kNormEps)
//   (and every sub-key row likewise);
//   s1[i] = q̂1 · K̂1[h,i],  s2[j] = q̂2 · K̂2[h,j]                    (n_keys each)
//   (S1, I1) = top-k of s1, (S2, I2) = top-k of s2                     (sorted descending)
//   scores, indices = top-k over the pairs (i, j) of S1[i] + S2[j], index I1[i]·n_keys + I2[j]
// which equals the top-k of q̂ · [K̂1[m / n_keys], K̂2[m % n_keys]] over all N = n_keys² full
// keys. Only pairs with (i+1)(j+1) <= k can be among the k best, since at least (i+1)(j+1)
// pairs dominate pair (i, j).
//
// Order: scores descending; equal scores by ascending index (the lower index wins a tie, in the
// per-half lists as in the result). A NaN score ranks below every number, so a NaN query yields
// valid indices and NaN scores; the CLI and the reference refuse NaN queries outright
// (find_nonfinite).
//
// Backward, from ds = d(scores), with i1 = index / n_keys, i2 = index % n_keys:
//   dq̂1 = Σ_t ds[t] · K̂1[h, i1_t]          dK̂1[h, i1_t] += ds[t] · q̂1      (and half 2 alike)
// then through the RMS norm when qk_norm: dx = (dx̂ − x̂ · mean(dx̂ · x̂)) / rms(x).
// The first is an EmbeddingBag forward and the second its dV, with bags (b, h), rows
// h·n_keys + i1 and weights ds, which is how the optimised backends compute them.
#pragma once
#include <cstdint>
#include <string>

#include "common/dtype.h"
#include "common/registry.h"

namespace memlayers::pk_topk {

inline constexpr int64_t kMaxK = 1024;
inline constexpr int64_t kMaxKDim = 8192;      // the full query width n
inline constexpr int64_t kMaxNKeys = 1 << 20;  // per half; N = n_keys² up to 2^40
inline constexpr float kNormEps = 1e-6f;

struct FwdParams {
  const void* queries = nullptr;  // q: (batch, heads, k_dim) contiguous, dtype
  const void* keys1 = nullptr;    // K1: (heads, n_keys, k_dim/2) contiguous, dtype
  const void* keys2 = nullptr;    // K2: (heads, n_keys, k_dim/2) contiguous, dtype
  float* scores = nullptr;        // (batch, heads, k) fp32, descending per (b, h)
  void* indices = nullptr;        // (batch, heads, k) index_dtype: i1·n_keys + i2
  int64_t batch = 0, heads = 0, n_keys = 0, k_dim = 0, k = 0;
  DType dtype = DType::f32;        // of q, K1, K2: f32 or bf16 (products summed in fp32)
  DType index_dtype = DType::i64;  // i64, or i32 when n_keys² < 2^31
  bool qk_norm = false;            // RMS-normalise each query half and each sub-key first
};

// Backward. Inputs as the forward's, plus the forward's indices and ds. Outputs that are null are
// not computed. Key gradients come dense (every element written) and/or compact: the touched
// rows, as ids h·n_keys + row in ascending order, their gradient rows (k_dim/2 wide), and the
// count in *num_rows (device memory, like the other outputs). The caller sizes the compact
// arrays for compact_capacity(p) rows.
struct BwdParams {
  const void* queries = nullptr;
  const void* keys1 = nullptr;
  const void* keys2 = nullptr;
  const void* indices = nullptr;       // the forward's indices, (batch, heads, k)
  const float* grad_scores = nullptr;  // ds: (batch, heads, k) fp32
  int64_t batch = 0, heads = 0, n_keys = 0, k_dim = 0, k = 0;
  DType dtype = DType::f32;
  DType index_dtype = DType::i64;
  bool qk_norm = false;

  float* grad_queries = nullptr;  // dq: (batch, heads, k_dim) fp32
  struct KeyGrad {
    float* dense = nullptr;       // (heads, n_keys, k_dim/2) fp32
    int64_t* rows = nullptr;      // compact: ascending ids h·n_keys + row
    float* compact = nullptr;     // compact: (capacity, k_dim/2) fp32, row i is dK[rows[i]]
    int64_t* num_rows = nullptr;  // compact: one int64, how many rows it holds
    bool any() const { return dense || rows || compact || num_rows; }
    bool has_compact() const { return rows && compact && num_rows; }
  };
  KeyGrad grad_keys1, grad_keys2;
};

std::string validate(const FwdParams& p);
std::string validate(const BwdParams& p);

// Rows the compact key gradient may need: heads · min(batch·k, n_keys).
int64_t compact_capacity(const BwdParams& p);

// The first non-finite query element in host memory, as "queries[b=3, h=1, 17] is nan: the
// search needs finite queries", or "" when all are finite.
std::string find_nonfinite(const void* queries_host, DType dtype, int64_t batch, int64_t heads,
                           int64_t k_dim);

// The first out-of-range index (host memory) of a backward's input, or "".
std::string find_bad_index(const void* indices_host, DType index_dtype, int64_t batch,
                           int64_t heads, int64_t k, int64_t n_keys);

// The op descriptors read by the registry, tests, benchmarks and reports (DESIGN.md §5).
struct Fwd {
  using Params = FwdParams;
  static constexpr const char* name = "pk_topk_fwd";
  static std::string validate(const Params& p) { return pk_topk::validate(p); }
  // B·h·n·s_q (queries) + 2·h·n_keys·(n/2)·s_K (sub-keys) + B·h·k·(4 + s_idx) (results).
  static double bytes_moved(const Params& p);
  // 2·B·h·n_keys·n: both halves' scores; the selection and the k×k step are not counted.
  static double flops(const Params& p);
  // What a variant that writes the (B·h, n_keys) score matrices and reads them back pays on
  // top of bytes_moved: 2·B·h·n_keys·4·2. Counted against that variant, never in the floor.
  static double score_matrix_bytes(const Params& p);
};

struct Bwd {
  using Params = BwdParams;
  static constexpr const char* name = "pk_topk_bwd";
  static std::string validate(const Params& p) { return pk_topk::validate(p); }
  // B·h·n·s_q (queries) + B·h·k·(s_idx + 4) (indices, ds) + 2·h·n_keys·(n/2)·s_K (sub-keys)
  // + B·h·n·4 (dq, when requested) + per requested key-gradient form: dense h·n_keys·(n/2)·4,
  // compact compact_capacity·((n/2)·4 + 8).
  static double bytes_moved(const Params& p);
  // 2·B·h·k·n per requested gradient (dq; the two key halves together count as one).
  static double flops(const Params& p);
};

}  // namespace memlayers::pk_topk
