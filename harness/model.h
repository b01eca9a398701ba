// The decoder-only transformer of the harness, forward and backward, composed from harness::Ops
// (harness/ops.h) and the memory layer's registered variants, so that one model source runs on
// every backend:
//   x   = wte[tokens] + wpe[positions]
//   per layer:  x += attention(rmsnorm(x; ln1) · wqkv) · wo        causal, `heads` heads
//               x += swiglu(rmsnorm(x; ln2) · w13) · w2            w13 = [w1 | w3] (d,
//                                                                  2·ffn_hidden)
//      or, in a layer of memory_layers:
//               x += memory_layer(rmsnorm(x; ln2))                 kernels/memory_layer
//   logits = rmsnorm(x; lnf) · wteᵀ                                the output tied to wte
//   loss   = cross-entropy(logits, targets), weighted mean over the counted positions
// The dense parts have no biases (the memory layer's query and Memory+ projections do). Every
// dense parameter lives in one contiguous fp32 buffer; `ParamLayout` names the views. The memory
// layers' value table is a second buffer (value_rows() × value_dim()), shared by all of them and
// trained by the sparse optimiser from a compact gradient.
#pragma once
#include <algorithm>
#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "dist/comm.h"
#include "harness/moe.h"
#include "harness/ops.h"
#include "memory_layer/memory_layer.h"

namespace memlayers::harness {

// The settings every memory layer of a model shares (they share one value table too): those of
// memory_layer::Config that the model does not fix. d_model is the model's; the scalar gate is
// off.
struct MemoryConfig {
  memory_layer::Kind kind = memory_layer::Kind::memory;
  int64_t heads = 4;     // h
  int64_t n_keys = 128;  // sub-keys per half; the table has N = n_keys² rows (PEER: 2N)
  int64_t k_dim = 32;    // n, the query width: two halves of n/2, even
  int64_t k = 32;        // selected rows per head, ≤ n_keys; a token reads h·k rows
  // v: memory requires v = d_model (the output is the bag itself); memory_plus takes any v ≥ 1;
  // peer ignores it (its experts are d_model wide).
  int64_t value_dim = 128;
  bool qk_norm = false;
  // The storage of the value table the layers read: f32 or bf16 (the layer accumulates in fp32
  // either way). A bf16 table halves the bytes the bag gathers; its training keeps an fp32
  // master copy (harness/train.h).
  DType values_dtype = DType::f32;
};

struct Config {
  int64_t vocab = 256;
  int64_t ctx = 64;  // the longest sequence (rows of wpe)
  int64_t d_model = 128;
  int64_t layers = 4;
  int64_t heads = 4;
  int64_t ffn_hidden = 344;
  // Layers whose feed-forward block is a memory layer (kernels/memory_layer) instead of SwiGLU:
  // distinct indices in [0, layers), any order; empty for a dense model. `memory` is read only
  // when the list is not empty.
  std::vector<int64_t> memory_layers;
  MemoryConfig memory;
  // Layers whose feed-forward block is a mixture of SwiGLU experts (harness/moe.h): distinct
  // indices in [0, layers), none of them a memory layer; `moe` is read only when not empty.
  std::vector<int64_t> moe_layers;
  MoeConfig moe;

