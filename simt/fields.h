// The pointers a kernel argument carries, for simt's launch check (memory.h): a pointer argument is
// one, and a struct argument's are found field by field, without the struct listing them.
//
// C++20 has no reflection, so an aggregate's fields are reached as Boost.PFR reaches them (Debian's
// Boost 1.74, which simt's Boost.Context comes from, predates PFR): the number of fields is the
// most initializers the aggregate accepts, and a structured binding of that many names binds them.
// Two counts guard the first step. With bare initializers, brace elision lets a C array member
// take several; with braced ones, a member whose class has constructors takes none. A struct is
// walked only where both counts agree, so a miscount is never bound.
//
// for_each_pointer(arg, f) calls f(const void*) for every pointer it finds in:
//   - an object pointer;
//   - a type that lists its pointers with `device_pointers(const T&)`, found by argument-dependent
//     lookup (a range of const void*): the way for a class with constructors or private members;
//   - std::array, std::pair, std::tuple and C arrays: element by element;
//   - an aggregate of at most kMaxFields public fields: field by field, recursively.
// Anything else that could hold a pointer does not compile as a kernel argument: a lambda whose
// captures take a pointer's size or more, a class with constructors that lists nothing, an
// aggregate with more than kMaxFields fields or with a C array or a member with constructors (bf16)
// among them; such a type lists its pointers (an empty list where it has none). What remains are
// scalars and classes smaller than a pointer.
//
// No CUDA names and no macros here.
#pragma once
#include <cstddef>
#include <tuple>
#include <type_traits>
#include <utility>

namespace simt::detail {

inline constexpr std::size_t kMaxFields = 16;

// Converts to any field's type; named only in unevaluated requires-expressions.
struct AnyField {
  template <class U>
  operator U() const;
};
template <std::size_t>
using AnyFieldAt = AnyField;

template <class T, std::size_t... I>
constexpr bool accepts_bare(std::index_sequence<I...>) {
  return requires { T{AnyFieldAt<I>{}...}; };
}
template <class T, std::size_t... I>
constexpr bool accepts_braced(std::index_sequence<I...>) {
  return requires { T{{AnyFieldAt<I>{}}...}; };
}

// The most initializers (bare or braced) T accepts, up to kMaxFields + 1 ("too many to bind").
template <class T, bool kBraced, std::size_t N = 0>
constexpr std::size_t count_initializers() {
  constexpr auto more = std::make_index_sequence<N + 1>{};
  if constexpr (N > kMaxFields) {
    return N;
  } else if constexpr (kBraced ? accepts_braced<T>(more) : accepts_bare<T>(more)) {
    return count_initializers<T, kBraced, N + 1>();
  } else {
    return N;
  }
}

// T's number of fields where both counts agree and the walker binds that many; 0 otherwise.
template <class T>
constexpr std::size_t bindable_fields() {
  if constexpr (std::is_aggregate_v<T> && std::is_class_v<T>) {
    constexpr std::size_t bare = count_initializers<T, false>();
    return bare == count_initializers<T, true>() && bare <= kMaxFields ? bare : 0;
  } else {
    return 0;
  }
}

template <class F, class... X>
void each(F& f, const X&... x) {
  (f(x), ...);
}

// f(field) for each field of v, which has n = bindable_fields<T>() > 0 of them.
template <std::size_t n, class T, class F>
void visit_fields(const T& v, F& f) {
  static_assert(n >= 1 && n <= kMaxFields);
  // clang-format off
  if constexpr (n == 1) { const auto& [a] = v; each(f, a); }
  else if constexpr (n == 2) { const auto& [a, b] = v; each(f, a, b); }
  else if constexpr (n == 3) { const auto& [a, b, c] = v; each(f, a, b, c); }
  else if constexpr (n == 4) { const auto& [a, b, c, d] = v; each(f, a, b, c, d); }
  else if constexpr (n == 5) { const auto& [a, b, c, d, e] = v; each(f, a, b, c, d, e); }
  else if constexpr (n == 6) { const auto& [a, b, c, d, e, g] = v; each(f, a, b, c, d, e, g); }
  else if constexpr (n == 7) { const auto& [a, b, c, d, e, g, h] = v; each(f, a, b, c, d, e, g, h); }
  else if constexpr (n == 8) {
    const auto& [a, b, c, d, e, g, h, i] = v; each(f, a, b, c, d, e, g, h, i);
  } else if constexpr (n == 9) {
    const auto& [a, b, c, d, e, g, h, i, j] = v; each(f, a, b, c, d, e, g, h, i, j);
  } else if constexpr (n == 10) {
    const auto& [a, b, c, d, e, g, h, i, j, k] = v; each(f, a, b, c, d, e, g, h, i, j, k);
  } else if constexpr (n == 11) {
    const auto& [a, b, c, d, e, g, h, i, j, k, l] = v; each(f, a, b, c, d, e, g, h, i, j, k, l);
  } else if constexpr (n == 12) {
    const auto& [a, b, c, d, e, g, h, i, j, k, l, m] = v;
    each(f, a, b, c, d, e, g, h, i, j, k, l, m);
  } else if constexpr (n == 13) {
    const auto& [a, b, c, d, e, g, h, i, j, k, l, m, o] = v;
    each(f, a, b, c, d, e, g, h, i, j, k, l, m, o);
  } else if constexpr (n == 14) {
    const auto& [a, b, c, d, e, g, h, i, j, k, l, m, o, p] = v;
    each(f, a, b, c, d, e, g, h, i, j, k, l, m, o, p);
  } else if constexpr (n == 15) {
    const auto& [a, b, c, d, e, g, h, i, j, k, l, m, o, p, q] = v;
    each(f, a, b, c, d, e, g, h, i, j, k, l, m, o, p, q);
  } else {
    const auto& [a, b, c, d, e, g, h, i, j, k, l, m, o, p, q, r] = v;
    each(f, a, b, c, d, e, g, h, i, j, k, l, m, o, p, q, r);
  }
  // clang-format on
}

template <class T>
concept TupleLike = requires {
  std::tuple_size<T>::value;
};

template <class T, class F>
void for_each_pointer(const T& v, F& f) {
  if constexpr (std::is_pointer_v<T>) {
    if constexpr (std::is_object_v<std::remove_pointer_t<T>>)
      f(const_cast<const void*>(static_cast<const volatile void*>(v)));
  } else if constexpr (requires { device_pointers(v); }) {
    for (const void* p : device_pointers(v)) f(p);
  } else if constexpr (std::is_array_v<T>) {
    for (const auto& e : v) for_each_pointer(e, f);
  } else if constexpr (TupleLike<T>) {
    std::apply([&f](const auto&... e) { (for_each_pointer(e, f), ...); }, v);
  } else if constexpr (constexpr std::size_t n = bindable_fields<T>(); n > 0) {
    auto walk = [&f](const auto& field) { for_each_pointer(field, f); };
    visit_fields<n>(v, walk);
  } else {
    // What is left: a scalar, or a class too small to hold a pointer (bf16); a larger class
    // could hide one (a lambda's captures), so it does not compile.
    static_assert(
        !(std::is_class_v<T> || std::is_union_v<T>) || sizeof(T) < sizeof(void*),
        "simt cannot see the pointers of this kernel argument (or of a field of it): make "
        "it an aggregate of scalars, pointers and such aggregates, or declare "
        "device_pointers(const T&) next to it (simt/fields.h)");
  }
}

}  // namespace simt::detail
