// The training loop, its evaluation and summary (harness/train.h; harness/README.md, Training).
#include "harness/train.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "common/bf16.h"
#include "common/blas_core.h"
#include "common/error.h"
#include "common/parallel.h"

namespace memlayers::harness {
namespace {

using nlohmann::json;
using nlohmann::ordered_json;
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

json number_or_null(double x) { return std::isfinite(x) ? json(x) : json(nullptr); }

}  // namespace

Config default_train_base() {
  Config c;
  c.vocab = 0, c.ctx = 4, c.d_model = 64, c.layers = 4, c.heads = 4, c.ffn_hidden = 172;
  return c;
}

void TrainConfig::validate() const {
  MEMLAYERS_CHECK(steps >= 1, "train: steps is {}: accepted are steps ≥ 1", steps);
  data.validate();
  MEMLAYERS_CHECK(batch >= 1 && batch <= data.facts,
                  "train: batch {} with {} facts: accepted are 1 ≤ batch ≤ facts", batch,
                  data.facts);
  MEMLAYERS_CHECK(eval_every >= 0, "train: eval_every is {}: accepted are ≥ 1, or 0 for steps/5",
                  eval_every);
  MEMLAYERS_CHECK(warmup_fraction >= 0 && warmup_fraction <= 1,
                  "train: warmup_fraction {}: accepted are 0 ≤ fraction ≤ 1", warmup_fraction);
  MEMLAYERS_CHECK(lr_floor >= 0 && lr_floor <= 1, "train: lr_floor {}: accepted are 0 ≤ floor ≤ 1",
                  lr_floor);
  MEMLAYERS_CHECK(base.vocab >= 0,
                  "train: vocab {}: accepted are 0 (the knowledge base's) or ≥ its vocabulary",
                  base.vocab);
  MEMLAYERS_CHECK(base.memory.values_dtype == DType::f32 || base.memory.values_dtype == DType::bf16,
                  "train: values_dtype is {}: accepted are fp32 and bf16",
                  to_string(base.memory.values_dtype));
  MEMLAYERS_CHECK(memory_parallel >= 1 && memory_parallel <= batch,
                  "train: memory_parallel {} with batch {}: accepted are 1 ≤ memory_parallel ≤ "
                  "batch (every rank trains on at least one fact of each batch)",
                  memory_parallel, batch);
  MEMLAYERS_CHECK(base.ctx >= kFactTokens - 1,
                  "train: ctx {}: accepted are ctx ≥ {} (the tokens a fact's model input holds)",
                  base.ctx, kFactTokens - 1);
}

std::string to_json(const TrainConfig& c) {
  // In this order a checkpoint's config comparison (harness/checkpoint.cpp) names the field a
  // person set (steps) before what follows from it (the schedule).
  const Config& b = c.base;
  const DataConfig& d = c.data;
  const OptimConfig& o = c.optim;
  ordered_json j;
  j["model"] = to_string(c.model);
  j["base"] = {{"vocab", b.vocab},
               {"ctx", b.ctx},
               {"d_model", b.d_model},
               {"layers", b.layers},
               {"heads", b.heads},
               {"ffn_hidden", b.ffn_hidden},
               {"memory_layers", b.memory_layers}};
  if (b.memory.values_dtype != DType::f32)
    j["base"]["values_dtype"] = std::string(to_string(b.memory.values_dtype));
  if (const MemoryOverrides& m = c.memory; m.any()) {
    j["memory"] = ordered_json::object();
    for (const auto& [name, value] : m.sizes())
      if (value != 0) j["memory"][name] = value;
    if (m.qk_norm) j["memory"]["qk_norm"] = true;
  }
  j["data"] = {{"seed", d.seed},           {"names", d.names},     {"subjects", d.subjects},
               {"relations", d.relations}, {"objects", d.objects}, {"facts", d.facts}};
  j["steps"] = c.steps;
  j["batch"] = c.batch;
  j["seed"] = c.seed;
  j["warmup_fraction"] = c.warmup_fraction;
  j["lr_floor"] = c.lr_floor;
  j["optim"] = {
      {"lr", o.lr},
      {"beta1", o.beta1},
      {"beta2", o.beta2},
      {"eps", o.eps},
      {"weight_decay", o.weight_decay},
      {"values_lr", o.values_lr},
      {"values_weight_decay", o.values_weight_decay},
      {"max_grad_norm", o.max_grad_norm},
      {"schedule",
       {{"warmup", o.schedule.warmup}, {"total", o.schedule.total}, {"floor", o.schedule.floor}}}};
  j["eval_every"] = c.eval_every;
  j["backend"] = std::string(to_string(c.backend));
  // Only when set, so that one-process runs keep the JSON (and resume the checkpoints) they had.
  if (c.memory_parallel != 1) j["memory_parallel"] = c.memory_parallel;
  return j.dump();
}

const std::vector<std::string>& resume_may_differ() {
  static const std::vector<std::string> fields = {"backend", "eval_every"};
  return fields;
}

// ---- the trainer ----

Trainer::Trainer(const TrainConfig& c, dist::Comm* comm)
    : config_(c), comm_(comm), ops_(ops_for(c.backend)), mem_(*ops_for(c.backend).memory) {
  config_.validate();
  MEMLAYERS_CHECK(comm_ || config_.memory_parallel == 1,
                  "train: memory_parallel {} without a communicator: run the ranks under mpirun "
                  "(mpirun -np {} memlayers train --memory-parallel {} ...)",
                  config_.memory_parallel, config_.memory_parallel, config_.memory_parallel);
  MEMLAYERS_CHECK(!comm_ || comm_->size() == config_.memory_parallel,
                  "train: memory_parallel {} but the group has {} ranks: accepted is "
                  "memory_parallel = the number of ranks (mpirun -np)",
                  config_.memory_parallel, comm_ ? comm_->size() : 0);
  if (comm_) dist::check_agreement(*comm_, "the training config", to_json(config_));
  kb_ = make_knowledge_base(config_.data);
  Config& base = config_.base;
  if (base.vocab == 0) base.vocab = kb_.vocab();
  MEMLAYERS_CHECK(base.vocab >= kb_.vocab(),
                  "train: vocab {} is smaller than the knowledge base's {}: accepted are 0 (the "
                  "knowledge base's) or ≥ {}",
                  base.vocab, kb_.vocab(), kb_.vocab());
  if (config_.eval_every == 0) config_.eval_every = std::max<int64_t>(1, config_.steps / 5);
  config_.optim.schedule = {std::llround(config_.warmup_fraction * double(config_.steps)),
                            config_.steps, config_.lr_floor};
  config_.optim.validate();
  config_json_ = to_json(config_);

  model_ = std::make_unique<Model>(model_config(config_.model, base, config_.memory), ops_, comm_);
  const Config& mc = model_->config();
  const int64_t n = model_->layout().total(), rows = model_->value_rows(),
                dim = model_->value_dim();
  const std::vector<float> params = init_params(mc, config_.seed);
  // The table's own stream, so adding a table does not change the dense initialisation; with a
  // group, this rank's columns of it (every rank draws the whole table: the same values as one
  // process).
  std::vector<float> values = init_values(mc, splitmix64(config_.seed));
  if (dim != mc.table_dim() && rows > 0) {
    const int64_t full = mc.table_dim(), first = model_->value_column();
    std::vector<float> shard(static_cast<std::size_t>(rows * dim));
    for (int64_t r = 0; r < rows; ++r)
      std::copy_n(values.begin() + r * full + first, dim, shard.begin() + r * dim);
    values = std::move(shard);
  }
  MEMLAYERS_CHECK(
      static_cast<int64_t>(params.size()) == n && static_cast<int64_t>(values.size()) == rows * dim,
      "train: the model's initial values have {} parameters and {} table elements but "
      "its layout {} and table {} × {}",
      params.size(), values.size(), n, rows, dim);
  optimizer_ = std::make_unique<Optimizer>(config_.optim, optim_ops_for(config_.backend),
                                           param_groups(model_->layout()), n, rows, dim);
  if (comm_ && rows > 0)
    optimizer_->set_table_norm_sum([this](double sq) {
      comm_->all_reduce_sum_host(&sq, 1);
      return sq;
    });

  const auto alloc = [&](std::size_t bytes) { return mem_.alloc(bytes); };
  try {
    params_ = static_cast<float*>(alloc(n * sizeof(float)));
    grads_ = static_cast<float*>(alloc(n * sizeof(float)));
    mem_.to_device(params_, params.data(), n * sizeof(float));
    if (rows > 0) {
      values_ = static_cast<float*>(alloc(values.size() * sizeof(float)));
      mem_.to_device(values_, values.data(), values.size() * sizeof(float));
      if (model_->values_dtype() == DType::bf16) {
        table_bf16_ = static_cast<uint16_t*>(alloc(values.size() * sizeof(uint16_t)));
        round_table();
      }
    }
    const auto cells = static_cast<std::size_t>(config_.batch * seq());
    tokens_ = static_cast<int32_t*>(alloc(cells * sizeof(int32_t)));
    targets_ = static_cast<int32_t*>(alloc(cells * sizeof(int32_t)));
    weights_ = static_cast<float*>(alloc(cells * sizeof(float)));
  } catch (...) {
    for (void* p :
         {static_cast<void*>(params_), static_cast<void*>(grads_), static_cast<void*>(values_),
          static_cast<void*>(table_bf16_), static_cast<void*>(tokens_),
          static_cast<void*>(targets_), static_cast<void*>(weights_)})
      if (p) mem_.release(p);
    throw;
  }
}

Trainer::~Trainer() {
  for (void* p :
       {static_cast<void*>(params_), static_cast<void*>(grads_), static_cast<void*>(values_),
        static_cast<void*>(table_bf16_), static_cast<void*>(tokens_), static_cast<void*>(targets_),
        static_cast<void*>(weights_)})
    if (p) mem_.release(p);
}

const void* Trainer::table() const {
  return table_bf16_ ? static_cast<const void*>(table_bf16_) : static_cast<const void*>(values_);
}

std::vector<float> Trainer::read_table() const {
  const auto n = static_cast<std::size_t>(model_->value_rows() * model_->value_dim());
  std::vector<float> out(n);
  if (n == 0) return out;
  mem_.synchronize();
  if (!table_bf16_) {
    mem_.to_host(out.data(), values_, n * sizeof(float));
    return out;
  }
  std::vector<uint16_t> bits(n);
  mem_.to_host(bits.data(), table_bf16_, n * sizeof(uint16_t));
  for (std::size_t i = 0; i < n; ++i) out[i] = bf16_bits_to_float(bits[i]);
  return out;
}

// ---- the bf16 copy of the table ----

void Trainer::round_table() {
  if (!table_bf16_) return;
  const int64_t rows = model_->value_rows(), dim = model_->value_dim(), n = rows * dim;
  if (config_.backend == Backend::reference || config_.backend == Backend::cpu) {
    parallel_for(n, balanced_grain(n, 4096), [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) table_bf16_[i] = float_to_bf16_bits(values_[i]);
    });
    return;
  }
  std::vector<float> master(static_cast<std::size_t>(n));
  mem_.synchronize();
  mem_.to_host(master.data(), values_, master.size() * sizeof(float));
  table_mirror_.resize(master.size());
  for (std::size_t i = 0; i < master.size(); ++i) table_mirror_[i] = float_to_bf16_bits(master[i]);
  mem_.to_device(table_bf16_, table_mirror_.data(), table_mirror_.size() * sizeof(uint16_t));
}

