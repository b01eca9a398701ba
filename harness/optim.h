// The harness's optimiser (harness/README.md, Optimiser): AdamW over the flat fp32 parameter
// buffer in named groups, a lazy sparse Adam for a value table, global gradient-norm clipping
// and the learning-rate schedule.
//
// The steps are plain params structs (pointers into a backend's memory, 64-bit sizes), like the
// Ops table's entries, collected in a table per backend (`optim_ops_for`), so a CUDA table can
// follow; `reference` and `cpu` share the host implementation (threaded, elementwise, so
// deterministic for any thread count). `Optimizer` owns the moments in the backend's memory and
// drives the table.
//
// AdamW, for element i at step t ≥ 1 (t counts the optimiser's steps), g = grad_scale·grad[i]:
//   m = β1·m + (1−β1)·g;   v = β2·v + (1−β2)·g²
//   p = p·(1 − lr·wd) − lr · (m / (1−β1ᵗ)) / (sqrt(v / (1−β2ᵗ)) + eps)
// Weight decay is decoupled (Loshchilov & Hutter: applied to p, not added to g) and multiplied by
// the scheduled lr, as in torch.optim.AdamW, whose formula this is.
//
// Sparse Adam (a value table of `rows` × `dim`): given compact gradient rows (strictly ascending,
// hence unique, row ids and one gradient row each, as the EmbeddingBag backward's compact dV
// gives), it applies the AdamW formula above to those rows' parameters and moments only. It is
// lazy, like torch.optim.SparseAdam: an untouched row's moments are not decayed and its
// parameters do not move (no weight decay either), and the bias correction uses the table's
// step count t (steps taken), not a per-row count. With every row given it equals AdamW
// exactly. Unlike torch's SparseAdam, eps is added after the bias correction (as in its dense
// Adam), which is what makes that equality hold.
//
// Clipping: one global norm over every dense gradient and every sparse gradient row (the compact
// rows hold each touched row once, so their norm is the dense table gradient's norm); when it
// exceeds max_norm, every gradient is scaled by max_norm / norm, through the steps' grad_scale.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "common/backend.h"
#include "harness/model.h"

