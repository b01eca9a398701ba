// The dense transformer's operations, forward and backward, as one table per backend
// (harness/README.md). The model, the optimiser and the training loop are written once against
// `Ops`; `ops_for(backend)` returns the backend's table.
//
// Conventions shared by every entry:
//  - pointers are device (backend) memory, fp32 unless noted, row-major; sizes are int64;
//  - "rows" is the number of token positions, batch·seq;
//  - gradients of parameters (tables, weights, biases, scales) ACCUMULATE (+=): the caller zeroes
//    them once per step, which lets tied and shared parameters sum their contributions;
//  - gradients of activations are WRITTEN, unless the entry's `accumulate_dx` is set (then +=,
//    which adds a block's input gradient straight onto the residual stream's);
//  - an optional pointer is marked "(optional)"; null skips that input or output;
//  - every entry checks its sizes and pointers first (`validate` below) and throws
//    memlayers::Error naming the problem and what is accepted; host backends also check the
//    values that index (token ids, targets) and the cross-entropy weights.
// Q, K and V (attention) and SwiGLU's two halves are read through a row stride, so one packed
// projection output — (rows, 3·d) for [q | k | v], (rows, 2·hidden) for [a | b] — and separate
// tensors (stride d or hidden) are both accepted; their gradients use the same stride.
#pragma once
#include <cstdint>
#include <functional>

#include "common/backend.h"