void Trainer::round_table(const SparseRows& g) {
  if (!table_bf16_ || g.n_rows == 0) return;
  const int64_t rows = model_->value_rows(), dim = model_->value_dim(), n = g.n_rows;
  if (config_.backend == Backend::reference || config_.backend == Backend::cpu) {
    // Host memory: the ids are readable here, and the sparse step has checked them.
    parallel_for(n, balanced_grain(n, std::max<int64_t>(1, 4096 / dim)), [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        const int64_t off = g.row_ids[r] * dim;
        for (int64_t j = 0; j < dim; ++j)
          table_bf16_[off + j] = float_to_bf16_bits(values_[off + j]);
      }
    });
    return;
  }
  // Device memory: the ids and the master's rows from the first touched row to the last come to
  // the host, the touched rows are rounded into the mirror, and that span of the mirror goes
  // back. At the harness's sizes (16384 × 64 rows at the default base) this is a few MB a step.
  std::vector<int64_t> ids(static_cast<std::size_t>(n));
  mem_.synchronize();
  mem_.to_host(ids.data(), g.row_ids, ids.size() * sizeof(int64_t));
  MEMLAYERS_CHECK(ids.front() >= 0 && ids.back() < rows,
                  "train: table gradient rows {} to {}: accepted are rows in [0, {})", ids.front(),
                  ids.back(), rows);
  const int64_t first = ids.front() * dim, span = (ids.back() + 1) * dim - first;
  std::vector<float> master(static_cast<std::size_t>(span));
  mem_.to_host(master.data(), values_ + first, master.size() * sizeof(float));
  for (int64_t id : ids)
    for (int64_t j = 0; j < dim; ++j)
      table_mirror_[id * dim + j] = float_to_bf16_bits(master[id * dim + j - first]);
  mem_.to_device(table_bf16_ + first, table_mirror_.data() + first,
                 static_cast<std::size_t>(span) * sizeof(uint16_t));
}

