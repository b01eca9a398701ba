// `memlayers train`: trains one of the harness's models (harness/README.md, Training) on the
// synthetic knowledge base, with periodic evaluation over every fact, checkpoints that a later
// run resumes bit-identically, and a final JSON and markdown summary.
//   memlayers train --model dense --steps 200 [--facts N --names N --subjects N --relations N
//       --objects N --data-seed X] [--seed X] [--backend reference|cpu|cuda|simt] [--batch B]
//       [--lr LR --values-lr LR] [--values-dtype fp32|bf16] [--eval-every K] [--d-model D --layers
//       L --heads H --ffn-hidden F] [--mem-heads H --mem-n-keys N --mem-k-dim N --mem-k K
//       --mem-value-dim V --mem-qk-norm] [--checkpoint-dir DIR [--checkpoint-every K] [--resume]]
//       [--json FILE] [--markdown FILE] [--quiet]
//   mpirun -np P memlayers train --memory-parallel P ...   (memory parallelism, issue 8: every
//       rank trains on its share of each batch, the value table split along its columns; rank 0
//       prints and writes the summaries; a rank that fails ends every rank)
// Build and run:
//   cmake --build build --target memlayers && build/tools/cli/memlayers train --help
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <optional>
#include <string>

#include <fmt/format.h>

#include "common/backend.h"
#include "common/dtype.h"
#include "common/error.h"
#include "dist/comm.h"
#include "harness/train.h"
#include "subcommand.h"