namespace memlayers::harness {

inline constexpr float kRmsNormEps = 1e-5f;

// ---- embedding: out[r, :] (=|+=) table[ids[r], :] ----
struct EmbeddingFwd {
  const int32_t* ids = nullptr;  // (rows) int32, each in [0, num_rows)
  const float* table = nullptr;  // (num_rows, dim)
  float* out = nullptr;          // (rows, dim)
  int64_t rows = 0, num_rows = 0, dim = 0;
  bool accumulate = false;  // out += the rows (position embeddings onto token embeddings)
};
struct EmbeddingBwd {
  const int32_t* ids = nullptr;  // (rows)
  const float* dout = nullptr;   // (rows, dim)
  float* dtable = nullptr;       // (num_rows, dim): dtable[ids[r], :] += dout[r, :]
  int64_t rows = 0, num_rows = 0, dim = 0;
};

// ---- RMSNorm: y = x · inv_rms · scale, inv_rms = 1 / sqrt(mean(x²) + kRmsNormEps) per row ----
struct RmsNormFwd {
  const float* x = nullptr;      // (rows, dim)
  const float* scale = nullptr;  // (dim), learnable
  float* y = nullptr;            // (rows, dim)
  float* inv_rms = nullptr;      // (rows), saved for the backward (optional)
  int64_t rows = 0, dim = 0;
};
struct RmsNormBwd {
  const float* x = nullptr;        // (rows, dim)
  const float* scale = nullptr;    // (dim)
  const float* inv_rms = nullptr;  // (rows), from the forward
  const float* dy = nullptr;       // (rows, dim)
  float* dx = nullptr;             // (rows, dim)
  float* dscale = nullptr;         // (dim) +=
  int64_t rows = 0, dim = 0;
  bool accumulate_dx = false;
};

// ---- linear: y = x·W (+ b) ----
// W is (in, out), or (out, in) when `transposed_w` (y = x·Wᵀ: the output projection tied to the
// (vocab, d) token embedding); dw has W's layout.
struct LinearFwd {
  const float* x = nullptr;  // (rows, in)
  const float* w = nullptr;  // (in, out), or (out, in) when transposed_w
  const float* b = nullptr;  // (out) (optional)
  float* y = nullptr;        // (rows, out)
  int64_t rows = 0, in = 0, out = 0;
  bool transposed_w = false;
};
struct LinearBwd {
  const float* x = nullptr;   // (rows, in)
  const float* w = nullptr;   // as in the forward
  const float* dy = nullptr;  // (rows, out)
  float* dx = nullptr;        // (rows, in) (optional: the first layer needs none)
  float* dw = nullptr;        // W's shape, += (optional)
  float* db = nullptr;        // (out) += (optional)
  int64_t rows = 0, in = 0, out = 0;
  bool transposed_w = false;
  bool accumulate_dx = false;
};

// ---- causal multi-head attention ----
// rows = batch·seq, d = heads·head_dim; head h reads columns [h·head_dim, (h+1)·head_dim) of q, k
// and v. Per (sequence, head, position i): p = softmax_j≤i(q_i·k_j / sqrt(head_dim)),
// out_i = Σ_j p_j v_j. The forward saves each row's log-sum-exp of the scaled scores; the
// backward recomputes p from q, k and it (no (seq, seq) matrix is kept).
struct AttentionFwd {
  const float* q = nullptr;  // (rows, ld_qkv), columns [0, d)
  const float* k = nullptr;
  const float* v = nullptr;
  int64_t ld_qkv = 0;    // row stride of q, k, v: 3·d packed, d separate
  float* out = nullptr;  // (rows, d)
  float* lse = nullptr;  // (batch, heads, seq), saved for the backward (optional)
  int64_t batch = 0, seq = 0, heads = 0, d = 0;
};
struct AttentionBwd {
  const float* q = nullptr;  // as in the forward
  const float* k = nullptr;
  const float* v = nullptr;
  int64_t ld_qkv = 0;
  const float* out = nullptr;   // (rows, d), the forward's output
  const float* lse = nullptr;   // (batch, heads, seq), from the forward
  const float* dout = nullptr;  // (rows, d)
  float* dq = nullptr;          // (rows, ld_qkv), columns [0, d) written
  float* dk = nullptr;
  float* dv = nullptr;
  int64_t batch = 0, seq = 0, heads = 0, d = 0;
};
// q, k, v (and dq, dk, dv) of a packed (rows, 3·d) buffer [q | k | v].
struct PackedQkv {
  float *q, *k, *v;
  int64_t ld;
};
inline PackedQkv packed_qkv(float* qkv, int64_t d) { return {qkv, qkv + d, qkv + 2 * d, 3 * d}; }

// ---- SwiGLU: out = silu(a) ⊙ b, silu(z) = z·σ(z) ----
struct SwigluFwd {
  // (rows, ld_ab), columns [0, hidden) of each: packed [a | b] has b = a + hidden.
  const float* a = nullptr;
  const float* b = nullptr;
  int64_t ld_ab = 0;     // 2·hidden packed, hidden separate
  float* out = nullptr;  // (rows, hidden)
  int64_t rows = 0, hidden = 0;
};
struct SwigluBwd {
  const float* a = nullptr;
  const float* b = nullptr;
  int64_t ld_ab = 0;
  const float* dout = nullptr;  // (rows, hidden)
  float* da = nullptr;          // (rows, ld_ab), columns [0, hidden) written
  float* db = nullptr;
  int64_t rows = 0, hidden = 0;
};

// ---- residual add: out = x + y (out may be x or y) ----
// Its backward is the identity to both inputs, so the same entry adds gradients together.
struct Add {
  const float* x = nullptr;
  const float* y = nullptr;
  float* out = nullptr;
  int64_t n = 0;
};

// ---- cross-entropy from logits ----
// loss = Σ_r w_r · (logsumexp(logits[r, :]) − logits[r, t_r]) / Σ_r w_r: the weighted mean over
// the counted positions (w = 1 everywhere when weights is null; a 0/1 mask counts positions).
// Weights must be finite and ≥ 0 with a positive sum; a row of weight 0 may hold any target
// (padding), the others a target in [0, vocab).
struct CrossEntropyFwd {
  const float* logits = nullptr;     // (rows, vocab)
  const int32_t* targets = nullptr;  // (rows) int32
  const float* weights = nullptr;    // (rows) (optional)
  float* loss = nullptr;             // (1), device memory
  int64_t rows = 0, vocab = 0;
};
// dlogits = dloss · w_r / Σ w · (softmax(logits[r, :]) − onehot(t_r)); every row written.
struct CrossEntropyBwd {
  const float* logits = nullptr;
  const int32_t* targets = nullptr;
  const float* weights = nullptr;  // (optional), as in the forward
  float dloss = 1.0f;              // d(objective)/d(loss), a host value
  float* dlogits = nullptr;        // (rows, vocab)
  int64_t rows = 0, vocab = 0;
};

// ---- the table ----
template <class P>
using Op = std::function<void(const P&)>;

struct Ops {
  Backend backend = Backend::reference;
  const Memory* memory = nullptr;  // where the buffers the entries take live
  Op<EmbeddingFwd> embedding_fwd;
  Op<EmbeddingBwd> embedding_bwd;
  Op<RmsNormFwd> rmsnorm_fwd;
  Op<RmsNormBwd> rmsnorm_bwd;
  Op<LinearFwd> linear_fwd;
  Op<LinearBwd> linear_bwd;
  Op<AttentionFwd> attention_fwd;
  Op<AttentionBwd> attention_bwd;
  Op<SwigluFwd> swiglu_fwd;
  Op<SwigluBwd> swiglu_bwd;
  Op<Add> add;
  Op<CrossEntropyFwd> cross_entropy_fwd;
  Op<CrossEntropyBwd> cross_entropy_bwd;
};

// The table of a backend: reference, cpu, simt, and cuda where built (harness/cuda/*.cu) and a
// GPU is usable; otherwise memlayers::Error says why. Every entry validates its params first.
const Ops& ops_for(Backend b);

// Size and pointer checks, the same for every backend: throw memlayers::Error on bad params.
void validate(const EmbeddingFwd& p);
void validate(const EmbeddingBwd& p);
void validate(const RmsNormFwd& p);
void validate(const RmsNormBwd& p);
void validate(const LinearFwd& p);
void validate(const LinearBwd& p);
void validate(const AttentionFwd& p);
void validate(const AttentionBwd& p);
void validate(const SwigluFwd& p);
void validate(const SwigluBwd& p);
void validate(const Add& p);
void validate(const CrossEntropyFwd& p);
void validate(const CrossEntropyBwd& p);

}  // namespace memlayers::harness