int64_t Trainer::parameters() const { return parameter_count(model_->config()); }

double Trainer::flops_per_token() const { return active_flops_per_token(model_->config(), seq()); }

bool Trainer::eval_due() const {
  const int64_t s = step_count();
  return s > 0 && (s % config_.eval_every == 0 || s == config_.steps);
}

std::vector<int64_t> Trainer::next_indices() {
  const int64_t facts = config_.data.facts;
  std::vector<int64_t> indices;
  indices.reserve(static_cast<std::size_t>(config_.batch));
  while (static_cast<int64_t>(indices.size()) < config_.batch) {
    if (order_epoch_ != position_.epoch) {
      order_ = epoch_order(facts, config_.seed, position_.epoch);
      order_epoch_ = position_.epoch;
    }
    indices.push_back(order_[static_cast<std::size_t>(position_.index++)]);
    if (position_.index == facts) ++position_.epoch, position_.index = 0;
  }
  return indices;
}

std::pair<int64_t, int64_t> Trainer::my_rows(int64_t n) const {
  if (!comm_) return {0, n};
  const int64_t P = comm_->size(), r = comm_->rank();
  return {n * r / P, n * (r + 1) / P};
}

void Trainer::refuse_group_checkpoint(const char* what) const {
  MEMLAYERS_CHECK(!comm_ || comm_->size() == 1,
                  "train: {} of a memory-parallel run ({} ranks) is not supported yet: run "
                  "without --checkpoint-dir and --resume, or with --memory-parallel 1",
                  what, comm_ ? comm_->size() : 1);
}

