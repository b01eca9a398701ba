#include "common/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <utility>

#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "common/error.h"

namespace memlayers::safetensors {

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian; this reader copies it as is");

namespace {

using nlohmann::json;
constexpr int64_t kMaxInt64 = std::numeric_limits<int64_t>::max();

// numel of a shape, or -1 when it overflows.
int64_t product(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t s : shape) {
    if (s != 0 && n > kMaxInt64 / s) return -1;
    n *= s;
  }
  return n;
}

std::string shape_string(const std::vector<int64_t>& shape) {
  return fmt::format("[{}]", fmt::join(shape, ", "));
}

// A non-negative JSON integer, or an error naming the tensor and field.
uint64_t unsigned_field(const json& v, const std::string& what, const std::string& name,
                        const char* field) {
  if (!v.is_number_unsigned())
    fail("{}: tensor '{}': {} holds {}: accepted non-negative integers", what, name, field,
         v.dump());
  return v.get<uint64_t>();
}

struct Entry {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  uint64_t begin, end;
};

Entry parse_entry(const std::string& what, const std::string& name, const json& v) {
  if (!v.is_object())
    fail("{}: tensor '{}' is {}: accepted an object with dtype, shape, data_offsets", what, name,
         v.dump());
  for (const char* field : {"dtype", "shape", "data_offsets"})
    if (!v.contains(field)) fail("{}: tensor '{}' has no '{}'", what, name, field);
  Entry e{name, DType::f32, {}, 0, 0};
  if (!v["dtype"].is_string())
    fail("{}: tensor '{}': dtype is {}: accepted a string (F32, BF16, I32, I64)", what, name,
         v["dtype"].dump());
  try {
    e.dtype = parse_dtype_name(v["dtype"].get<std::string>());
  } catch (const Error& err) {
    fail("{}: tensor '{}': {}", what, name, err.what());
  }
  const json& shape = v["shape"];
  if (!shape.is_array())
    fail("{}: tensor '{}': shape is {}: accepted an array of non-negative integers", what, name,
         shape.dump());
  for (const json& s : shape) {
    const uint64_t dim = unsigned_field(s, what, name, "shape");
    if (dim > uint64_t(kMaxInt64))
      fail("{}: tensor '{}': shape dimension {} overflows int64", what, name, dim);
    e.shape.push_back(int64_t(dim));
  }
  const json& off = v["data_offsets"];
  if (!off.is_array() || off.size() != 2)
    fail("{}: tensor '{}': data_offsets is {}: accepted [begin, end]", what, name, off.dump());
  e.begin = unsigned_field(off[0], what, name, "data_offsets");
  e.end = unsigned_field(off[1], what, name, "data_offsets");
  if (e.begin > e.end)
    fail("{}: tensor '{}': data_offsets [{}, {}] end before they begin", what, name, e.begin,
         e.end);
  const int64_t numel = product(e.shape);
  if (numel < 0 || uint64_t(numel) > uint64_t(kMaxInt64) / dtype_size(e.dtype))
    fail("{}: tensor '{}': shape {} overflows 64-bit sizes", what, name, shape_string(e.shape));
  const uint64_t bytes = uint64_t(numel) * dtype_size(e.dtype);
  if (bytes != e.end - e.begin)
    fail("{}: tensor '{}': shape {} of {} is {} bytes but data_offsets [{}, {}] hold {}", what,
         name, shape_string(e.shape), dtype_name(e.dtype), bytes, e.begin, e.end, e.end - e.begin);
  return e;
}

}  // namespace

int64_t Tensor::numel() const { return product(shape); }

const Tensor& File::at(const std::string& name) const {
  if (auto it = tensors.find(name); it != tensors.end()) return it->second;
  std::string names;
  for (const auto& [n, t] : tensors) names += (names.empty() ? "" : ", ") + n;
  fail("no tensor '{}'; the file holds: {}", name, names.empty() ? "none" : names);
}

std::string_view dtype_name(DType t) {
  switch (t) {
    case DType::f32:
      return "F32";
    case DType::bf16:
      return "BF16";
    case DType::i32:
      return "I32";
    case DType::i64:
      return "I64";
    case DType::f16:
      break;
  }
  fail("dtype {} cannot be stored: accepted fp32, bf16, int32, int64", to_string(t));
}

DType parse_dtype_name(std::string_view s) {
  for (DType t : {DType::f32, DType::bf16, DType::i32, DType::i64})
    if (s == dtype_name(t)) return t;
  fail("dtype '{}' is not supported: accepted F32, BF16, I32, I64", s);
}

