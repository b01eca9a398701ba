// The dense decoder-only transformer of the harness, forward and backward, composed from
// harness::Ops (harness/ops.h) so that one model source runs on every backend:
//   x   = wte[tokens] + wpe[positions]
//   per layer:  x += attention(rmsnorm(x; ln1) · wqkv) · wo        causal, `heads` heads
//               x += swiglu(rmsnorm(x; ln2) · w13) · w2            w13 = [w1 | w3] (d,
//               2·ffn_hidden)
//   logits = rmsnorm(x; lnf) · wteᵀ                                the output tied to wte
//   loss   = cross-entropy(logits, targets), weighted mean over the counted positions
// No biases. Every parameter lives in one contiguous fp32 buffer; `ParamLayout` names the views.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "harness/ops.h"

namespace memlayers::harness {

struct Config {
  int64_t vocab = 256;
  int64_t ctx = 64;  // the longest sequence (rows of wpe)
  int64_t d_model = 128;
  int64_t layers = 4;
  int64_t heads = 4;
  int64_t ffn_hidden = 344;
  // Layers whose feed-forward block is a memory layer (kernels/memory_layer). The dense model
  // takes none yet: a non-empty list is refused by validate().
  std::vector<int64_t> memory_layers;

  int64_t head_dim() const { return d_model / heads; }
  // Throws memlayers::Error naming the first bad field and what is accepted.
  void validate() const;
};

// The comparison's model variants (issue 7). They share the embeddings, attention and depth of
// a base (dense) config and differ in the feed-forward blocks: `dense` SwiGLU everywhere;
// `dense4x` 4× the SwiGLU hidden width; `moe` token-choice top-2 experts with a balancing loss;
// `peer` PEER in the middle layer; `memory` one plain memory layer in the middle; `memory+`
// three gated Memory+ layers sharing one value table.
enum class ModelKind { dense, dense4x, moe, peer, memory, memory_plus };
inline constexpr ModelKind kModelKinds[] = {ModelKind::dense,  ModelKind::dense4x,
                                            ModelKind::moe,    ModelKind::peer,
                                            ModelKind::memory, ModelKind::memory_plus};
std::string to_string(ModelKind k);  // "dense", "dense4x", "moe", "peer", "memory", "memory+"
// Accepts the names to_string gives; anything else throws memlayers::Error listing them.
ModelKind parse_model_kind(std::string_view name);

// The config of `kind` built on the dense `base` (its vocab, ctx, d_model, layers, heads and
// ffn_hidden), with the kind's feed-forward blocks sized as documented in harness/README.md.
Config model_config(ModelKind kind, const Config& base);

// Forward FLOPs per token of the model's matrix products (2 per multiply-add), counting only the
// active parameters (a MoE's chosen experts, a memory layer's selected rows): the quantity the
// comparison matches across kinds. Attention's score and value products are counted at `seq`.
double active_flops_per_token(const Config& c, int64_t seq);

// Trainable parameters: the dense buffer plus the value table.
int64_t parameter_count(const Config& c);

// One named parameter tensor: elements [offset, offset + size) of the buffer, row-major `shape`.
struct ParamTensor {
  std::string name;  // "wte", "wpe", "layer1.wqkv", ..., "lnf"
  int64_t offset = 0;
  std::vector<int64_t> shape;
  int64_t size() const;
};

class ParamLayout {
 public:
  explicit ParamLayout(const Config& c);
  const std::vector<ParamTensor>& tensors() const { return tensors_; }
  const ParamTensor& at(const std::string& name) const;  // throws for an unknown name
  int64_t total() const { return total_; }               // floats in the buffer

 private:
  std::vector<ParamTensor> tensors_;
  int64_t total_ = 0;
};

// Initial values (host): linear weights and embeddings normal with std 0.02 (the projections
// into the residual stream, wo and w2, scaled by 1/sqrt(2·layers)), RMSNorm scales 1.
std::vector<float> init_params(const Config& c, uint64_t seed);

// A batch of `batch` sequences of `seq` ≤ ctx tokens, device memory of the model's backend.
struct Batch {
  const int32_t* tokens = nullptr;   // (batch, seq), each in [0, vocab)
  const int32_t* targets = nullptr;  // (batch, seq)
  const float* weights = nullptr;    // (batch, seq) (optional: every position counts 1)
  int64_t batch = 0, seq = 0;
};

// The compact gradient of the value table (device memory): strictly ascending row ids, one
// gradient row each. harness/optim.h's sparse Adam takes it as it is.
struct SparseRows {
  const int64_t* row_ids = nullptr;
  const float* rows = nullptr;
  int64_t n_rows = 0;
};

// Initial values of the value table (host), value_rows() × value_dim() floats; empty when the
// model has no table.
std::vector<float> init_values(const Config& c, uint64_t seed);

class Model {
 public:
  Model(const Config& c, const Ops& ops);
  ~Model();
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  const Config& config() const { return config_; }
  const ParamLayout& layout() const { return layout_; }  // the dense parameters
  const Ops& ops() const { return ops_; }
  // The value table shared by the model's memory layers, a separate buffer trained by the sparse
  // optimiser: value_rows() × value_dim() floats; 0 × 0 when the model has no memory layer.
  int64_t value_rows() const { return value_rows_; }
  int64_t value_dim() const { return value_dim_; }

  // The batch's loss. With `grads` set (a buffer shaped like params), also its gradient with
  // respect to every dense parameter, written (not accumulated), and, with a value table, the
  // table's compact gradient in *vgrad (buffers the model owns, valid until the next call).
  // Device pointers; activations are kept in buffers the model owns, sized by the largest batch
  // seen. `values` may be null only when the model has no table.
  double loss(const float* params, const float* values, const Batch& b, float* grads = nullptr,
              SparseRows* vgrad = nullptr);

  // The logits of the last loss() call: (batch·seq, vocab), device memory.
  const float* logits() const;

 private:
  struct Activations;
  Config config_;
  ParamLayout layout_;
  const Ops& ops_;
  int64_t value_rows_ = 0, value_dim_ = 0;
  std::unique_ptr<Activations> acts_;
};

}  // namespace memlayers::harness