  int64_t head_dim() const { return d_model / heads; }
  bool is_memory_layer(int64_t layer) const;
  bool is_moe_layer(int64_t layer) const;
  // The memory layers' op config (kernels/memory_layer/memory_layer.h).
  memory_layer::Config layer_config() const;
  // The value table: memory and memory+ N rows of value_dim; peer 2N rows of d_model, rows
  // [0, N) the up experts (memory_layer::Weights::values) and [N, 2N) the down experts
  // (Weights::down). 0 × 0 without memory layers.
  int64_t table_rows() const;
  int64_t table_dim() const;
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
// ffn_hidden), with the kind's feed-forward blocks sized as documented in harness/README.md:
// `memory` and `peer` in the middle layer (layers/2), `memory+` in memory_plus_layers(layers),
// `moe` in every layer: 4 experts of ffn_hidden/2, top 2 (the dense block's active FLOPs), the
// balancing loss at α 0.01. A memory kind's table keeps the base's memory.values_dtype.
Config model_config(ModelKind kind, const Config& base);

// The layers of memory+'s three Memory+ layers: round((2i+1)·layers/6) for i = 0, 1, 2 (the
// paper's 4, 12, 20 of 24; 1, 2, 3 of 4), never layer 0 from 4 layers on; all layers when
// layers < 4 (fewer than three then).
std::vector<int64_t> memory_plus_layers(int64_t layers);

// The memory layer's settings for `kind` (peer, memory or memory+) on the dense `base`, the
// FLOP-matching rule: the layer's forward FLOPs per token (memory_layer::Fwd::flops at batch 1)
// must not exceed those of the SwiGLU block it replaces, 6·d·ffn_hidden. n_keys = min(4·d, 1024)
// (the paper's 1024 from d = 256 on; N = n_keys² rows), v = d, the query width n as wide as fits
// (even, ≤ max(2, d/2)), and at that width the most rows a token reads, h·k, that fit, with
// h ∈ {4, 2, 1} and k one of k_max, k_max/2, ..., 1 for k_max = min(32, n_keys/16) (more heads
// on a tie).
// At the paper's shape this is its h 4, k 32, n 512, n_keys 1024; at a small d it keeps a query
// wide enough to tell the sub-keys apart and reads fewer rows instead (harness/README.md). When
// no n ≥ 2 fits, memory+ halves v; a base where nothing fits throws naming its budget. The
// table's storage is the base's memory.values_dtype (the one field of base.memory read: the FLOPs
// do not depend on it).
MemoryConfig memory_settings(ModelKind kind, const Config& base);

// The memory layers' settings a person sets in place of memory_settings' choice, for
// experiments off the FLOP-matching rule: each field 0 (or false) keeps the rule's value.
struct MemoryOverrides {
  int64_t heads = 0, n_keys = 0, k_dim = 0, k = 0, value_dim = 0;
  bool qk_norm = false;
  // The integer fields by name, in declaration order (for messages and JSON).
  std::array<std::pair<const char*, int64_t>, 5> sizes() const {
    return {{{"heads", heads},
             {"n_keys", n_keys},
             {"k_dim", k_dim},
             {"k", k},
             {"value_dim", value_dim}}};
  }
  bool any() const {
    const auto s = sizes();
    return qk_norm || std::any_of(s.begin(), s.end(), [](const auto& f) { return f.second != 0; });
  }
};

// model_config(kind, base) with the memory settings `o` sets. Throws memlayers::Error when `o`
// sets anything on a kind without memory layers, a field is negative, or the result is refused
// by Config::validate (k > n_keys, an odd k_dim, memory with v ≠ d, ...). The result may exceed
// the SwiGLU block's FLOPs: active_flops_per_token says by how much.
Config model_config(ModelKind kind, const Config& base, const MemoryOverrides& o);

// The memory layers of `c` in one line, for logs and summaries: which layers, the kind, h,
// n_keys (and the table's rows × width), k_dim, k, QK-norm, and one layer's forward FLOPs per
// token against the SwiGLU block's 6·d·ffn_hidden that it replaces. "" without memory layers.
std::string memory_statement(const Config& c);

// Forward FLOPs per token of the model's matrix products (2 per multiply-add), counting only the
// active parameters (a MoE's chosen experts, a memory layer's selected rows): the quantity the
// comparison matches across kinds. Attention's score and value products are counted at `seq`.
double active_flops_per_token(const Config& c, int64_t seq);

// Trainable parameters: the dense buffer plus the value table (its rows count in full, though a
// token reads only h·k of them per memory layer).
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

// Initial values (host), drawn in layout order from one std::mt19937_64 seeded with `seed`:
// linear weights and embeddings normal with std 0.02 (the projections into the residual
// stream, wo, w2 and Memory+'s mem.w2, scaled by 1/sqrt(2·layers)), RMSNorm scales 1, biases
// (mem.bq, mem.b1, mem.b2) 0; the memory layer's sub-keys uniform in ±1/sqrt(k_dim/2) (the
// product-key reference implementation's bound, so a sub-key's norm is about 1/sqrt(3)), its
// query projection mem.wq normal 0.02 like the other linear weights. Norms and biases draw
// nothing, so a dense model's values do not depend on the memory settings.
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

// Initial values of the value table (host), table_rows() × table_dim() floats, row-major; empty
// when the model has no table. Normal with std 1/sqrt(table_dim()) (memory and memory+: a read
// row has unit expected square norm, the reference implementation's scale; peer: U[i]·x of a
// normalised x is then about unit variance, in gelu's curved part), drawn in order by
// std::normal_distribution<float> from one std::mt19937_64 seeded with seed ⊕ 0x7661'6c75'6573
// ("values"), so it differs from init_params' stream at the same seed. Deterministic per seed
// and standard library.
std::vector<float> init_values(const Config& c, uint64_t seed);

class MemoryBlocks;

class Model {
 public:
  // `comm` (optional, outliving the model): a memory-parallel group (issue 8). Every rank runs
  // the model on its own rows of the group's batch: the dense parameters are replicated, the
  // value table is split along its columns (value_dim() is this rank's shard width,
  // harness/memory_block.h), and loss() returns the group's objective and dense gradient — each
  // rank's mean weighted by its share of the group's total weight, summed over the ranks (so the
  // group's objective is the weighted mean over all its rows, as one process would compute it).
  // loss() is then collective. Not with MoE layers (their balancing loss is over the batch) nor
  // PEER (two tables).
  Model(const Config& c, const Ops& ops, dist::Comm* comm = nullptr);
  ~Model();
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  const Config& config() const { return config_; }
  const ParamLayout& layout() const { return layout_; }  // the dense parameters
  const Ops& ops() const { return ops_; }
  // The value table shared by the model's memory layers, a separate buffer trained by the sparse
  // optimiser: value_rows() × value_dim() elements of values_dtype() (memory.values_dtype); 0 × 0
  // when the model has no memory layer. With a communicator, this rank's column shard: columns
  // value_column() to value_column() + value_dim() of the config's table_dim().
  int64_t value_rows() const { return value_rows_; }
  int64_t value_dim() const { return value_dim_; }
  DType values_dtype() const { return config_.memory.values_dtype; }
  int64_t value_column() const;
  dist::Comm* comm() const { return comm_; }

