#include "common/stages.h"

#include <atomic>

#include <fmt/format.h>

namespace memlayers {

namespace {
std::atomic<StageClock*> installed{nullptr};
}  // namespace

StageClock* stage_clock() { return installed.load(std::memory_order_acquire); }
void set_stage_clock(StageClock* clock) { installed.store(clock, std::memory_order_release); }

StageScope::StageScope(std::string_view op, std::string_view stage, Stream stream)
    : range_(fmt::format("{}.{}", op, stage)),
      stage_(stage),
      stream_(stream),
      clock_(stage_clock()) {
  if (clock_) clock_->enter(stage_, stream_);
}

StageScope::~StageScope() {
  if (clock_) clock_->leave(stage_, stream_);
}

}  // namespace memlayers
