// Stages of a composed op (the memory layer's projection, search, softmax, bag, gating and their
// backward): each is wrapped in a StageScope, which opens an NVTX range "<op>.<stage>" for
// Nsight and, when a StageClock is installed, tells the clock where the stage starts and ends.
// bench_memory_layer installs a clock (host steady clock or device events, through the backend's
// Timing) to break the time down by stage; with none installed a scope costs one NVTX push/pop.
// A stage may be entered several times in one call (the backward's gating work comes in pieces):
// the clock sums them.
#pragma once
#include <optional>
#include <string>
#include <string_view>

#include "common/backend.h"

namespace memlayers {

class StageClock {
 public:
  virtual ~StageClock() = default;
  virtual void enter(std::string_view stage, Stream stream) = 0;
  virtual void leave(std::string_view stage, Stream stream) = 0;
};

// The installed clock (null: none, the default). Install between launches, not during one.
StageClock* stage_clock();
void set_stage_clock(StageClock* clock);

class StageScope {
 public:
  StageScope(std::string_view op, std::string_view stage, Stream stream);
  ~StageScope();
  StageScope(const StageScope&) = delete;
  StageScope& operator=(const StageScope&) = delete;

 private:
  NvtxRange range_;
  std::string_view stage_;
  Stream stream_;
  StageClock* clock_;
};

// One StageScope at a time, for code that runs its stages in sequence: to(stage) closes the
// open scope (if any) and opens the next; done() or the destructor closes the last.
class StageSequence {
 public:
  StageSequence(std::string_view op, Stream stream) : op_(op), stream_(stream) {}
  void to(std::string_view stage) {
    open_.reset();
    open_.emplace(op_, stage, stream_);
  }
  void done() { open_.reset(); }

 private:
  std::string_view op_;
  Stream stream_;
  std::optional<StageScope> open_;
};

}  // namespace memlayers
