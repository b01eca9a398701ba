// The memory layer (DESIGN.md §1): the block that replaces a transformer's feed-forward, composed
// of the product-key search and the weighted EmbeddingBag. Per token x (d_model wide):
//   q        = x·Wq + bq                                  (B, h·n), viewed as (B, h, n)
//   s, I     = pk_topk(q, K1, K2, k, qk_norm)              (B, h, k) each, per head
//   w        = softmax(s) per head, in fp32                (B, h, k)
//   bag      = the h·k pairs (I, w) of the token           one bag of h·k rows
//   memory   : y = Σ_bag w · V[I]                          (B, v), v = d_model;  out = y
//   memory+  : y as above (any v);  out = (y ⊙ silu(x·W1 + b1))·W2 + b2     W1 (d, v), W2 (v, d)
//              ("swilu": the SiLU-gated value read of Memory Layers at Scale)
//   peer     : single-neuron experts:  a_j = gelu(U[I_j] · x),  out = Σ_bag w_j · a_j · V[I_j]
//              U = down (N, d), V = up (N, d)  (PEER, He 2024; gelu(z) = z·Φ(z), exact erf form)
//   gate     : optionally out ← out · σ(x·wg)  (a scalar per token)
// silu(z) = z·σ(z). The value table V is shared by every memory layer of a model (the Params
// point at it; no layer owns it).
//
// Backward, from dout: dx, dWq, dbq, dK1, dK2 (touched rows, dense here), dV (compact unique rows
// with their gradients, and/or dense), dW1, db1, dW2, db2, dwg, and for PEER dU. Through the
// softmax: ds = w ⊙ (dw − Σ_head w·dw); through the search: pk_topk's backward (DESIGN.md §1).
//
// Backends compose the ops: the reference is fp64 loops end to end (no kernel of the suite), the
// `cpu` composition uses OpenBLAS for the GEMMs and the registered CPU kernels for the search and
// the bag, the `cuda`/`simt` composition cuBLAS (a plain kernel under simt) and the CUDA kernels.
// PEER needs no kernel of its own: the dots U[I_j]·x are the EmbeddingBag backward's dw with
// dy = x and values = U; dU is that backward's dV with weights dz and dy = x; and the experts'
// share of dx, Σ_j dz_j·U[I_j], is the EmbeddingBag forward over U with weights dz.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "common/dtype.h"
#include "common/registry.h"

namespace memlayers::embbag {
struct FwdParams;
struct BwdParams;
}  // namespace memlayers::embbag

