// The harness's training loop (harness/README.md, Training): a model of harness/model.h trained
// on the knowledge base of harness/data.h by the optimiser of harness/optim.h, on any backend's
// Ops, with evaluation over every fact, checkpoints (harness/checkpoint.h) and a resume that
// continues bit-identically.
//
// A step takes the next `batch` facts of the epoch order (epoch_order(facts, seed, epoch); a
// batch that reaches the end of an epoch continues into the next one), runs the model's loss with
// gradients and one optimiser step. The state that decides every later step is the parameters,
// the value table, the optimiser's moments and step count, and the data position (epoch, index):
// exactly what a checkpoint holds.
//
// A bf16 value table (base.memory.values_dtype bf16) is trained mixed-precision: the optimiser
// updates an fp32 master table with fp32 moments, and the layers read a bf16 copy, rounded to
// nearest even from the master (kernels/common/bf16.h) — whole at the start and after a restore,
// then after each step only the rows the step's compact gradient names (the sparse step changes
// no other row). The copy is a function of the master, so a checkpoint holds only the master.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "common/backend.h"
#include "harness/checkpoint.h"
#include "harness/data.h"
#include "harness/model.h"
#include "harness/optim.h"

namespace memlayers::harness {

// The dense base of every model kind at the training defaults: vocab 0 (taken from the
// knowledge base), ctx 4 (a fact is 4 tokens), d_model 64, 4 layers, 4 heads, ffn_hidden 172
// (≈ 8/3·d, SwiGLU's usual width at a 4·d MLP's cost).
Config default_train_base();

struct TrainConfig {
  ModelKind model = ModelKind::dense;
  Config base = default_train_base();  // vocab 0: the knowledge base's vocabulary
  DataConfig data;
  // lr, values_lr, betas, decay, clipping. Its schedule is replaced by the one below.
  OptimConfig optim;
  // The schedule: linear warm-up over round(warmup_fraction·steps) steps, then a cosine down to
  // lr_floor·lr at the last step.
  double warmup_fraction = 0.05;
  double lr_floor = 0.1;
  int64_t steps = 1000;
  int64_t batch = 256;     // facts per step, 1 ≤ batch ≤ facts
  int64_t eval_every = 0;  // evaluate after every eval_every steps; 0: steps/5 (at least 1)
  uint64_t seed = 1;       // the initial parameters and the epoch order (data.seed: the facts)
  Backend backend = Backend::cpu;
  // Memory parallelism (issue 8): the ranks of a group of this size (mpirun -np P) each train on
  // their share of every batch (rows [batch·r/P, batch·(r+1)/P)) with the dense parameters
  // replicated and the value table split along its columns (harness/model.h); 1: one process.
  // The Trainer is then given the group's communicator. 1 ≤ memory_parallel ≤ batch.
  int64_t memory_parallel = 1;
  // The memory layers' settings set in place of the FLOP-matching rule's (harness/model.h;
  // nothing set: the rule's, and the config's JSON is what it was before the option existed).
  MemoryOverrides memory;
  // base.memory.values_dtype (f32 or bf16) is the storage of the value table the memory layers
  // read (model_config keeps it; the rest of base.memory is the kind's own). A model without a
  // table ignores it.

  // Throws memlayers::Error naming the first bad field and what is accepted.
  void validate() const;
};

// The config as JSON text: every field, the model kind by name, floats exactly (round-trip);
// base.values_dtype only when it is not fp32, so that fp32 runs keep the JSON (and resume the
// checkpoints) they had before the option existed.
std::string to_json(const TrainConfig& c);
// The fields of to_json a resumed run may change: where it runs and how often it evaluates.
const std::vector<std::string>& resume_may_differ();

struct DataPosition {
  int64_t epoch = 0, index = 0;  // the next fact is epoch_order(facts, seed, epoch)[index]
};

struct EvalResult {
  double loss = 0;  // mean object loss over the facts
  int64_t correct = 0, facts = 0;
  double accuracy() const { return facts ? double(correct) / double(facts) : 0.0; }
};

struct StepResult {
  double loss = 0;  // the batch's mean object loss, before the update
  StepStats stats;
};

class Trainer {
 public:
  // Builds the knowledge base, the model (model_config(kind, base, memory): a kind that is not
  // built throws), the parameters (init_params, init_values from seed) and the optimiser. With
  // `comm` (outliving the trainer; its size must be memory_parallel), the memory-parallel group:
  // every rank makes the same calls (steps, evaluations) in the same order; the config must agree
  // across ranks (checked). Without it, memory_parallel must be 1.
  explicit Trainer(const TrainConfig& c, dist::Comm* comm = nullptr);
  ~Trainer();
  Trainer(const Trainer&) = delete;
  Trainer& operator=(const Trainer&) = delete;

  // The config as run: vocab from the knowledge base, eval_every resolved, optim.schedule set.
  const TrainConfig& config() const { return config_; }
  const KnowledgeBase& knowledge_base() const { return kb_; }
  const Model& model() const { return *model_; }
  // The value table the memory layers read, in model().values_dtype(), device memory: the fp32
  // master itself, or its bf16 copy; null without a table.
  const void* table() const;
  // That table copied to the host and widened to fp32 (exactly: every bf16 is an fp32). With a
  // group, this rank's column shard (model().value_column(), model().value_dim() columns).
  std::vector<float> read_table() const;
  int64_t parameters() const;      // parameter_count of the model
  double flops_per_token() const;  // active_flops_per_token at the facts' length
  int64_t seq() const { return kFactTokens - 1; }
  int64_t tokens_per_step() const { return config_.batch * seq(); }

