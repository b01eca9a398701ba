// What the op subcommands (`memlayers embbag`, `memlayers pk-topk`) share: a buffer in the
// backend's memory, naming an input file in errors, cross-file shape checks, the variant chooser
// and a single timed run.
#pragma once
#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <CLI/CLI.hpp>

#include "common/backend.h"
#include "common/error.h"
#include "common/registry.h"
#include "npy/npy.h"

namespace memlayers::cli {

// ---- buffers on the backend ----

// A buffer in the backend's memory, released however the run ends.
class Buffer {
 public:
  Buffer(const Memory& m, std::size_t bytes)
      : m_(&m), bytes_(bytes), p_(m.alloc(std::max<std::size_t>(bytes, 1))) {}
  ~Buffer() { m_->release(p_); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;

  void* get() const { return p_; }
  template <class T>
  T* as() const {
    return static_cast<T*>(p_);
  }
  void upload(const void* src) const { m_->to_device(p_, src, bytes_); }
  template <class T>
  std::vector<T> download() const {
    std::vector<T> host(bytes_ / sizeof(T));
    m_->synchronize();
    m_->to_host(host.data(), p_, bytes_);
    return host;
  }

 private:
  const Memory* m_;
  std::size_t bytes_;
  void* p_;
};

inline std::unique_ptr<Buffer> upload(const Memory& m, const void* src, std::size_t bytes) {
  auto b = std::make_unique<Buffer>(m, bytes);
  b->upload(src);
  return b;
}

// ---- options ----

// --backend (reference, cpu, cuda, simt) and --variant, as every op subcommand takes them.
inline void add_backend_and_variant(CLI::App* sub, std::string* backend, std::string* variant) {
  sub->add_option("--backend", *backend, "where to run")
      ->check(CLI::IsMember({"reference", "cpu", "cuda", "simt"}))
      ->capture_default_str();
  sub->add_option("--variant", *variant,
                  "variant name (see 'memlayers info'); default: the backend's first variant, in "
                  "name order, that supports the input. With --backward it names the backward "
                  "variant");
}

// ---- inputs ----

inline std::string label(const std::string& flag, const std::string& path) {
  return fmt::format("{} ('{}')", flag, path);  // as npy::read names a file
}

// Shape agreement across files, with what the other file fixed: npy::check only knows one file.
inline void require_shape(const npy::Array& a, const std::string& flag, const std::string& path,
                          const std::vector<std::int64_t>& want, const std::string& why) {
  if (a.shape == want) return;
  fail("{}: shape {} does not match the expected ({}): {}", label(flag, path), a.shape_string(),
       fmt::join(want, ", "), why);
}

// ---- running a variant ----

// The named variant, or the backend's first registered one (in name order) that supports `p`.
template <class Op>
const Variant<typename Op::Params>& choose(Backend backend, const std::string& name,
                                           const typename Op::Params& p) {
  if (!name.empty()) return Registry<Op>::find(backend, name);
  std::string reasons;
  for (const auto* v : Registry<Op>::of(backend)) {
    const std::string why = v->supports(p);
    if (why.empty()) return *v;
    reasons += fmt::format("; {}: {}", v->name, why);
  }
  fail("{}: no variant on backend {} supports this input{}", Op::name, to_string(backend),
       reasons.empty() ? std::string(" (none is registered there)") : reasons);
}

// Runs the variant once between two events of the backend's clock; milliseconds, or -1 when the
// backend has no clock.
template <class Op>
double timed_run(Backend backend, const Variant<typename Op::Params>& v,
                 const typename Op::Params& p) {
  const Timing* t = backend_info(backend).timing;
  if (!t) {
    Registry<Op>::run(v, p);
    return -1;
  }
  void* start = t->event_create();
  void* end = t->event_create();
  try {
    t->event_record(start, nullptr);
    Registry<Op>::run(v, p);
    t->event_record(end, nullptr);
    const double ms = t->elapsed_ms(start, end);
    t->event_destroy(start);
    t->event_destroy(end);
    return ms;
  } catch (...) {
    t->event_destroy(start);
    t->event_destroy(end);
    throw;
  }
}

// "1.234 ms", or "untimed" for timed_run's -1.
inline std::string ms_text(double ms) { return ms < 0 ? "untimed" : fmt::format("{:.3f} ms", ms); }

}  // namespace memlayers::cli
