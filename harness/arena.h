// Buffers in a backend's memory (an Ops table's `memory`), released together with the arena: the
// activations and scratch of the model and of its memory and MoE blocks.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "common/backend.h"

namespace memlayers::harness {

class Arena {
 public:
  explicit Arena(const Memory& mem) : mem_(&mem) {}
  ~Arena() {
    for (void* p : held_) mem_->release(p);
  }
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;

  // n elements of T (uninitialised), alive as long as the arena.
  template <class T>
  T* alloc(int64_t n) {
    held_.reserve(held_.size() + 1);  // so that push_back cannot throw after the allocation
    void* p = mem_->alloc(n > 0 ? static_cast<std::size_t>(n) * sizeof(T) : 1);
    held_.push_back(p);
    return static_cast<T*>(p);
  }
  float* floats(int64_t n) { return alloc<float>(n); }

 private:
  const Memory* mem_;
  std::vector<void*> held_;
};

}  // namespace memlayers::harness
