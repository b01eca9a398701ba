// Element types that cross the Params structs, with their sizes and names.
#pragma once
#include <cstddef>
#include <optional>
#include <string_view>

namespace memlayers {

enum class DType { f32, bf16, f16, i32, i64 };

constexpr std::size_t dtype_size(DType t) {
  switch (t) {
    case DType::f32:
      return 4;
    case DType::bf16:
      return 2;
    case DType::f16:
      return 2;
    case DType::i32:
      return 4;
    case DType::i64:
      return 8;
  }
  return 0;
}

constexpr std::string_view to_string(DType t) {
  switch (t) {
    case DType::f32:
      return "fp32";
    case DType::bf16:
      return "bf16";
    case DType::f16:
      return "fp16";
    case DType::i32:
      return "int32";
    case DType::i64:
      return "int64";
  }
  return "?";
}

constexpr std::optional<DType> parse_dtype(std::string_view s) {
  for (DType t : {DType::f32, DType::bf16, DType::f16, DType::i32, DType::i64})
    if (s == to_string(t)) return t;
  return std::nullopt;
}

}  // namespace memlayers
