// Host buffers a test hands straight to simt's kernels, registered for the device as
// cudaHostRegister registers host memory on a GPU (simt/memory.h): simt refuses a launch given
// any other host pointer, since a GPU would fault on it. The registrations end with the object;
// register a vector after its last resize. Harmless for the host backends.
#pragma once
#include <cstddef>
#include <deque>
#include <vector>

#include "simt/memory.h"

namespace memlayers::test {

class MappedHost {
 public:
  template <class... T>
  explicit MappedHost(const std::vector<T>&... v) {
    (add(v), ...);
  }
  template <class T>
  void add(const std::vector<T>& v) {
    add(v.data(), v.size() * sizeof(T));
  }
  template <class T>
  void add_object(const T* p) {
    add(p, sizeof(T));
  }
  void add(const void* p, std::size_t bytes) {
    if (p && bytes) regs_.emplace_back(p, bytes);
  }

 private:
  std::deque<::simt::HostRegistration> regs_;  // ::simt: memlayers has its own simt namespace
};

}  // namespace memlayers::test
