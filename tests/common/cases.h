// Naming and comparison helpers shared by the op test sweeps: short dtype names and variant labels
// for test names, and bytewise equality for the determinism tests.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "common/backend.h"
#include "common/dtype.h"
#include "common/registry.h"

namespace memlayers::test {

inline std::string short_name(DType t) {
  switch (t) {
    case DType::f32:
      return "f32";
    case DType::bf16:
      return "bf16";
    case DType::f16:
      return "f16";
    case DType::i32:
      return "i32";
    case DType::i64:
      return "i64";
  }
  return "x";
}

// "cpu_v2_hwy_threads"; the reference is just "reference".
inline std::string variant_label(Backend b, const std::string& name) {
  return name == to_string(b) ? name : std::string(to_string(b)) + "_" + name;
}

// Bytes, not values: NaN != NaN, and -0 == +0 would hide a difference.
template <class T>
bool same_bytes(const std::vector<T>& a, const std::vector<T>& b, std::size_t count = SIZE_MAX) {
  count = std::min({count, a.size(), b.size()});
  if (a.size() != b.size()) return false;
  return count == 0 || std::memcmp(a.data(), b.data(), count * sizeof(T)) == 0;
}

// Sanitizer builds (tools/test.sh) run thinner simt sweeps where a test says so: simt runs CUDA
// kernels thousands of times slower than a GPU, and the sanitizers multiply its cost.
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
inline constexpr bool kSanitized = true;
#else
inline constexpr bool kSanitized = false;
#endif

// The ThreadSanitizer build (tools/test.sh runs its simt- and threads-labelled tests) looks for
// races: the sweeps there leave out what runs on one thread (the reference backend).
#if defined(__SANITIZE_THREAD__)
inline constexpr bool kThreadSanitizer = true;
#else
inline constexpr bool kThreadSanitizer = false;
#endif
// Under a sanitizer a determinism test runs its variant once, not twice to compare the bytes: one
// run shows ASan any memory error and TSan any race, and the release run of the same test checks
// that two runs agree byte for byte.
inline constexpr bool kRunTwice = !kSanitized;

// The deterministic ones among `variants`, with their labels (determinism test parameters).
template <class V>
std::vector<std::pair<const V*, std::string>> deterministic_variants(
    std::vector<const V*> variants) {
  std::vector<std::pair<const V*, std::string>> out;
  for (const V* v : variants)
    if (v->deterministic) out.emplace_back(v, variant_label(v->backend, v->name));
  return out;
}

// The op's planted-bug variant on the cpu backend (registered with expected_wrong by its test).
template <class Op>
const Variant<typename Op::Params>& planted() {
  for (const auto* v : Registry<Op>::of(Backend::cpu, /*include_wrong=*/true))
    if (v->expected_wrong) return *v;
  throw Error("no planted variant registered");
}

}  // namespace memlayers::test