namespace memlayers::harness {

// ---- steps ----

struct AdamHyper {
  float lr = 1e-3f;  // the scheduled learning rate of this step
  float beta1 = 0.9f, beta2 = 0.95f, eps = 1e-8f;
  float weight_decay = 0.0f;  // decoupled; multiplied by lr
  float grad_scale = 1.0f;    // applied to every gradient first (clipping)
  int64_t step = 1;           // t ≥ 1: bias corrections 1 − β1ᵗ, 1 − β2ᵗ
};

// Elements [0, n) of params, m, v updated from grads (same length, device memory).
struct AdamWStep {
  float* params = nullptr;
  const float* grads = nullptr;
  float* m = nullptr;
  float* v = nullptr;
  int64_t n = 0;
  AdamHyper h;
};

// Rows row_ids[0 .. n_rows) of a (rows, dim) table and its moments, from grad_rows (n_rows, dim).
struct SparseAdamStep {
  float* table = nullptr;  // (rows, dim)
  float* m = nullptr;      // (rows, dim)
  float* v = nullptr;      // (rows, dim)
  int64_t rows = 0, dim = 0;
  const int64_t* row_ids = nullptr;  // (n_rows) strictly ascending, in [0, rows)
  const float* grad_rows = nullptr;  // (n_rows, dim)
  int64_t n_rows = 0;                // 0: nothing to do
  AdamHyper h;
};

// Σ x² of `n` floats, in fp64, written to *out (host memory). Chunks of a fixed size are summed
// separately and then in order, so the result does not depend on the thread count.
struct SumSquares {
  const float* x = nullptr;
  int64_t n = 0;
  double* out = nullptr;
};

template <class P>
using OptimOp = std::function<void(const P&)>;

struct OptimOps {
  Backend backend = Backend::reference;
  const Memory* memory = nullptr;
  OptimOp<AdamWStep> adamw;
  OptimOp<SparseAdamStep> sparse_adam;  // host backends also check the row ids
  OptimOp<SumSquares> sum_squares;
};

// reference and cpu (the same host code); simt, and cuda where built and a GPU is usable
// (harness/cuda/optim.cu); otherwise memlayers::Error says why. Every entry validates its params
// first.
const OptimOps& optim_ops_for(Backend b);

void validate(const AdamHyper& h);
void validate(const AdamWStep& p);
void validate(const SparseAdamStep& p);
void validate(const SumSquares& p);

// ---- clipping and schedule ----

// The scale that brings a gradient of global norm `norm` to at most max_norm: min(1, max_norm /
// norm); 1 when max_norm ≤ 0 (clipping off). A non-finite norm throws (the step would be
// garbage), naming it.
float clip_scale(double norm, double max_norm);

// Learning-rate multiplier for step s (0-based, the step about to be taken): linear warm-up
// (s+1)/warmup over s < warmup, so the first step already moves; then a cosine from 1 at s =
// warmup to `floor` at s = total: floor + (1 − floor)·(1 + cos(π·(s − warmup)/(total −
// warmup)))/2; `floor` from s = total on.
struct Schedule {
  int64_t warmup = 0;
  int64_t total = 1;  // ≥ warmup (equal: the floor right after the warm-up)
  double floor = 0.1;
  void validate() const;
  double at(int64_t s) const;
};

// ---- the optimiser ----

// A group of the dense buffer: elements [offset, offset + size) with or without weight decay.
struct ParamGroup {
  std::string name;
  int64_t offset = 0, size = 0;
  bool decay = true;
};

// The dense model's groups, one per parameter tensor: decay on the linear weights (wqkv, wo, w13,
// w2); off on RMSNorm scales (decay would pull them to 0, not 1) and on the embeddings wte, wpe
// (a rarely seen token's row would shrink between visits: in the knowledge base that is a
// subject's name).
std::vector<ParamGroup> param_groups(const ParamLayout& layout);

struct OptimConfig {
  float lr = 1e-3f;  // peak dense learning rate
  float beta1 = 0.9f, beta2 = 0.95f, eps = 1e-8f;
  float weight_decay = 0.1f;  // on groups with decay
  float values_lr = 1e-3f;    // peak value-table learning rate (the reference implementation's)
  float values_weight_decay = 0.0f;
  double max_grad_norm = 1.0;  // ≤ 0: no clipping
  Schedule schedule;
  void validate() const;
};

struct StepStats {
  double grad_norm = 0;  // before clipping
  float clip = 1;        // the scale applied
  double lr_scale = 0;   // the schedule's multiplier
};

class Optimizer {
 public:
  // `dense` elements of dense parameters in `groups` (which must tile [0, dense) in order), and
  // optionally a value table of values_rows × values_dim (0 × 0: none). Moments start at zero.
  Optimizer(const OptimConfig& c, const OptimOps& ops, std::vector<ParamGroup> groups,
            int64_t dense, int64_t values_rows = 0, int64_t values_dim = 0);
  ~Optimizer();
  Optimizer(const Optimizer&) = delete;
  Optimizer& operator=(const Optimizer&) = delete;

  // One step: the global norm over grads and the table's rows, the clip scale, the scheduled lrs,
  // then AdamW per group and the sparse Adam of the table. Device pointers; `values` and `vgrad`
  // only with a table.
  StepStats step(float* params, const float* grads, float* values = nullptr,
                 const SparseRows& vgrad = {});

  // A table that is one column shard of a memory-parallel group's (harness/model.h): `sum` maps
  // this rank's squared norm of the table's gradient rows to the group's, so that every rank
  // clips by the same global norm (the dense gradient is the group's already). Called on every
  // step (collective).
  void set_table_norm_sum(std::function<double(double)> sum) { table_norm_sum_ = std::move(sum); }

  int64_t steps_taken() const { return t_; }
  // Resuming from a checkpoint: the steps already taken, from which the schedule and the bias
  // corrections continue (the moments are restored through the pointers below).
  void set_steps_taken(int64_t t) { t_ = t; }
  // The moments (device memory), for checkpoints and tests.
  float* m() const { return m_; }
  float* v() const { return v_; }
  float* values_m() const { return vm_; }
  float* values_v() const { return vv_; }

 private:
  OptimConfig config_;
  const OptimOps& ops_;
  std::vector<ParamGroup> groups_;
  int64_t dense_ = 0, values_rows_ = 0, values_dim_ = 0, t_ = 0;
  float *m_ = nullptr, *v_ = nullptr, *vm_ = nullptr, *vv_ = nullptr;
  std::function<double(double)> table_norm_sum_;
};

}  // namespace memlayers::harness
