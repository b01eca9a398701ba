// safetensors files (https://github.com/huggingface/safetensors): an 8-byte little-endian header
// length N, N bytes of JSON {"name": {"dtype": "F32", "shape": [2, 3], "data_offsets": [b, e]},
// ..., "__metadata__": {"key": "value"}}, then the raw little-endian data, offsets relative to its
// start. Dtypes F32, BF16, I32, I64. Loading checks everything a truncated or corrupt file can get
// wrong (header beyond the file, bad JSON, unknown dtype, offsets out of range, overlapping or
// leaving gaps, shape × dtype size not the byte range) and says which tensor and field; saving is
// atomic (a temporary file in the same folder, fsync, rename).
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "common/dtype.h"

namespace memlayers::safetensors {

// The header may not exceed this (as in the reference implementation): a corrupt length is
// refused before any allocation.
inline constexpr uint64_t kMaxHeaderBytes = 100'000'000;

struct Tensor {
  DType dtype = DType::f32;
  std::vector<int64_t> shape;
  std::vector<unsigned char> data;  // raw little-endian elements, numel·dtype_size bytes

  int64_t numel() const;
  template <class T>
  const T* as() const {
    return reinterpret_cast<const T*>(data.data());
  }
};

struct File {
  std::map<std::string, std::string> metadata;  // "__metadata__"
  std::map<std::string, Tensor> tensors;        // by name; saved in name order

  // The tensor, or an error naming it and the file's tensors.
  const Tensor& at(const std::string& name) const;
  bool has(const std::string& name) const { return tensors.count(name) != 0; }
};

// "F32", "BF16", "I32", "I64" (safetensors' names) and back; parse fails with the accepted list.
std::string_view dtype_name(DType t);
DType parse_dtype_name(std::string_view s);

// From bytes in memory; `what` names the source in errors (a path).
File parse(const unsigned char* bytes, std::size_t size, const std::string& what = "buffer");
File load(const std::string& path);

// The file's bytes: header padded with spaces to a multiple of 8 (so the data starts aligned),
// tensors in name order, contiguous.
std::vector<unsigned char> serialize(const File& f);
// Atomic: writes path + ".tmp.XXXXXX" in the same folder, fsyncs it, renames it over path, and
// fsyncs the folder; on any error the temporary file is removed and path is untouched.
void save(const std::string& path, const File& f);

// A tensor from host elements (fp32, bf16 bits, int32, int64 storage); checks the size.
Tensor make_tensor(DType t, std::vector<int64_t> shape, const void* data);

}  // namespace memlayers::safetensors