void Trainer::upload(const FactBatch& b) {
  const auto cells = static_cast<std::size_t>(b.batch * b.seq);
  mem_.to_device(tokens_, b.tokens.data(), cells * sizeof(int32_t));
  mem_.to_device(targets_, b.targets.data(), cells * sizeof(int32_t));
  mem_.to_device(weights_, b.weights.data(), cells * sizeof(float));
}

StepResult Trainer::step() {
  MEMLAYERS_CHECK(!done(), "train: all {} steps are taken", config_.steps);
  const Clock::time_point t0 = Clock::now();
  std::vector<int64_t> indices = next_indices();  // the group's batch; every rank draws it
  const auto [first, last] = my_rows(static_cast<int64_t>(indices.size()));
  indices = std::vector<int64_t>(indices.begin() + first, indices.begin() + last);
  const FactBatch b = make_batch(kb_, indices, seq());
  upload(b);
  SparseRows vgrad;
  StepResult r;
  r.loss =
      model_->loss(params_, table(), {tokens_, targets_, weights_, b.batch, b.seq}, grads_, &vgrad);
  r.stats = optimizer_->step(params_, grads_, values_, vgrad);
  round_table(vgrad);  // the rows the sparse step updated
  mem_.synchronize();
  train_seconds_ += seconds_since(t0);
  tokens_trained_ += tokens_per_step();
  last_loss_ = r.loss;
  return r;
}

