#include "registry.h"

#include <nvtx3/nvToolsExt.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>

#include <sys/mman.h>

namespace memlayers {

std::vector<VariantInfo>& all_variants() {
  static std::vector<VariantInfo> v;
  return v;
}

std::vector<std::string>& all_ops() {
  static std::vector<std::string> v;
  return v;
}

bool register_op_name(const std::string& op) {
  auto& ops = all_ops();
  if (std::find(ops.begin(), ops.end(), op) == ops.end()) ops.push_back(op);
  return true;
}

// ---- host memory ----
namespace {
// Large buffers (embedding tables, score matrices) are 2 MiB aligned and advised onto transparent
// huge pages: a gather of random 4 KiB rows from a multi-GiB table otherwise misses the TLB on
// nearly every row (one 4 KiB page each), and the page walks cost a measurable share of the
// bandwidth. Where THP is off or unsupported the advice is a no-op.
constexpr std::size_t kHugePage = std::size_t(2) << 20;

void* host_alloc(std::size_t bytes) {
  // 64-byte alignment at least: every vector width a kernel may load with.
  const std::size_t align = bytes >= 2 * kHugePage ? kHugePage : 64;
  const std::size_t size = (bytes + 64 + align - 1) / align * align;
  void* p = std::aligned_alloc(align, size);
  if (!p) fail("host allocation of {} bytes failed", bytes);
#ifdef MADV_HUGEPAGE
  if (align == kHugePage) madvise(p, size, MADV_HUGEPAGE);
#endif
  return p;
}
void host_release(void* p) { std::free(p); }
void host_synchronize() {}

void host_copy(void* dst, const void* src, std::size_t bytes) {
  if (bytes) std::memcpy(dst, src, bytes);
}
void host_fill(void* dst, int value, std::size_t bytes) {
  if (bytes) std::memset(dst, value, bytes);
}
void host_copy_2d(void* dst, std::size_t dst_pitch, const void* src, std::size_t src_pitch,
                  std::size_t row_bytes, std::size_t rows) {
  if (row_bytes == 0) return;
  for (std::size_t i = 0; i < rows; ++i)
    std::memcpy(static_cast<char*>(dst) + i * dst_pitch,
                static_cast<const char*>(src) + i * src_pitch, row_bytes);
}
}  // namespace

const Memory& host_memory() {
  static const Memory m{host_alloc, host_release,     host_copy, host_copy,
                        host_fill,  host_synchronize, host_copy, host_copy_2d};
  return m;
}

const Timing& host_timing() {
  using Clock = std::chrono::steady_clock;
  static const Timing t{
      [] { return static_cast<void*>(new Clock::time_point()); },
      [](void* e) { delete static_cast<Clock::time_point*>(e); },
      [](void* e, Stream) { *static_cast<Clock::time_point*>(e) = Clock::now(); },
      [](void* a, void* b) {
        return std::chrono::duration<double, std::milli>(*static_cast<Clock::time_point*>(b) -
                                                         *static_cast<Clock::time_point*>(a))
            .count();
      }};
  return t;
}

NvtxRange::NvtxRange(const std::string& name) { nvtxRangePushA(name.c_str()); }
NvtxRange::~NvtxRange() { nvtxRangePop(); }

namespace {
std::map<Backend, BackendInfo>& backends() {
  static std::map<Backend, BackendInfo> m = [] {
    std::map<Backend, BackendInfo> init;
    auto ok = [] { return std::string(); };
    init[Backend::reference] = {Backend::reference, true, ok, &host_memory(), &host_timing()};
    init[Backend::cpu] = {Backend::cpu, true, ok, &host_memory(), &host_timing()};
    init[Backend::simt] = {Backend::simt, false,
                           [] { return std::string("built without simt's kernels"); }, nullptr,
                           nullptr};
    init[Backend::cuda] = {Backend::cuda, false,
                           [] { return std::string("built without CUDA (nvcc was not found)"); },
                           nullptr, nullptr};
    return init;
  }();
  return m;
}
}  // namespace

bool register_backend(BackendInfo info) {
  backends()[info.backend] = std::move(info);
  return true;
}

const BackendInfo& backend_info(Backend b) { return backends().at(b); }

std::string usable(Backend b) {
  static std::mutex mu;
  static std::map<Backend, std::string> cache;
  std::lock_guard lock(mu);
  auto it = cache.find(b);
  if (it == cache.end()) it = cache.emplace(b, backend_info(b).probe()).first;
  return it->second;
}

}  // namespace memlayers
