// Checks shared by the ops' validate(): each returns "" when the field is acceptable, else a
// message naming the field, its value and what is accepted.
#pragma once
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <string>

#include "common/dtype.h"
#include "common/error.h"

namespace memlayers {

inline std::string check_dtype(const char* field, DType t, std::initializer_list<DType> accepted) {
  std::string list;
  for (DType a : accepted) {
    if (a == t) return {};
    list += (list.empty() ? "" : ", ") + std::string(to_string(a));
  }
  return fmt::format("{} = {}: accepted {}", field, to_string(t), list);
}

// `required`: null is an error; otherwise null means "not requested" and is fine.
inline std::string check_pointer(const char* field, const void* p, std::size_t align, bool required,
                                 const char* what) {
  if (!p) return required ? fmt::format("{} is null: {} is required", field, what) : std::string();
  auto addr = reinterpret_cast<std::uintptr_t>(p);
  if (addr % align != 0)
    return fmt::format("{} = {} is misaligned: accepted pointers aligned to {} bytes ({})", field,
                       p, align, what);
  return {};
}

}  // namespace memlayers
