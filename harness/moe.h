// The mixture-of-experts feed-forward block of the harness (issue 7's `moe` baseline): token-choice
// top-k routing (k = `top`, 2 by default) over E SwiGLU experts with the Switch Transformer
// balancing loss (Fedus et al. 2021), composed from harness::Ops and the registered weighted
// EmbeddingBag so that it runs on every harness backend without kernels of its own
// (harness/README.md, "MoE"):
//   logits = x·Wr                           (rows, E), through linear_fwd
//   p      = softmax(logits)                 fp32, on the host
//   picks  = the top experts of each token   by logit, ties to the lower expert index
//   g      = p[picks] / Σ p[picks]           the chosen probabilities renormalised to sum 1
//   out[t] = Σ_j g[t,j] · expert_{pick j}(x[t])
//   expert_e(x) = (silu(x·W1e) ⊙ x·W3e)·W2e  W13e = [W1e | W3e] (d, 2·h_e), W2e (h_e, d)
//   balance = α·E·Σ_e f_e·P_e,  f_e = share of the top·rows assignments that went to e (a constant
//             for the gradient), P_e = mean over tokens of p[:, e]
// No capacity limit: every token reaches all its experts (none is dropped).
//
// The routing (softmax, top-k, the per-expert token lists) runs on the host from the router
// logits copied back; the gather of each expert's tokens is `embedding_fwd` (ids = token rows,
// table = x), each expert is one linear/swiglu/linear on its rows, and the combine is the
// backend's weighted EmbeddingBag (bags of `top` slots over the concatenated expert outputs). The
// backward runs the same path in reverse: the bag's backward gives the expert outputs' gradient
// and the gates' gradient, which the host takes through the renormalisation and the softmax (with
// the balancing loss's gradient) into the router logits.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "harness/ops.h"

namespace memlayers::harness {

struct MoeConfig {
  int64_t experts = 4;
  // Experts per token. 2 ≤ top ≤ experts: with one pick the renormalised gate is always 1 and
  // the router would learn only from the balancing loss.
  int64_t top = 2;
  int64_t expert_hidden = 0;  // h_e; ffn_hidden/2 matches the dense SwiGLU's active FLOPs at top 2
  double balance = 0.01;      // α of the balancing loss, finite and ≥ 0
  // Throws memlayers::Error naming the first bad field and what is accepted.
  void validate() const;
};

// The block's parameters (device pointers), each row-major:
//   router (d, E); w13 (E, d, 2·h_e), expert e's [W1e | W3e]; w2 (E, h_e, d).
struct MoeWeights {
  const float* router = nullptr;
  const float* w13 = nullptr;
  const float* w2 = nullptr;
};
// Their gradients, shaped like the weights; accumulated (+=), like Ops' parameter gradients.
struct MoeGrads {
  float* router = nullptr;
  float* w13 = nullptr;
  float* w2 = nullptr;
};

// The last forward's routing, on the host (for the backward, the report and tests).
struct MoeRouting {
  int64_t rows = 0, experts = 0, top = 0;
  std::vector<float> probs;         // (rows, E): softmax of the router logits
  std::vector<int32_t> picks;       // (rows, top): chosen experts, highest logit first
  std::vector<float> gates;         // (rows, top): renormalised probabilities of the picks
  std::vector<int64_t> tokens;      // (E): tokens routed to each expert; sums to top·rows
  std::vector<int64_t> offsets;     // (E + 1): each expert's first row in the gathered rows
  std::vector<int32_t> gather_ids;  // (top·rows): token of each gathered row, by expert then token
  std::vector<int64_t> slots;       // (rows, top): gathered row of each pick (the bag indices)
  double balance = 0;               // α·E·Σ_e f_e·P_e
};

class MoeBlock {
 public:
  // `ops` must outlive the block. Throws for a bad config or d_model < 1.
  MoeBlock(const MoeConfig& c, int64_t d_model, const Ops& ops);
  ~MoeBlock();
  MoeBlock(const MoeBlock&) = delete;
  MoeBlock& operator=(const MoeBlock&) = delete;

  const MoeConfig& config() const { return config_; }
  int64_t d_model() const { return d_; }

  // x (rows, d) → out (rows, d), written. Keeps what the backward needs until the next forward
  // (buffers the block owns, sized by the largest rows seen). Returns the balancing-loss term
  // α·E·Σ f·P (host). Throws when a router logit is not finite.
  double forward(const MoeWeights& w, const float* x, float* out, int64_t rows);

  // From dout (rows, d) and dbalance, the weight of the balancing term in the objective (1 when
  // the model adds it to the loss as it is): dx written (added with accumulate_dx), parameter
  // gradients accumulated (+=). Must follow the forward of the same x, w and rows.
  void backward(const MoeWeights& w, const float* x, const float* dout, float* dx,
                const MoeGrads& g, int64_t rows, bool accumulate_dx, float dbalance = 1.0f);

  // Floats of router + w13 + w2: d·E + E·d·2·h_e + E·h_e·d.
  static int64_t param_floats(const MoeConfig& c, int64_t d);
  // Forward FLOPs per token of the matrix products (2 per multiply-add): the `top` chosen
  // experts' 6·d·h_e each plus the router's 2·d·E (all experts' logits are computed).
  static double active_flops_per_token(const MoeConfig& c, int64_t d);

  // The last forward's tokens per expert and routing.
  const std::vector<int64_t>& tokens_per_expert() const;
  const MoeRouting& routing() const;

 private:
  struct Buffers;
  MoeConfig config_;
  int64_t d_;
  const Ops& ops_;
  MoeRouting routing_;
  const float* last_x_ = nullptr;  // the forward's x, checked by the backward
  std::unique_ptr<Buffers> bufs_;
};

}  // namespace memlayers::harness