namespace memlayers::cli::train_command {
namespace {

namespace fs = std::filesystem;
namespace h = harness;

struct Options {
  std::string model = "dense";
  std::string backend = "cpu";
  std::string values_dtype = "fp32";
  h::TrainConfig config;  // defaults of harness/train.h; the flags below overwrite them
  bool batch_given = false;
  std::string checkpoint_dir;
  int64_t checkpoint_every = 0;
  bool resume = false;
  std::string json, markdown;
  bool quiet = false;
};

// A file written whole or not at all: a temporary file beside it, renamed over it.
void write_file(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << text;
    out.flush();
    if (!out) {
      std::remove(tmp.c_str());
      fail("cannot write '{}'", tmp);
    }
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) {
    std::remove(tmp.c_str());
    fail("cannot rename '{}' to '{}': {}", tmp, path, ec.message());
  }
}

// An output's folder must exist before training starts, not after it.
void check_output(const std::string& flag, const std::string& path) {
  if (path.empty()) return;
  const fs::path parent = fs::path(path).parent_path();
  std::error_code ec;
  MEMLAYERS_CHECK(parent.empty() || fs::is_directory(parent, ec),
                  "{} '{}': the folder '{}' does not exist", flag, path, parent.string());
}

std::string duration(double seconds) {
  const auto s = static_cast<int64_t>(seconds + 0.5);
  return s >= 3600 ? fmt::format("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
                   : fmt::format("{}:{:02}", s / 60, s % 60);
}

std::string progress_line(const h::Progress& p) {
  std::string acc = "-";
  if (p.evaluation)
    acc = fmt::format("{:.4f} (step {})", p.evaluation->accuracy, p.evaluation->step);
  return fmt::format("step {}/{}  batch loss {:.4f}  accuracy {}  {:.0f} tokens/s  ETA {}", p.step,
                     p.steps, p.loss, acc, p.tokens_per_second, duration(p.eta_seconds));
}

void train_on(const Options& o, dist::Comm* comm);

// The group of a memory-parallel run (null for one process); a failure on any rank ends every
// rank with its message rather than leaving the others waiting in a collective.
void run(const Options& o) {
  std::unique_ptr<dist::Comm> comm;
  MEMLAYERS_CHECK(o.config.memory_parallel == 1 || o.checkpoint_dir.empty(),
                  "--checkpoint-dir with --memory-parallel {}: checkpoints of a memory-parallel "
                  "run are not supported yet (accepted: one of the two)",
                  o.config.memory_parallel);
  if (o.config.memory_parallel > 1) {
    MEMLAYERS_CHECK(dist::launched_by_mpi(),
                    "--memory-parallel {} needs {} ranks: run it as mpirun -np {} memlayers train "
                    "--memory-parallel {} ...",
                    o.config.memory_parallel, o.config.memory_parallel, o.config.memory_parallel,
                    o.config.memory_parallel);
    // GPU ranks exchange device buffers over NCCL; the host backends over MPI.
    comm = o.backend == "cuda" ? dist::make_nccl_comm() : dist::make_mpi_comm();
  }
  if (!comm || comm->size() == 1) return train_on(o, comm.get());
  try {
    train_on(o, comm.get());
  } catch (const std::exception& e) {
    comm->abort_group(e.what());
  }
}

void train_on(const Options& o, dist::Comm* comm) {
  using Clock = std::chrono::steady_clock;
  const Clock::time_point t0 = Clock::now();
  h::TrainConfig c = o.config;
  c.model = h::parse_model_kind(o.model);
  const std::optional<Backend> backend = parse_backend(o.backend);
  MEMLAYERS_CHECK(backend.has_value(),
                  "unknown backend '{}': accepted are reference, cpu, cuda, simt", o.backend);
  c.backend = *backend;
  const std::optional<DType> values_dtype = parse_dtype(o.values_dtype);
  MEMLAYERS_CHECK(values_dtype == DType::f32 || values_dtype == DType::bf16,
                  "unknown --values-dtype '{}': accepted are fp32, bf16", o.values_dtype);
  c.base.memory.values_dtype = *values_dtype;
  if (!o.batch_given) c.batch = std::min(c.batch, c.data.facts);  // a small knowledge base
  check_output("--json", o.json);
  check_output("--markdown", o.markdown);

  h::Trainer t(c, comm);
  const bool rank0 = !comm || comm->rank() == 0;  // the one that prints and writes
  const auto say = [&](const std::string& line) {
    if (!o.quiet && rank0) std::cerr << line << "\n";
  };
  const h::Config& mc = t.model().config();
  say(fmt::format(
      "train: {} on {}: d_model {}, {} layers, {} heads, ffn_hidden {}, vocab {}{}; {} "
      "parameters, {:.0f} active FLOPs/token; {} steps × {} facts",
      o.model, o.backend, mc.d_model, mc.layers, mc.heads, mc.ffn_hidden, mc.vocab,
      mc.memory_layers.empty() ? std::string()
                               : fmt::format(", {} value table", to_string(mc.memory.values_dtype)),
      t.parameters(), t.flops_per_token(), c.steps, t.config().batch));
  if (comm)
    say(fmt::format(
        "memory parallel: {} ranks, each {} facts of a batch and {} of the table's {} "
        "columns (rank 0's)",
        comm->size(), t.config().batch / comm->size(), t.model().value_dim(), mc.table_dim()));
  if (!mc.memory_layers.empty()) say("memory: " + h::memory_statement(mc));
  say("capacity: " + h::capacity_statement(t.knowledge_base(), t.parameters()));
  if (o.resume) {
    const std::optional<h::Resumed> r = t.resume(o.checkpoint_dir);
    if (!r) {
      say(fmt::format("resume: no checkpoint in '{}': starting at step 0", o.checkpoint_dir));
    } else {
      if (!r->skipped.empty()) say("resume: refused the newer checkpoint: " + r->skipped);
      say(fmt::format("resume: '{}' at step {} (epoch {}, fact {} of its order)", r->path,
                      r->state.step, r->state.epoch, r->state.index));
    }
  }

  const bool tty = ::isatty(STDERR_FILENO) == 1;
  Clock::time_point last_draw{};
  h::LoopOptions lo;
  lo.checkpoint_dir = o.checkpoint_dir;
  lo.checkpoint_every = o.checkpoint_every;
  lo.on_step = [&](const h::Progress& p) {
    if (o.quiet || !rank0) return;
    const bool last = p.step == p.steps;
    if (tty) {
      // Rewritten in place, at most 10 times a second.
      if (!p.evaluated && !last && Clock::now() - last_draw < std::chrono::milliseconds(100))
        return;
      last_draw = Clock::now();
      std::cerr << "\r" << progress_line(p) << "\x1b[K" << (last ? "\n" : "") << std::flush;
    } else if (p.evaluated) {
      std::cerr << progress_line(p) << "\n";
    }
  };
  h::train(t, lo);

  const h::Summary s = h::summarize(t, std::chrono::duration<double>(Clock::now() - t0).count());
  if (rank0 && !o.json.empty()) write_file(o.json, h::summary_json(s));
  if (rank0 && !o.markdown.empty()) write_file(o.markdown, h::summary_markdown(s));
  const h::EvalPoint& e = t.history().back();
  say(fmt::format(
      "done: step {}, loss over all facts {:.4f}, accuracy {:.4f} ({} of {} facts), {:.0f} "
      "tokens/s, wall {:.1f} "
      "s{}",
      e.step, e.loss, e.accuracy, static_cast<int64_t>(e.accuracy * double(c.data.facts) + 0.5),
      c.data.facts, s.tokens_per_second, s.wall_seconds,
      o.checkpoint_dir.empty()
          ? std::string()
          : fmt::format("; checkpoint '{}'", h::checkpoint_path(o.checkpoint_dir))));
}

Action setup(CLI::App& app) {
  auto* sub = app.add_subcommand(
      "train",
      "Train a harness model (dense, dense4x, moe, peer, memory, memory+) on the synthetic "
      "knowledge base: progress on stderr, evaluation of loss and exact-match accuracy over "
      "every fact, atomic checksummed checkpoints that --resume continues bit-identically, a "
      "JSON and markdown summary");
  auto o = std::make_shared<Options>();
  h::TrainConfig& c = o->config;
  sub->add_option("--model", o->model,
                  "the model: dense, dense4x, moe, peer, memory, memory+ (harness/README.md, "
                  "Models)")
      ->capture_default_str();
  sub->add_option("--backend", o->backend, "where to run: reference, cpu, cuda, simt")
      ->capture_default_str();
  sub->add_option("--steps", c.steps, "optimiser steps")->capture_default_str();
  sub->add_option("--batch", c.batch,
                  "facts per step (1 ≤ batch ≤ facts; default 256, or the facts if fewer)");
  sub->add_option("--seed", c.seed, "the seed of the initial parameters and the epoch order")
      ->capture_default_str();
  sub->add_option("--lr", c.optim.lr, "peak learning rate of the dense parameters (AdamW)")
      ->capture_default_str();
  sub->add_option("--values-lr", c.optim.values_lr,
                  "peak learning rate of the value table (sparse Adam)")
      ->capture_default_str();
  sub->add_option("--values-dtype", o->values_dtype,
                  "storage of the value table the memory layers read: fp32, or bf16 (an fp32 "
                  "master copy and fp32 moments train it; the touched rows are rounded to bf16 "
                  "after each step)")
      ->capture_default_str();
  sub->add_option("--warmup", c.warmup_fraction,
                  "warm-up as a fraction of the steps; then a cosine to 0.1 × lr at the end")
      ->capture_default_str();
  sub->add_option("--eval-every", c.eval_every,
                  "evaluate over every fact after every K steps and after the last; 0: steps/5")
      ->capture_default_str();
  // ---- the model's size ----
  sub->add_option("--d-model", c.base.d_model, "model width")->capture_default_str();
  sub->add_option("--layers", c.base.layers, "transformer blocks")->capture_default_str();
  sub->add_option("--heads", c.base.heads, "attention heads (dividing --d-model)")
      ->capture_default_str();
  sub->add_option("--ffn-hidden", c.base.ffn_hidden,
                  "SwiGLU hidden width of the dense base (dense4x takes 4×)")
      ->capture_default_str();
  // ---- the memory layers, in place of the FLOP-matching rule (0: the rule's) ----
  h::MemoryOverrides& m = c.memory;
  sub->add_option("--mem-heads", m.heads, "memory layers' heads h (0: the FLOP-matching rule's)");
  sub->add_option("--mem-n-keys", m.n_keys,
                  "sub-keys per half: the table has n_keys² rows (0: the rule's)");
  sub->add_option("--mem-k-dim", m.k_dim, "query width n, even (0: the rule's)");
  sub->add_option("--mem-k", m.k, "rows selected per head, ≤ n_keys (0: the rule's)");
  sub->add_option("--mem-value-dim", m.value_dim,
                  "memory+'s value width v (memory needs v = d-model; 0: the rule's)");
  sub->add_flag("--mem-qk-norm", m.qk_norm,
                "RMS-normalise each query half and each sub-key before the search");
  // ---- the knowledge base ----
  sub->add_option("--facts", c.data.facts, "facts (≤ subjects × relations)")->capture_default_str();
  sub->add_option("--names", c.data.names, "name tokens (a subject is a pair of them)")
      ->capture_default_str();
  sub->add_option("--subjects", c.data.subjects, "subjects (≤ names²)")->capture_default_str();
  sub->add_option("--relations", c.data.relations, "relations")->capture_default_str();
  sub->add_option("--objects", c.data.objects, "objects")->capture_default_str();
  sub->add_option("--data-seed", c.data.seed, "the seed of the knowledge base")
      ->capture_default_str();
  // ---- checkpoints and outputs ----
  auto* dir = sub->add_option(
      "--checkpoint-dir", o->checkpoint_dir,
      "folder of the checkpoints: checkpoint.safetensors (the newest, written atomically) and "
      "checkpoint.prev.safetensors (the one before)");
  sub->add_option("--checkpoint-every", o->checkpoint_every,
                  "save a checkpoint every K steps (and after the last); 0: after the last only")
      ->needs(dir)
      ->capture_default_str();
  sub->add_flag("--resume", o->resume,
                "continue from the newest checkpoint in --checkpoint-dir that verifies (checksum, "
                "same config but for --backend and --eval-every); none there: start at step 0")
      ->needs(dir);
  sub->add_option("--memory-parallel", c.memory_parallel,
                  "ranks of a memory-parallel group, run as mpirun -np P memlayers train "
                  "--memory-parallel P: each trains on its share of every batch, the value table "
                  "split along its columns (memory, memory+, dense; no checkpoints yet)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 20))
      ->capture_default_str();
  sub->add_option("--json", o->json, "write the final summary as JSON to FILE");
  sub->add_option("--markdown", o->markdown, "write the final summary as markdown to FILE");
  sub->add_flag("--quiet", o->quiet, "no progress or summary on stderr (errors still)");
  return [o, sub] {
    o->batch_given = sub->count("--batch") > 0;
    run(*o);
  };
}

MEMLAYERS_SUBCOMMAND("train", setup);

}  // namespace
}  // namespace memlayers::cli::train_command