namespace memlayers::memory_layer {

enum class Kind { memory, memory_plus, peer };
std::string to_string(Kind k);  // "memory", "memory_plus", "peer"
std::optional<Kind> parse_kind(std::string_view s);

struct Config {
  Kind kind = Kind::memory;
  int64_t d_model = 1024;    // d
  int64_t heads = 4;         // h
  int64_t n_keys = 1024;     // sub-keys per half; N = n_keys² value rows
  int64_t k_dim = 512;       // n, the query width (two halves of n/2)
  int64_t k = 32;            // per head; a token's bag holds h·k rows
  int64_t value_dim = 1024;  // v: memory requires v = d; memory+ any; peer uses d (ignored)
  bool qk_norm = false;
  bool scalar_gate = false;
  DType values_dtype = DType::f32;  // of V (and U for peer): f32 or bf16; all else fp32
  int64_t num_values() const { return n_keys * n_keys; }
  int64_t value_width() const { return kind == Kind::peer ? d_model : value_dim; }
};

// Parameters, device (backend) memory, row-major, fp32 unless noted. Unused ones are null.
struct Weights {
  const float* wq = nullptr;     // (d, h·n)
  const float* bq = nullptr;     // (h·n)
  const float* keys1 = nullptr;  // (h, n_keys, n/2)
  const float* keys2 = nullptr;  // (h, n_keys, n/2)
  const void* values = nullptr;  // (N, value_width) values_dtype; peer: the up experts
  const void* down = nullptr;    // peer: (N, d) values_dtype, the down experts U
  const float* w1 = nullptr;     // memory+: (d, v)
  const float* b1 = nullptr;     // memory+: (v)
  const float* w2 = nullptr;     // memory+: (v, d)
  const float* b2 = nullptr;     // memory+: (d)
  const float* wg = nullptr;     // scalar gate: (d)
};

// What the forward keeps for the backward (device memory, sized by the caller for `batch`
// tokens; activation_floats() says how many floats in all). In the forward every field is
// optional (null: not kept). The backward needs (validate() says which is missing):
//   always          q, indices, weights           (scores are never needed: the softmax
//                                                  backward reads the weights)
//   memory, peer    y when scalar_gate is on      (the output before the gate)
//   memory+         y and hidden
//   peer            peer_pre
//   scalar_gate     gate
// The reference backward reads only the indices (the forward's selection) and recomputes the
// rest in fp64 from x and the weights, so it stays the truth for any forward's activations.
struct Saved {
  float* q = nullptr;          // (B, h·n) the projected queries
  float* scores = nullptr;     // (B, h, k)
  int64_t* indices = nullptr;  // (B, h, k) rows of V: i1·n_keys + i2
  float* weights = nullptr;    // (B, h, k) softmax
  float* y = nullptr;          // memory, peer: (B, d) the output before the gate;
                               // memory+: (B, v) the bag sum
  float* hidden = nullptr;     // memory+: (B, v) x·W1 + b1
  float* peer_pre = nullptr;   // peer: (B, h, k) U[I_j]·x, before the gelu
  float* gate = nullptr;       // scalar gate: (B) x·wg, before the sigmoid
};

// An optional replacement of the value read of kinds memory and memory_plus (not peer, which
// reads two tables): a caller that keeps the value table elsewhere — split along its columns
// across the ranks of a memory-parallel group (dist/sharded_memory_layer.h) — runs the bag itself.
// A composition given one calls forward() where it would run embbag_fwd over weights.values, and
// backward() where it would run that bag's backward, each with the EmbeddingBag params it would
// have run (their `values` is weights.values, which may then be null: the override knows its
// table). backward() must write grad_weights (the softmax backward reads it) and whatever value
// gradient the params ask for; an override that keeps the table's gradient itself receives the
// Grads' value pointers null. The fp64 reference variant reads the whole table and refuses an
// override; the compositions (cpu, cuda, simt) accept one.
struct BagOverride {
  virtual ~BagOverride() = default;
  virtual void forward(const embbag::FwdParams& p) = 0;
  virtual void backward(const embbag::BwdParams& p) = 0;
};

struct FwdParams {
  Config config;
  Weights weights;
  const float* x = nullptr;  // (B, d)
  float* out = nullptr;      // (B, d)
  int64_t batch = 0;
  Saved saved;
  BagOverride* bag = nullptr;  // optional: the value read runs there (BagOverride)
};

// Gradients, device memory, fp32; null = not computed. Dense gradients are written in full (not
// accumulated): a caller sharing V across layers sums the layers' compact rows.
struct Grads {
  float* x = nullptr;
  float* wq = nullptr;
  float* bq = nullptr;
  float* keys1 = nullptr;  // dense (h, n_keys, n/2)
  float* keys2 = nullptr;
  float* values_dense = nullptr;      // (N, value_width)
  int64_t* value_rows = nullptr;      // compact: ascending row ids, capacity B·h·k
  float* values_compact = nullptr;    // compact: (capacity, value_width)
  int64_t* num_value_rows = nullptr;  // compact: one int64
  float* down_dense = nullptr;        // peer: (N, d)
  int64_t* down_rows = nullptr;       // peer compact, as for the values
  float* down_compact = nullptr;
  int64_t* num_down_rows = nullptr;
  float* w1 = nullptr;
  float* b1 = nullptr;
  float* w2 = nullptr;
  float* b2 = nullptr;
  float* wg = nullptr;
};

// The layer's stages, as compositions name their StageScopes (common/stages.h; NVTX ranges
// "memory_layer.<stage>"), in the order they run. Forward: the query projection; the search; the
// softmax; the bag (the value read, and PEER's down-expert dots U[I]·x); the gating (memory+'s
// W1, SiLU and W2, PEER's GELU, the scalar gate). Backward: the same in reverse.
inline constexpr const char* kStageOp = "memory_layer";
inline constexpr const char* kFwdStages[] = {"projection", "search", "softmax", "bag", "gating"};
inline constexpr const char* kBwdStages[] = {"gating_bwd", "bag_bwd", "softmax_bwd", "search_bwd",
                                             "projection_bwd"};

// Rows the compact value (and down) gradients may need: batch·heads·k.
int64_t compact_capacity(const Config& c, int64_t batch);

struct BwdParams {
  Config config;
  Weights weights;
  const float* x = nullptr;         // (B, d)
  const float* grad_out = nullptr;  // dout (B, d)
  int64_t batch = 0;
  Saved saved;  // what the forward kept (every field the config uses must be set)
  Grads grads;
  BagOverride* bag = nullptr;  // optional: the value read's backward runs there (BagOverride)
};

std::string validate(const Config& c);
std::string validate(const FwdParams& p);
std::string validate(const BwdParams& p);

// Floats the Saved buffers take for `batch` tokens (indices counted as two floats each).
int64_t activation_floats(const Config& c, int64_t batch);

struct Fwd {
  using Params = FwdParams;
  static constexpr const char* name = "memory_layer_fwd";
  static std::string validate(const Params& p) { return memory_layer::validate(p); }
  // Parameters read once (Wq, bq, K1, K2, W1, b1, W2, b2, wg, fp32) + x and out + the gathered
  // value rows B·h·k·width·s_V (twice that for peer: U and V rows). Saved activations and the
  // search's intermediate results are not counted: they are the floor's business only if kept.
  static double bytes_moved(const Params& p);
  // 2·B·d·h·n (projection) + 2·B·h·n_keys·n (search) + 2·B·h·k·width (bag; ×2 for peer)
  // + memory+: 4·B·d·v (W1 and W2).
  static double flops(const Params& p);
};

struct Bwd {
  using Params = BwdParams;
  static constexpr const char* name = "memory_layer_bwd";
  static std::string validate(const Params& p) { return memory_layer::validate(p); }
  // Parameters read once + x and dout read + the gathered rows re-read (B·h·k·width·s_V, ×2 for
  // peer) + every requested gradient written once: dx B·d·4, the dense parameter gradients at
  // their size, dK1/dK2 h·n_keys·(n/2)·4 each, dense dV (and dU) N·width·4, compact dV (and dU)
  // U·(width·4 + 8) with U = the expected distinct rows of B·h·k uniform draws from N
  // (embbag::expected_unique_rows).
  static double bytes_moved(const Params& p);
  // Twice the forward's GEMM flops (data and weight gradients: 4·B·d·h·n, memory+ 8·B·d·v),
  // the search's 4·B·h·k·n (dq and dK), the bag's 4·B·h·k·width (dw and dV; ×2 for peer).
  static double flops(const Params& p);
};

}  // namespace memlayers::memory_layer
