// simt's device memory: host memory standing for a GPU's, which the host cannot touch.
//
// On a GPU, host code that dereferences a device pointer faults; under simt it would silently
// work, so a launcher that reads a kernel's output on the host (or writes its input) passes every
// simt test and crashes on the first GPU run. simt therefore keeps the list of its device
// allocations, and under AddressSanitizer they are poisoned whenever no kernel runs and no
// DeviceAccess is open: a host read or write of device memory is then reported as a
// use-after-poison, with the stack of the access, where a GPU would have faulted.
//
// Who opens a DeviceAccess: simt's launches (for the kernel's threads), the backend's copies
// between host and device memory, host code that stands in for a device-side library call under
// simt (CUB's device-wide sort and scan, NCCL's collectives: the MPI and single-rank
// communicators), and a test that inspects device memory as a kernel would. Nothing else should.
//
// The other direction: a kernel handed a host pointer, which a GPU would also fault on. Every
// pointer argument of a simt launch must point into device memory or host memory registered for
// the device (HostRegistration, as cudaHostRegister); any other is refused before the kernel
// runs, in every build. Pointers inside a struct argument are found field by field (fields.h); an
// argument that could hide one (a lambda's captures) does not compile.
//
// Allocations are 256-byte aligned (cudaMalloc's guarantee), of exactly the size asked for (so
// AddressSanitizer sees a kernel's overrun at the first byte past the end), and born garbage:
// every byte kGarbageByte (NaN as fp32 and bf16, -1 as integers), as a GPU's allocation holds
// stale data, so a kernel that reads what nobody wrote fails under simt instead of reading the
// zeros of the OS's fresh pages. Without AddressSanitizer the poisoning is a no-op.
//
// No CUDA names and no macros here: host code (the backend's memory) includes this header alone.
#pragma once
#include <cstddef>
#include <string>

namespace simt {

// The byte every new device allocation and every block's dynamic shared memory starts as.
inline constexpr unsigned char kGarbageByte = 0xFF;

// A new device allocation of `bytes` (at least 1), garbage; throws std::bad_alloc when the host
// is out of memory.
void* device_malloc(std::size_t bytes);
// Frees an allocation of device_malloc; null is ignored.
void device_free(void* p);

// While one is open (on any thread), device memory may be read and written by the host: open
// it around a copy or a host stand-in for device work, never around a launcher's own logic.
// Nests.
class DeviceAccess {
 public:
  DeviceAccess();
  ~DeviceAccess();
  DeviceAccess(const DeviceAccess&) = delete;
  DeviceAccess& operator=(const DeviceAccess&) = delete;
};

// Host memory that kernels may reach, as cudaHostRegister(..., cudaHostRegisterMapped) makes it
// on a GPU, for the registration's lifetime; the host keeps its own access. simt's launches
// refuse a pointer argument that is neither device memory nor registered (launch_pointer_problem).
class HostRegistration {
 public:
  HostRegistration(const void* p, std::size_t bytes);
  ~HostRegistration();
  HostRegistration(const HostRegistration&) = delete;
  HostRegistration& operator=(const HostRegistration&) = delete;

 private:
  const void* p_;
};

// "" when a kernel may be handed `p`: null, or an address in a live device allocation or
// registered host memory, up to one past its end; otherwise what it is not.
std::string launch_pointer_problem(const void* p);

}  // namespace simt
