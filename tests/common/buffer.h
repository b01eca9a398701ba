// Test buffers in a backend's memory (host for reference/cpu/simt, the GPU for cuda), with the
// poison every output gets before a run: all-ones bytes, which read as NaN in fp32 and bf16 and as
// -1 in integers, so an element a kernel forgot to write fails the comparison.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "common/backend.h"

namespace memlayers::test {

inline constexpr int kPoisonByte = 0xFF;

class DeviceBuffer {
 public:
  DeviceBuffer(const Memory& mem, std::size_t bytes) : mem_(&mem), bytes_(bytes) {
    ptr_ = mem.alloc(bytes ? bytes : 1);
  }
  DeviceBuffer(const Memory& mem, const void* host, std::size_t bytes) : DeviceBuffer(mem, bytes) {
    mem_->to_device(ptr_, host, bytes);
  }
  template <class T>
  DeviceBuffer(const Memory& mem, const std::vector<T>& host)
      : DeviceBuffer(mem, host.data(), host.size() * sizeof(T)) {}
  ~DeviceBuffer() {
    if (ptr_) mem_->release(ptr_);
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void* get() const { return ptr_; }
  template <class T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }
  std::size_t bytes() const { return bytes_; }

  void poison() { mem_->fill_bytes(ptr_, kPoisonByte, bytes_); }

  std::vector<unsigned char> bytes_to_host() const {
    std::vector<unsigned char> out(bytes_);
    mem_->synchronize();
    mem_->to_host(out.data(), ptr_, bytes_);
    return out;
  }
  template <class T>
  std::vector<T> to_host() const {
    std::vector<T> out(bytes_ / sizeof(T));
    mem_->synchronize();
    mem_->to_host(out.data(), ptr_, out.size() * sizeof(T));
    return out;
  }

 private:
  const Memory* mem_;
  void* ptr_ = nullptr;
  std::size_t bytes_;
};

// True when every byte in [begin, end) of `bytes` still holds the poison (nothing wrote there).
inline bool still_poisoned(const std::vector<unsigned char>& bytes, std::size_t begin,
                           std::size_t end) {
  for (std::size_t i = begin; i < end; ++i)
    if (bytes[i] != kPoisonByte) return false;
  return true;
}

}  // namespace memlayers::test
