// Training checkpoints (harness/README.md, Training): everything a run needs to continue
// bit-identically, in one safetensors file (kernels/common/safetensors.h).
//
// Tensors (all little-endian, fp32 unless noted):
//   params             (n)            the dense parameter buffer (harness/model.h ParamLayout)
//   adam.m, adam.v     (n)            its AdamW moments
//   values             (rows, dim)    the value table        } only when the model has one
//   values.adam.m/v    (rows, dim)    its sparse-Adam moments }
//   step               I64 (1)        optimiser steps taken (the schedule and bias corrections)
//   data_position      I64 (2)        (epoch, index): the next fact is order(epoch)[index]
// __metadata__:
//   format             kCheckpointFormat
//   config             the run's TrainConfig as JSON (harness/train.h to_json)
//   history            the evaluations so far, JSON [[step, loss, accuracy, train_loss], ...]
//                      (a non-finite number is null)
//   checksums          JSON {tensor: "0x<FNV-1a 64 of its bytes>"} for every tensor, and
//                      "__metadata__" for format, config and history (each followed by a 0 byte)
// A loaded file is verified before anything is used: every expected tensor present with its
// dtype and a consistent shape, every checksum equal, the config equal to the run's except the
// fields that may differ (a different backend, say): each failure is an error naming the file and
// what is wrong.
#pragma once
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace memlayers::harness {

inline constexpr const char* kCheckpointFormat = "memlayers-train-checkpoint/1";

// One evaluation over all facts, after `step` optimiser steps.
struct EvalPoint {
  int64_t step = 0;
  double loss = 0;        // mean object loss over every fact
  double accuracy = 0;    // exact-match fraction over every fact
  double train_loss = 0;  // the loss of the last training batch before it
};

// A run's state in host memory.
struct TrainState {
  int64_t step = 0;
  int64_t epoch = 0, index = 0;  // the data position
  std::vector<float> params, m, v;
  int64_t value_rows = 0, value_dim = 0;  // 0 × 0: no value table, and the three below empty
  std::vector<float> values, values_m, values_v;
  std::vector<EvalPoint> history;
};

// FNV-1a, 64-bit: offset basis 0xcbf29ce484222325, prime 0x100000001b3, one byte at a time.
inline constexpr uint64_t kFnv64Offset = 0xcbf29ce484222325ull;
uint64_t fnv1a64(const void* data, std::size_t n, uint64_t h = kFnv64Offset);

// <dir>/checkpoint.safetensors and <dir>/checkpoint.prev.safetensors.
std::string checkpoint_path(const std::string& dir);
std::string previous_checkpoint_path(const std::string& dir);

// Writes `s` with `config_json` to `path` atomically (safetensors::save: temporary file, fsync,
// rename): path holds either its old content or the complete new file.
void save_checkpoint(const std::string& path, const std::string& config_json, const TrainState& s);

// Reads and verifies `path` against the run's `config_json`. `may_differ` names the config's
// fields (dotted paths into its JSON, e.g. "backend") allowed to differ. Throws memlayers::Error
// naming the file and the first problem.
TrainState load_checkpoint(const std::string& path, const std::string& config_json,
                           const std::vector<std::string>& may_differ);

// Saves into `dir` (created if missing) keeping the previous checkpoint: with `rotate`, an
// existing checkpoint.safetensors is first renamed to checkpoint.prev.safetensors (replacing the
// older one), then the new one is saved atomically, so a failure at any point leaves at least one
// complete file. Without `rotate` checkpoint.prev.safetensors is left as it is: the caller's
// choice when checkpoint.safetensors is the file that failed to verify and prev the good one.
// Returns the path written.
std::string save_checkpoint_in(const std::string& dir, const std::string& config_json,
                               const TrainState& s, bool rotate = true);

struct Resumed {
  std::string path;  // the file loaded
  TrainState state;
  std::string skipped;  // why the newer file was refused, when the previous one was loaded
};

// The newest checkpoint of `dir` that verifies: checkpoint.safetensors, else
// checkpoint.prev.safetensors. nullopt when neither exists; throws naming each file's problem
// when files exist but none verifies.
std::optional<Resumed> load_newest_checkpoint(const std::string& dir,
                                              const std::string& config_json,
                                              const std::vector<std::string>& may_differ);

}  // namespace memlayers::harness
