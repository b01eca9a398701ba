// The simt backend's entry: its memory stands for a GPU's (simt/memory.h). New allocations hold
// garbage, as a stream-ordered pool hands back a buffer's last contents, so code that reads what
// nothing wrote fails under simt instead of reading the zeros of the OS's fresh pages; and under
// AddressSanitizer the host reaches the memory only through these copies, which open a
// simt::DeviceAccess as a cudaMemcpy reaches device memory. Timing is the host's clock.
#include <cstddef>

#include "common/backend.h"
#include "simt/memory.h"

namespace memlayers {
namespace {

// host_memory()'s operation `op`, performed with device memory in reach.
template <auto Op, class... Args>
void as_device(Args... args) {
  simt::DeviceAccess access;
  (host_memory().*Op)(args...);
}

void simt_synchronize() {}  // kernels and copies are synchronous under simt

}  // namespace

const Memory& simt_memory() {
  static const Memory m{simt::device_malloc,
                        simt::device_free,
                        as_device<&Memory::to_device, void*, const void*, std::size_t>,
                        as_device<&Memory::to_host, void*, const void*, std::size_t>,
                        as_device<&Memory::fill_bytes, void*, int, std::size_t>,
                        simt_synchronize,
                        as_device<&Memory::copy_within, void*, const void*, std::size_t>,
                        as_device<&Memory::copy_2d, void*, std::size_t, const void*, std::size_t,
                                  std::size_t, std::size_t>};
  return m;
}

namespace {
[[maybe_unused]] const bool registered = register_backend(
    {Backend::simt, true, [] { return std::string(); }, &simt_memory(), &host_timing()});
}  // namespace

}  // namespace memlayers
