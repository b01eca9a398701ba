// The variant registry: every kernel variant is registered once, as {name, backend, launch,
// supports}, and tests, benchmarks and the CLI find it here without further wiring.
//
// An op is a struct with
//   using Params = ...;                                   plain pointers and 64-bit sizes
//   static constexpr const char* name = "embbag_fwd";
//   static std::string validate(const Params&);           "" or what is wrong with the input
//   static double bytes_moved(const Params&);             the op's floor, declared once
//   static double flops(const Params&);
#pragma once
#include <algorithm>
#include <functional>
#include <string>
#include <vector>

#include "backend.h"
#include "error.h"

namespace memlayers {

template <class Params>
struct Variant {
  std::string name;  // "v2_warp_per_bag"
  Backend backend;
  std::function<void(const Params&, Stream)> launch;
  // "" when the variant handles these params, else why not ("dim must be a multiple of 4").
  std::function<std::string(const Params&)> supports = [](const Params&) { return std::string(); };
  std::string summary;          // one line: what it does, what it targets
  bool deterministic = true;    // bitwise identical results across runs
  bool expected_wrong = false;  // planted bug: the checker must reject it (tests only)
};

// Type-erased view of every registered variant, for `memlayers info` and reports.
struct VariantInfo {
  std::string op, name;
  Backend backend;
  std::string summary;
  bool deterministic;
};
std::vector<VariantInfo>& all_variants();
// Ops known to the binary, even those with no variant yet.
std::vector<std::string>& all_ops();
bool register_op_name(const std::string& op);

template <class Op>
class Registry {
 public:
  using Params = typename Op::Params;

  static std::vector<Variant<Params>>& variants() {
    static std::vector<Variant<Params>> v;
    return v;
  }

  static bool add(Variant<Params> v) {
    register_op_name(Op::name);
    for (const auto& e : variants())
      if (e.name == v.name && e.backend == v.backend)
        fail("{}: variant '{}' on backend {} registered twice", Op::name, v.name,
             to_string(v.backend));
    if (!v.expected_wrong)
      all_variants().push_back({Op::name, v.name, v.backend, v.summary, v.deterministic});
    variants().push_back(std::move(v));
    std::stable_sort(variants().begin(), variants().end(), [](const auto& a, const auto& b) {
      return a.backend != b.backend ? a.backend < b.backend : a.name < b.name;
    });
    return true;
  }

  // The variants of one backend (or all), planted-bug variants excluded unless asked for.
  static std::vector<const Variant<Params>*> of(std::optional<Backend> backend = std::nullopt,
                                                bool include_wrong = false) {
    std::vector<const Variant<Params>*> out;
    for (const auto& v : variants())
      if ((!backend || v.backend == *backend) && (include_wrong || !v.expected_wrong))
        out.push_back(&v);
    return out;
  }

  static const Variant<Params>& find(Backend backend, const std::string& name) {
    std::string known;
    for (const auto& v : variants()) {
      if (v.backend != backend || v.expected_wrong) continue;
      if (v.name == name) return v;
      known += (known.empty() ? "" : ", ") + v.name;
    }
    fail("{}: no variant '{}' on backend {}; registered there: {}", Op::name, name,
         to_string(backend), known.empty() ? "none" : known);
  }

  // Validates the input and the variant's support, then launches. Throws memlayers::Error.
  static void run(const Variant<Params>& v, const Params& p, Stream stream = nullptr) {
    if (std::string why = Op::validate(p); !why.empty()) fail("{}: {}", Op::name, why);
    if (std::string why = v.supports(p); !why.empty())
      fail("{}/{} does not support this input: {}", Op::name, v.name, why);
    NvtxRange range(std::string(Op::name) + "/" + v.name);
    v.launch(p, stream);
  }
};

#define MEMLAYERS_CONCAT_(a, b) a##b
#define MEMLAYERS_CONCAT(a, b) MEMLAYERS_CONCAT_(a, b)
// MEMLAYERS_REGISTER(Op, Variant<Op::Params>{...}); at namespace scope in the variant's file.
#define MEMLAYERS_REGISTER(Op, ...)                                                      \
  [[maybe_unused]] static const bool MEMLAYERS_CONCAT(memlayers_registered_, __LINE__) = \
      ::memlayers::Registry<Op>::add(__VA_ARGS__)

}  // namespace memlayers