  // The batch's objective: its cross-entropy plus, with MoE layers, their balancing losses
  // (balance_loss()). With `grads` set (a buffer shaped like params), also its gradient with
  // respect to every dense parameter, written (not accumulated), and, with a value table and
  // `vgrad` set, the table's compact gradient in *vgrad (buffers the model owns, valid until the
  // next call): the memory layers' compact rows merged into one strictly ascending list, rows
  // that several layers touch summed (the merge runs on the host: each layer's rows are copied
  // there, merged in fp64 in a fixed order, and the result copied back; at most batch·seq·h·k
  // rows per layer). Without `vgrad` the table's gradient is not computed.
  // Device pointers; activations are kept in buffers the model owns, sized by the last batch.
  // `values` is the table in values_dtype() (float or bf16 bits, uint16_t); it may be null only
  // when the model has no table. The gradient rows are fp32 whatever the table's dtype.
  double loss(const float* params, const void* values, const Batch& b, float* grads = nullptr,
              SparseRows* vgrad = nullptr);

  // The logits of the last loss() call: (batch·seq, vocab), device memory.
  const float* logits() const;
  // The MoE layers' balancing losses summed, of the last loss() call: loss() returns the
  // objective, cross-entropy + this (0 without MoE layers), so the cross-entropy alone is
  // loss() − balance_loss().
  double balance_loss() const { return balance_loss_; }
  // The routing of the MoE block in `layer` (an entry of moe_layers) in the last loss() call.
  const MoeRouting& moe_routing(int64_t layer) const;

  // The rows of the value table the memory layer in `layer` (an entry of memory_layers) read in
  // the last loss() call: (batch·seq, h, k) row ids in [0, N), in score order per head, copied
  // to the host. For checks that the selection did not change between two calls.
  std::vector<int64_t> selection(int64_t layer) const;
  // Which registered memory-layer variants the last calls ran (harness/memory_block.h).
  std::string memory_variants() const;

 private:
  struct Activations;
  // This rank's share of the group's total row weight (collective).
  double weight_share(const Batch& bt) const;
  Config config_;
  ParamLayout layout_;
  const Ops& ops_;
  dist::Comm* comm_ = nullptr;
  int64_t value_rows_ = 0, value_dim_ = 0;
  std::unique_ptr<Activations> acts_;
  std::unique_ptr<MemoryBlocks> mem_;
  std::vector<std::unique_ptr<MoeBlock>> moe_;  // per layer; null where the block is not MoE
  double balance_loss_ = 0;
};

}  // namespace memlayers::harness