EvalResult Trainer::evaluate() {
  const int64_t facts = config_.data.facts, batch = config_.batch, vocab = model_->config().vocab;
  // With a group, each rank runs its rows [first, last) of every batch (the padding included, so
  // every rank has rows); the model's loss is the group's, the exact matches are summed at the
  // end. One process runs them all.
  const auto [first, last] = my_rows(batch);
  const int64_t mine = last - first;
  std::vector<float> logits(static_cast<std::size_t>(mine * seq() * vocab));
  std::vector<int64_t> indices(static_cast<std::size_t>(mine));
  EvalResult e;
  e.facts = facts;
  double loss_sum = 0;
  for (int64_t start = 0; start < facts; start += batch) {
    const int64_t n = std::min(batch, facts - start);
    for (int64_t i = first; i < last; ++i) indices[i - first] = i < n ? start + i : 0;
    FactBatch b = make_batch(kb_, indices, seq());
    // The padding rows, the batch's rows from n on.
    std::fill(b.weights.begin() + (std::clamp(n, first, last) - first) * seq(), b.weights.end(),
              0.0f);
    upload(b);
    // The cross-entropy alone: a MoE model's objective adds its balancing loss.
    const double loss = model_->loss(params_, table(), {tokens_, targets_, weights_, mine, seq()}) -
                        model_->balance_loss();
    mem_.to_host(logits.data(), model_->logits(), logits.size() * sizeof(float));
    e.correct += count_exact_matches(logits, b, vocab);
    loss_sum += loss * double(n);
  }
  if (comm_) {
    double correct = static_cast<double>(e.correct);
    comm_->all_reduce_sum_host(&correct, 1);
    e.correct = static_cast<int64_t>(correct);
  }
  e.loss = loss_sum / double(facts);
  return e;
}

const EvalPoint& Trainer::record_evaluation() {
  const EvalResult e = evaluate();
  history_.push_back({step_count(), e.loss, e.accuracy(), last_loss_});
  return history_.back();
}

TrainState Trainer::state() const {
  TrainState s;
  s.step = step_count();
  s.epoch = position_.epoch, s.index = position_.index;
  const auto n = static_cast<std::size_t>(model_->layout().total());
  auto copy = [&](std::vector<float>& out, const float* p, std::size_t count) {
    out.resize(count);
    if (count) mem_.to_host(out.data(), p, count * sizeof(float));
  };
  mem_.synchronize();
  copy(s.params, params_, n);
  copy(s.m, optimizer_->m(), n);
  copy(s.v, optimizer_->v(), n);
  s.value_rows = model_->value_rows(), s.value_dim = model_->value_dim();
  const auto table = static_cast<std::size_t>(s.value_rows * s.value_dim);
  if (table) {
    copy(s.values, values_, table);
    copy(s.values_m, optimizer_->values_m(), table);
    copy(s.values_v, optimizer_->values_v(), table);
  }
  s.history = history_;
  return s;
}