File parse(const unsigned char* bytes, std::size_t size, const std::string& what) {
  if (size < 8)
    fail("{}: {} bytes: a safetensors file starts with an 8-byte header length", what, size);
  uint64_t n = 0;
  std::memcpy(&n, bytes, 8);
  if (n > kMaxHeaderBytes)
    fail("{}: header length {} exceeds the limit of {} bytes (corrupt or not safetensors)", what, n,
         kMaxHeaderBytes);
  if (n > size - 8)
    fail("{}: header length {} goes beyond the file ({} bytes after the length): truncated?", what,
         n, size - 8);
  const auto* header = reinterpret_cast<const char*>(bytes + 8);
  json j;
  try {
    j = json::parse(header, header + n);
  } catch (const json::exception& e) {
    fail("{}: the header is not valid JSON: {}", what, e.what());
  }
  if (!j.is_object()) fail("{}: the header is {}, not a JSON object", what, j.type_name());

  File f;
  std::vector<Entry> entries;
  for (const auto& [key, value] : j.items()) {
    if (key == "__metadata__") {
      if (!value.is_object())
        fail("{}: __metadata__ is {}: accepted an object of strings", what, value.dump());
      for (const auto& [mk, mv] : value.items()) {
        if (!mv.is_string())
          fail("{}: __metadata__['{}'] is {}: accepted strings only", what, mk, mv.dump());
        f.metadata[mk] = mv.get<std::string>();
      }
      continue;
    }
    entries.push_back(parse_entry(what, key, value));
  }

  // The tensors must tile the data exactly: no overlap, no gap, nothing beyond it.
  const uint64_t data_size = size - 8 - n;
  std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t at = 0;
  const Entry* prev = nullptr;
  for (const Entry& e : entries) {
    if (e.end > data_size)
      fail(
          "{}: tensor '{}': data_offsets [{}, {}] out of range: the data holds {} bytes "
          "(truncated?)",
          what, e.name, e.begin, e.end, data_size);
    if (e.begin < at)
      fail("{}: tensors '{}' [{}, {}] and '{}' [{}, {}] overlap", what, prev->name, prev->begin,
           prev->end, e.name, e.begin, e.end);
    if (e.begin > at)
      fail(
          "{}: bytes [{}, {}) of the data belong to no tensor (before '{}'): accepted "
          "contiguous tensors",
          what, at, e.begin, e.name);
    at = e.end;
    prev = &e;
  }
  if (at != data_size)
    fail("{}: {} bytes after the last tensor belong to no tensor", what, data_size - at);

  const unsigned char* data = bytes + 8 + n;
  for (const Entry& e : entries) {
    Tensor t;
    t.dtype = e.dtype;
    t.shape = e.shape;
    t.data.assign(data + e.begin, data + e.end);
    f.tensors.emplace(e.name, std::move(t));
  }
  return f;
}

File load(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot open '{}': {}", path, std::strerror(errno));
  std::vector<unsigned char> bytes((std::istreambuf_iterator<char>(in)),
                                   std::istreambuf_iterator<char>());
  if (in.bad()) fail("cannot read '{}': {}", path, std::strerror(errno));
  return parse(bytes.data(), bytes.size(), path);
}

std::vector<unsigned char> serialize(const File& f) {
  json j = json::object();
  if (!f.metadata.empty()) j["__metadata__"] = f.metadata;
  uint64_t at = 0;
  for (const auto& [name, t] : f.tensors) {
    if (name == "__metadata__") fail("a tensor cannot be named __metadata__");
    const int64_t numel = t.numel();
    if (numel < 0 || uint64_t(numel) * dtype_size(t.dtype) != t.data.size())
      fail("tensor '{}': shape {} of {} needs {} bytes but holds {}", name, shape_string(t.shape),
           dtype_name(t.dtype), numel < 0 ? -1 : numel * int64_t(dtype_size(t.dtype)),
           t.data.size());
    j[name] = {{"dtype", dtype_name(t.dtype)},
               {"shape", t.shape},
               {"data_offsets", {at, at + t.data.size()}}};
    at += t.data.size();
  }
  std::string header = j.dump();
  header.append((8 - header.size() % 8) % 8, ' ');
  std::vector<unsigned char> out(8 + header.size());
  const uint64_t n = header.size();
  std::memcpy(out.data(), &n, 8);
  std::memcpy(out.data() + 8, header.data(), header.size());
  out.reserve(out.size() + at);
  for (const auto& [name, t] : f.tensors) out.insert(out.end(), t.data.begin(), t.data.end());
  return out;
}

void save(const std::string& path, const File& f) {
  const std::vector<unsigned char> bytes = serialize(f);
  std::filesystem::path target(path);
  std::filesystem::path folder = target.parent_path();
  if (folder.empty()) folder = ".";
  std::string tmp = path + ".tmp.XXXXXX";
  const int fd = ::mkstemp(tmp.data());
  if (fd < 0) fail("cannot create a temporary file beside '{}': {}", path, std::strerror(errno));
  auto abandon = [&](const char* step) {
    const int err = errno;
    ::close(fd);
    ::unlink(tmp.c_str());
    fail("cannot save '{}': {} failed: {}", path, step, std::strerror(err));
  };
  for (std::size_t done = 0; done < bytes.size();) {
    const ssize_t w = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (w < 0) {
      if (errno == EINTR) continue;
      abandon("write");
    }
    done += std::size_t(w);
  }
  // mkstemp creates the file 0600; a saved model is an ordinary file.
  if (::fchmod(fd, 0644) != 0) abandon("fchmod");
  if (::fsync(fd) != 0) abandon("fsync");
  if (::close(fd) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    fail("cannot save '{}': close failed: {}", path, std::strerror(err));
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    fail("cannot save '{}': rename from '{}' failed: {}", path, tmp, std::strerror(err));
  }
  // The rename is durable once the folder is.
  if (const int dir = ::open(folder.c_str(), O_RDONLY | O_DIRECTORY); dir >= 0) {
    ::fsync(dir);
    ::close(dir);
  }
}

Tensor make_tensor(DType t, std::vector<int64_t> shape, const void* data) {
  Tensor out;
  out.dtype = t;
  dtype_name(t);  // refuses fp16 with a message
  out.shape = std::move(shape);
  const int64_t numel = out.numel();
  if (numel < 0) fail("shape {} overflows 64-bit sizes", shape_string(out.shape));
  const std::size_t bytes = std::size_t(numel) * dtype_size(t);
  if (bytes && !data) fail("tensor data is null for shape {}", shape_string(out.shape));
  out.data.resize(bytes);
  if (bytes) std::memcpy(out.data.data(), data, bytes);
  return out;
}

}  // namespace memlayers::safetensors