  int64_t step_count() const { return optimizer_->steps_taken(); }
  DataPosition position() const { return position_; }
  bool done() const { return step_count() >= config_.steps; }
  // Whether the step just taken is one to evaluate after: every eval_every steps and the last.
  bool eval_due() const;

  StepResult step();
  // Loss and exact-match accuracy over every fact (forward only, batches of `batch` facts; the
  // last is padded with weight-0 rows so the activations keep one size). Changes no state.
  EvalResult evaluate();
  // evaluate(), appended to the history at the current step.
  const EvalPoint& record_evaluation();
  const std::vector<EvalPoint>& history() const { return history_; }
  double last_train_loss() const { return last_loss_; }

  // Time in step() in this process (the backend synchronised), and the tokens it trained.
  double train_seconds() const { return train_seconds_; }
  int64_t tokens_trained() const { return tokens_trained_; }

  // The state (host copies) and its restoration, which checks every size against the model.
  // With a group, this rank's state (its column shard of the table and its moments); saving and
  // restoring a group's checkpoints is refused (not supported yet).
  TrainState state() const;
  void restore(const TrainState& s);

  // Checkpoints in `dir` (harness/checkpoint.h save_checkpoint_in); returns the path written.
  // After a resume that refused checkpoint.safetensors and loaded checkpoint.prev.safetensors,
  // the first save replaces the refused file and keeps prev, the only good one.
  std::string save_checkpoint(const std::string& dir);
  // Restores the newest checkpoint of `dir` that verifies; nullopt when there is none.
  std::optional<Resumed> resume(const std::string& dir);

 private:
  std::vector<int64_t> next_indices();
  // This rank's rows [first, last) of a batch of n rows: all of them without a group.
  std::pair<int64_t, int64_t> my_rows(int64_t n) const;
  void refuse_group_checkpoint(const char* what) const;
  void upload(const FactBatch& b);
  // The bf16 copy rounded from the master: every row, or the `rows.n_rows` rows named by the
  // (strictly ascending, device) ids of `rows`. Nothing without a bf16 table.
  void round_table();
  void round_table(const SparseRows& rows);

  TrainConfig config_;
  dist::Comm* comm_ = nullptr;
  KnowledgeBase kb_;
  const Ops& ops_;
  const Memory& mem_;
  std::unique_ptr<Model> model_;
  std::unique_ptr<Optimizer> optimizer_;
  std::string config_json_;
  float *params_ = nullptr, *grads_ = nullptr, *values_ = nullptr;  // values_: the fp32 master
  uint16_t* table_bf16_ = nullptr;  // the bf16 copy the layers read, with a bf16 table
  // On cuda, and on simt (which stands in for it, so the tests run this path), the rows are
  // rounded on the host, through this mirror of the bf16 copy; reference and cpu round in place.
  std::vector<uint16_t> table_mirror_;
  int32_t *tokens_ = nullptr, *targets_ = nullptr;
  float* weights_ = nullptr;
  DataPosition position_;
  std::vector<int64_t> order_;  // epoch_order of position_.epoch
  int64_t order_epoch_ = -1;
  std::vector<EvalPoint> history_;
  double last_loss_ = 0, train_seconds_ = 0;
  int64_t tokens_trained_ = 0;
  bool rotate_ = true;  // whether the next save keeps checkpoint.safetensors as prev
};

// ---- the loop ----

struct Progress {
  int64_t step = 0, steps = 0;
  double loss = 0;                      // the last training batch's
  std::optional<EvalPoint> evaluation;  // the latest, if any
  bool evaluated = false;               // this step evaluated
  double tokens_per_second = 0;         // training steps only, this process
  double eta_seconds = 0;
};

struct LoopOptions {
  std::string checkpoint_dir;    // "": no checkpoints
  int64_t checkpoint_every = 0;  // steps between checkpoints; 0: only the last step's
  std::function<void(const Progress&)> on_step;  // after every step (optional)
};

// Steps until config().steps, evaluating when due and saving checkpoints; an evaluation at the
// final step is made if the history lacks one (a run resumed at its end).
void train(Trainer& t, const LoopOptions& o);

// ---- the summary ----

struct Summary {
  std::string config_json;
  std::string model;
  int64_t parameters = 0;
  double flops_per_token = 0;
  int64_t steps = 0;
  double final_loss = 0, final_accuracy = 0;
  double tokens_per_second = 0;
  double train_seconds = 0, wall_seconds = 0;
  std::string capacity;
  std::string memory;  // memory_statement of the model: "" without memory layers
  // The host BLAS and its kernels (host_blas::describe()): the cpu backend's GEMMs round as they
  // do, so a run reproduces to the bit only with the same kernels.
  std::string host_blas;
  std::vector<EvalPoint> history;
};

Summary summarize(const Trainer& t, double wall_seconds);
std::string summary_json(const Summary& s);
std::string summary_markdown(const Summary& s);

}  // namespace memlayers::harness