void Trainer::restore(const TrainState& s) {
  refuse_group_checkpoint("a restore");
  const int64_t n = model_->layout().total();
  MEMLAYERS_CHECK(static_cast<int64_t>(s.params.size()) == n && s.m.size() == s.params.size() &&
                      s.v.size() == s.params.size(),
                  "restore: {} parameters ({} and {} moments) for a model of {}: accepted is the "
                  "model's count in each",
                  s.params.size(), s.m.size(), s.v.size(), n);
  const int64_t rows = model_->value_rows(), dim = model_->value_dim();
  const auto table = static_cast<std::size_t>(rows * dim);
  MEMLAYERS_CHECK(s.value_rows == rows && s.value_dim == dim && s.values.size() == table &&
                      s.values_m.size() == table && s.values_v.size() == table,
                  "restore: a value table of {} × {} for a model whose table is {} × {}",
                  s.value_rows, s.value_dim, rows, dim);
  MEMLAYERS_CHECK(s.step >= 0 && s.step <= config_.steps,
                  "restore: step {}: accepted are 0 ≤ step ≤ steps {}", s.step, config_.steps);
  MEMLAYERS_CHECK(s.epoch >= 0 && s.index >= 0 && s.index < config_.data.facts,
                  "restore: data position (epoch {}, index {}): accepted are epoch ≥ 0 and 0 ≤ "
                  "index < facts {}",
                  s.epoch, s.index, config_.data.facts);
  const auto bytes = static_cast<std::size_t>(n) * sizeof(float);
  mem_.to_device(params_, s.params.data(), bytes);
  mem_.to_device(optimizer_->m(), s.m.data(), bytes);
  mem_.to_device(optimizer_->v(), s.v.data(), bytes);
  if (table) {
    mem_.to_device(values_, s.values.data(), table * sizeof(float));
    mem_.to_device(optimizer_->values_m(), s.values_m.data(), table * sizeof(float));
    mem_.to_device(optimizer_->values_v(), s.values_v.data(), table * sizeof(float));
    round_table();  // the bf16 copy is not saved: it follows from the master
  }
  mem_.synchronize();
  optimizer_->set_steps_taken(s.step);
  position_ = {s.epoch, s.index};
  order_epoch_ = -1;
  history_ = s.history;
  last_loss_ = history_.empty() ? 0.0 : history_.back().train_loss;
}

std::string Trainer::save_checkpoint(const std::string& dir) {
  refuse_group_checkpoint("a checkpoint");
  std::string path = save_checkpoint_in(dir, config_json_, state(), rotate_);
  rotate_ = true;
  return path;
}

std::optional<Resumed> Trainer::resume(const std::string& dir) {
  refuse_group_checkpoint("a resume");
  std::optional<Resumed> r = load_newest_checkpoint(dir, config_json_, resume_may_differ());
  if (!r) return r;
  try {
    restore(r->state);
  } catch (const Error& e) {
    fail("checkpoint '{}': {}", r->path, e.what());
  }
  rotate_ = r->skipped.empty();
  return r;
}

// ---- the loop ----

void train(Trainer& t, const LoopOptions& o) {
  MEMLAYERS_CHECK(o.checkpoint_every >= 0,
                  "train: checkpoint_every is {}: accepted are ≥ 1, or 0 for the last step only",
                  o.checkpoint_every);
  const Clock::time_point t0 = Clock::now();
  const int64_t first = t.step_count();
  while (!t.done()) {
    const StepResult r = t.step();
    const int64_t s = t.step_count();
    const bool evaluated = t.eval_due();
    if (evaluated) t.record_evaluation();
    if (!o.checkpoint_dir.empty() &&
        ((o.checkpoint_every > 0 && s % o.checkpoint_every == 0) || t.done()))
      t.save_checkpoint(o.checkpoint_dir);
    if (o.on_step) {
      Progress p;
      p.step = s, p.steps = t.config().steps, p.loss = r.loss, p.evaluated = evaluated;
      if (!t.history().empty()) p.evaluation = t.history().back();
      p.tokens_per_second =
          t.train_seconds() > 0 ? double(t.tokens_trained()) / t.train_seconds() : 0.0;
      p.eta_seconds = seconds_since(t0) / double(s - first) * double(p.steps - s);
      o.on_step(p);
    }
  }
  if (t.history().empty() || t.history().back().step != t.step_count()) t.record_evaluation();
}

// ---- the summary ----

Summary summarize(const Trainer& t, double wall_seconds) {
  Summary s;
  s.config_json = to_json(t.config());
  s.model = to_string(t.config().model);
  s.parameters = t.parameters();
  s.flops_per_token = t.flops_per_token();
  s.steps = t.step_count();
  if (!t.history().empty()) {
    s.final_loss = t.history().back().loss;
    s.final_accuracy = t.history().back().accuracy;
  }
  s.train_seconds = t.train_seconds();
  s.tokens_per_second = s.train_seconds > 0 ? double(t.tokens_trained()) / s.train_seconds : 0.0;
  s.wall_seconds = wall_seconds;
  s.capacity = capacity_statement(t.knowledge_base(), s.parameters);
  s.memory = memory_statement(t.model().config());
  s.host_blas = host_blas::describe();
  s.history = t.history();
  return s;
}

