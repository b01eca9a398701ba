// Backends and their memory: how a test or benchmark allocates, fills and reads buffers for a
// variant without knowing whether they live on a GPU or in host memory.
#pragma once
#include <cstddef>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

#include "simt/memory.h"

namespace memlayers {

// reference: CPU, exact (fp64 accumulation). cpu: optimised CPU code. cuda: the GPU.
// simt: the same CUDA kernel source run on CPU threads, for correctness only.
enum class Backend { reference, cpu, cuda, simt };
inline constexpr Backend kAllBackends[] = {Backend::reference, Backend::cpu, Backend::cuda,
                                           Backend::simt};

constexpr std::string_view to_string(Backend b) {
  switch (b) {
    case Backend::reference:
      return "reference";
    case Backend::cpu:
      return "cpu";
    case Backend::cuda:
      return "cuda";
    case Backend::simt:
      return "simt";
  }
  return "?";
}

constexpr std::optional<Backend> parse_backend(std::string_view s) {
  for (Backend b : kAllBackends)
    if (s == to_string(b)) return b;
  return std::nullopt;
}

// A stream is a cudaStream_t on the GPU and ignored elsewhere.
using Stream = void*;

// Memory operations of a backend. Host backends use plain host memory.
struct Memory {
  void* (*alloc)(std::size_t bytes);
  void (*release)(void* p);
  void (*to_device)(void* dst, const void* src, std::size_t bytes);
  void (*to_host)(void* dst, const void* src, std::size_t bytes);
  void (*fill_bytes)(void* dst, int value, std::size_t bytes);
  void (*synchronize)();
  void (*copy_within)(void* dst, const void* src, std::size_t bytes);  // device to device
  // Device to device, 2-D: `rows` rows of `row_bytes` each, row i from src + i·src_pitch to
  // dst + i·dst_pitch (pitches in bytes, >= row_bytes): a column slice of a row-major matrix in
  // one call (cudaMemcpy2D on the GPU) rather than one copy per row.
  void (*copy_2d)(void* dst, std::size_t dst_pitch, const void* src, std::size_t src_pitch,
                  std::size_t row_bytes, std::size_t rows);
};

// Timing of a backend: CUDA events on the GPU, a steady clock on the host. An event is opaque.
struct Timing {
  void* (*event_create)();
  void (*event_destroy)(void* event);
  void (*event_record)(void* event, Stream stream);
  // Milliseconds between two recorded events; waits for `end` to complete.
  double (*elapsed_ms)(void* start, void* end);
};

struct BackendInfo {
  Backend backend;
  bool compiled = false;               // built into this binary
  std::function<std::string()> probe;  // "" when usable now, else why not (no GPU, ...)
  const Memory* memory = nullptr;
  const Timing* timing = nullptr;
};

// Host memory and timing, shared by reference, cpu and simt. simt's memory (simt/memory.h) is host
// memory that stands for a GPU's: new allocations are garbage (kGarbageByte everywhere, as a
// GPU's hold stale data), and under AddressSanitizer the host may touch it only through this
// table's copies, as on a GPU.
const Memory& host_memory();
const Memory& simt_memory();
const Timing& host_timing();
inline constexpr unsigned char kGarbageByte = simt::kGarbageByte;

// NVTX range "<op>/<variant>" around a launch, seen by Nsight; free when no tool is attached.
class NvtxRange {
 public:
  explicit NvtxRange(const std::string& name);
  ~NvtxRange();
  NvtxRange(const NvtxRange&) = delete;
  NvtxRange& operator=(const NvtxRange&) = delete;
};

// The backend's description; never null. `usable(b)` is "" or the reason it cannot run here.
const BackendInfo& backend_info(Backend b);
std::string usable(Backend b);
// Called once from the object file that implements a backend (the CUDA runtime registers itself).
bool register_backend(BackendInfo info);

}  // namespace memlayers
