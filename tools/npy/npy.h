// .npy files in and out: the format NumPy's np.save writes (versions 1.0 and 2.0), little-endian,
// C order, and only the element types the kernels take from a file: float32, int32, int64.
// bf16 tensors travel as float32 (see convert.h); float64 is refused rather than narrowed behind
// the caller's back, so a precision loss is always the user's explicit choice.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "common/dtype.h"
#include "common/error.h"

namespace memlayers::npy {

// The dtype a C++ element type is stored as: float -> f32, int32_t -> i32, int64_t -> i64.
template <class T>
constexpr DType dtype_of() {
  if constexpr (std::is_same_v<T, float>)
    return DType::f32;
  else if constexpr (std::is_same_v<T, std::int32_t>)
    return DType::i32;
  else if constexpr (std::is_same_v<T, std::int64_t>)
    return DType::i64;
  else
    static_assert(!sizeof(T), "npy arrays hold float, int32_t or int64_t");
}

// A dense C-order array: element type, shape (empty for a 0-d scalar) and the raw bytes.
struct Array {
  DType dtype = DType::f32;
  std::vector<std::int64_t> shape;
  std::vector<std::byte> bytes;

  // Product of the dims; 1 for a 0-d array.
  std::int64_t numel() const;
  int rank() const { return static_cast<int>(shape.size()); }
  std::string shape_string() const;  // "(2, 3)", "()" or "(5,)" as NumPy prints it

  // An array of the given type and shape, every byte zero.
  static Array zeros(DType dtype, std::vector<std::int64_t> shape);

  template <class T>
  static Array from(std::vector<std::int64_t> shape, std::span<const T> values) {
    Array a = zeros(dtype_of<T>(), std::move(shape));
    MEMLAYERS_CHECK(static_cast<std::int64_t>(values.size()) == a.numel(),
                    "npy: {} values given for shape {} ({} elements)", values.size(),
                    a.shape_string(), a.numel());
    if (!values.empty()) std::memcpy(a.bytes.data(), values.data(), a.bytes.size());
    return a;
  }
  template <class T>
  static Array from(std::vector<std::int64_t> shape, const std::vector<T>& values) {
    return from<T>(std::move(shape), std::span<const T>(values));
  }

  // The elements as T; throws when T is not the array's dtype.
  template <class T>
  std::span<T> values() {
    check_type(dtype_of<T>());
    return {reinterpret_cast<T*>(bytes.data()), static_cast<std::size_t>(numel())};
  }
  template <class T>
  std::span<const T> values() const {
    check_type(dtype_of<T>());
    return {reinterpret_cast<const T*>(bytes.data()), static_cast<std::size_t>(numel())};
  }
  template <class T>
  std::vector<T> to_vector() const {
    auto v = values<T>();
    return {v.begin(), v.end()};
  }

 private:
  void check_type(DType want) const;
};

// What a caller needs from a file; anything left empty is not checked. `name` is how the messages
// call the argument ("--indices").
struct Expect {
  std::string name;
  std::vector<DType> dtypes;        // accepted element types
  int rank = -1;                    // -1: any rank
  std::vector<std::int64_t> shape;  // when given: exact shape, -1 for a dim that may be anything
};

// Reads a .npy file. Throws memlayers::Error naming the file and what is accepted when it is
// missing, not a .npy file, truncated, Fortran-ordered, big-endian or of a refused dtype.
Array read(const std::filesystem::path& path);
Array read(const std::filesystem::path& path, const Expect& expect);

// Checks an array against `expect`; `source` names where it came from in the message.
void check(const Array& a, const Expect& expect, const std::string& source);

// Writes a .npy file (version 1.0, or 2.0 when the header needs it) atomically: the data goes to a
// temporary file beside `path` that is renamed over it, so a reader never sees half a file.
void write(const std::filesystem::path& path, const Array& a);

// Everything before the data: magic, version, header length and the header dictionary NumPy
// writes for this array, space-padded so the data starts 64-byte aligned.
std::string encode_header(const Array& a);
// '<f4', '<i4', '<i8'.
std::string descr(DType dtype);

}  // namespace memlayers::npy