std::string summary_json(const Summary& s) {
  json j;
  j["config"] = json::parse(s.config_json);
  j["model"] = s.model;
  j["parameters"] = s.parameters;
  j["active_flops_per_token"] = s.flops_per_token;
  j["steps"] = s.steps;
  j["final_loss"] = number_or_null(s.final_loss);
  j["final_accuracy"] = number_or_null(s.final_accuracy);
  j["tokens_per_second"] = s.tokens_per_second;
  j["train_seconds"] = s.train_seconds;
  j["wall_seconds"] = s.wall_seconds;
  j["capacity"] = s.capacity;
  if (!s.memory.empty()) j["memory"] = s.memory;
  j["host_blas"] = s.host_blas;
  json h = json::array();
  for (const EvalPoint& p : s.history)
    h.push_back({{"step", p.step},
                 {"loss", number_or_null(p.loss)},
                 {"accuracy", number_or_null(p.accuracy)},
                 {"train_loss", number_or_null(p.train_loss)}});
  j["history"] = h;
  return j.dump(2) + "\n";
}

std::string summary_markdown(const Summary& s) {
  const json c = json::parse(s.config_json);
  const json& b = c["base"];
  const json& d = c["data"];
  std::string md = fmt::format("# memlayers train: {}\n\n", s.model);
  md += "| | |\n| --- | --- |\n";
  md += fmt::format(
      "| model | {} (d_model {}, {} layers, {} heads, ffn_hidden {}, vocab {}, ctx {}) |\n",
      s.model, b["d_model"].get<int64_t>(), b["layers"].get<int64_t>(), b["heads"].get<int64_t>(),
      b["ffn_hidden"].get<int64_t>(), b["vocab"].get<int64_t>(), b["ctx"].get<int64_t>());
  md += fmt::format("| backend | {} (host BLAS: {}) |\n", c["backend"].get<std::string>(),
                    s.host_blas);
  md += fmt::format(
      "| knowledge base | {} facts: {} subjects ({} names), {} relations, {} objects; data seed "
      "{} |\n",
      d["facts"].get<int64_t>(), d["subjects"].get<int64_t>(), d["names"].get<int64_t>(),
      d["relations"].get<int64_t>(), d["objects"].get<int64_t>(), d["seed"].get<uint64_t>());
  md += fmt::format("| steps | {} × {} facts, seed {}, lr {}, values lr {} |\n", s.steps,
                    c["batch"].get<int64_t>(), c["seed"].get<uint64_t>(),
                    c["optim"]["lr"].get<float>(), c["optim"]["values_lr"].get<float>());
  if (!s.memory.empty()) md += fmt::format("| memory layers | {} |\n", s.memory);
  md += fmt::format("| parameters | {} |\n", s.parameters);
  md += fmt::format("| active FLOPs/token | {:.0f} |\n", s.flops_per_token);
  md += fmt::format("| final loss | {:.4f} |\n", s.final_loss);
  md += fmt::format("| accuracy | {:.4f} |\n", s.final_accuracy);
  md += fmt::format("| tokens/s | {:.0f} |\n", s.tokens_per_second);
  md += fmt::format("| wall time | {:.1f} s ({:.1f} s in training steps) |\n\n", s.wall_seconds,
                    s.train_seconds);
  md += "Capacity: " + s.capacity + ".\n\n";
  md += "| step | train loss | loss (all facts) | accuracy |\n| ---: | ---: | ---: | ---: |\n";
  for (const EvalPoint& p : s.history)
    md += fmt::format("| {} | {:.4f} | {:.4f} | {:.4f} |\n", p.step, p.train_loss, p.loss,
                      p.accuracy);
  return md;
}

}  // namespace memlayers::harness
