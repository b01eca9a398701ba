// safetensors I/O (kernels/common/safetensors.h): round trips of every dtype and the metadata,
// the byte layout, every error a truncated or corrupt file can raise, the atomic save; and a
// memory layer's weights through it (kernels/memory_layer/weights_io.h).
// Build and run: cmake --build build --target safetensors_test && ctest --test-dir build -L
// safetensors
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "common/bf16.h"
#include "common/error.h"
#include "common/safetensors.h"
#include "memory_layer/weights_io.h"
#include "tests/common/random.h"

namespace memlayers::safetensors {
namespace {

namespace fs = std::filesystem;

// A fresh folder per test, removed afterwards.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "memlayers_st_XXXXXX").string();
    if (!::mkdtemp(tmpl.data())) throw Error("mkdtemp failed");
    path_ = tmpl;
  }
  ~TempDir() { fs::remove_all(path_); }
  fs::path operator/(const std::string& name) const { return path_ / name; }
  const fs::path& path() const { return path_; }
  std::vector<std::string> entries() const {
    std::vector<std::string> out;
    for (const auto& e : fs::directory_iterator(path_)) out.push_back(e.path().filename());
    return out;
  }

 private:
  fs::path path_;
};

File sample() {
  File f;
  f.metadata = {{"format", "pt"}, {"memlayers.note", "ünïcode ok"}};
  const std::vector<float> a = {1.5f, -2.25f, 3.0f, 0.0f, 1e-30f, -7.0f};
  std::vector<uint16_t> b;
  for (float v : {1.0f, -0.5f, 3.140625f}) b.push_back(float_to_bf16_bits(v));
  const std::vector<int32_t> c = {-1, 2147483647, 0, 5};
  const std::vector<int64_t> d = {int64_t{1} << 40, -3};
  f.tensors["a_f32"] = make_tensor(DType::f32, {2, 3}, a.data());
  f.tensors["b_bf16"] = make_tensor(DType::bf16, {3}, b.data());
  f.tensors["c_i32"] = make_tensor(DType::i32, {2, 1, 2}, c.data());
  f.tensors["d_i64"] = make_tensor(DType::i64, {2}, d.data());
  f.tensors["e_scalar"] = make_tensor(DType::f32, {}, a.data());
  f.tensors["f_empty"] = make_tensor(DType::f32, {0, 4}, nullptr);
  return f;
}

void expect_same(const File& a, const File& b) {
  EXPECT_EQ(a.metadata, b.metadata);
  ASSERT_EQ(a.tensors.size(), b.tensors.size());
  for (const auto& [name, t] : a.tensors) {
    ASSERT_TRUE(b.has(name)) << name;
    const Tensor& u = b.at(name);
    EXPECT_EQ(t.dtype, u.dtype) << name;
    EXPECT_EQ(t.shape, u.shape) << name;
    EXPECT_EQ(t.data, u.data) << name;
  }
}

TEST(Safetensors, RoundTripInMemory) {
  const File f = sample();
  const auto bytes = serialize(f);
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  EXPECT_EQ((8 + n) % 8, 0u) << "the data should start 8-byte aligned";
  EXPECT_EQ(bytes.size(), 8 + n + 24 + 6 + 16 + 16 + 4);
  const File g = parse(bytes.data(), bytes.size());
  expect_same(f, g);
  EXPECT_EQ(g.at("e_scalar").numel(), 1);
  EXPECT_EQ(g.at("f_empty").numel(), 0);
  EXPECT_EQ(g.at("c_i32").as<int32_t>()[1], 2147483647);
  EXPECT_EQ(bf16_bits_to_float(g.at("b_bf16").as<uint16_t>()[2]), 3.140625f);
}

TEST(Safetensors, RoundTripOnDiskAtomically) {
  TempDir dir;
  const std::string path = (dir / "m.safetensors").string();
  save(path, sample());
  expect_same(sample(), load(path));
  // Overwrite: the new content replaces the old one whole, and no temporary file is left.
  File f;
  const std::vector<float> one = {42.0f};
  f.tensors["only"] = make_tensor(DType::f32, {1}, one.data());
  save(path, f);
  expect_same(f, load(path));
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"m.safetensors"});
  EXPECT_EQ(fs::status(path).permissions() & fs::perms::owner_read, fs::perms::owner_read);
}

TEST(Safetensors, ReadsFilesOfOtherWriters) {
  // As the Python library writes them: header unpadded, keys in any order, metadata first.
  const std::string header =
      R"({"__metadata__":{"format":"pt"},"w":{"dtype":"F32","shape":[2],"data_offsets":[4,12]},)"
      R"("i":{"dtype":"I32","shape":[1],"data_offsets":[0,4]}})";
  const uint64_t n = header.size();
  const int32_t i = 7;
  const float w[2] = {0.5f, -1.0f};
  // Laid out at fixed offsets (g++ 12 misreads a chain of vector inserts as out of bounds).
  std::vector<unsigned char> bytes(8 + header.size() + 4 + 8);
  std::memcpy(bytes.data(), &n, 8);
  std::memcpy(bytes.data() + 8, header.data(), header.size());
  std::memcpy(bytes.data() + 8 + header.size(), &i, 4);
  std::memcpy(bytes.data() + 8 + header.size() + 4, w, 8);
  const File f = parse(bytes.data(), bytes.size());
  EXPECT_EQ(f.metadata.at("format"), "pt");
  EXPECT_EQ(f.at("i").as<int32_t>()[0], 7);
  EXPECT_EQ(f.at("w").as<float>()[1], -1.0f);
}

// ---- errors ----

// A file of `header` (as JSON text) and `data_bytes` bytes of data; `length` overrides the
// header length field.
std::vector<unsigned char> file_of(const std::string& header, std::size_t data_bytes,
                                   int64_t length = -1) {
  std::vector<unsigned char> bytes(8 + header.size() + data_bytes, 0x3c);
  const uint64_t n = length < 0 ? header.size() : uint64_t(length);
  std::memcpy(bytes.data(), &n, 8);
  if (!header.empty()) std::memcpy(bytes.data() + 8, header.data(), header.size());
  return bytes;
}

void expect_refused(const std::vector<unsigned char>& bytes, const std::string& fragment) {
  try {
    parse(bytes.data(), bytes.size(), "t.safetensors");
    ADD_FAILURE() << "accepted; expected: " << fragment;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
    EXPECT_EQ(std::string(e.what()).rfind("t.safetensors: ", 0), 0u) << e.what();
  }
}

std::string one(const std::string& dtype, const std::string& shape, const std::string& offsets) {
  return R"({"x":{"dtype":")" + dtype + R"(","shape":)" + shape + R"(,"data_offsets":)" + offsets +
         "}}";
}

TEST(SafetensorsErrors, TruncatedOrCorruptHeader) {
  expect_refused({1, 2, 3}, "3 bytes: a safetensors file starts with an 8-byte header length");
  expect_refused(file_of(one("F32", "[2]", "[0,8]"), 8, 4000),
                 "header length 4000 goes beyond the file");
  expect_refused(file_of("", 0, int64_t{1} << 40), "exceeds the limit");
  expect_refused(file_of(R"({"x": {"dtype": "F32",)", 0), "the header is not valid JSON");
  expect_refused(file_of("[1, 2]", 0), "the header is array, not a JSON object");
  // Truncated data: the header promises more bytes than the file has.
  const auto full = file_of(one("F32", "[4]", "[0,16]"), 16);
  expect_refused(std::vector<unsigned char>(full.begin(), full.end() - 3),
                 "tensor 'x': data_offsets [0, 16] out of range: the data holds 13 bytes");
}

TEST(SafetensorsErrors, BadTensorEntries) {
  expect_refused(file_of(one("F16", "[2]", "[0,4]"), 4),
                 "tensor 'x': dtype 'F16' is not supported: accepted F32, BF16, I32, I64");
  expect_refused(file_of(one("Q4", "[2]", "[0,4]"), 4), "dtype 'Q4' is not supported");
  expect_refused(file_of(one("F32", "[3]", "[0,8]"), 8),
                 "tensor 'x': shape [3] of F32 is 12 bytes but data_offsets [0, 8] hold 8");
  expect_refused(file_of(one("BF16", "[2,2]", "[0,4]"), 4), "shape [2, 2] of BF16 is 8 bytes");
  expect_refused(file_of(one("F32", "[-2]", "[0,8]"), 8),
                 "tensor 'x': shape holds -2: accepted non-negative integers");
  expect_refused(file_of(one("F32", "[2.5]", "[0,8]"), 8), "shape holds 2.5");
  expect_refused(file_of(one("F32", "[2]", "[0]"), 8),
                 "data_offsets is [0]: accepted [begin, end]");
  expect_refused(file_of(one("F32", "[2]", "[8,0]"), 8),
                 "data_offsets [8, 0] end before they begin");
  expect_refused(file_of(one("F32", "2", "[0,8]"), 8), "shape is 2: accepted an array");
  expect_refused(file_of(R"({"x":{"dtype":"F32","shape":[2]}})", 8),
                 "tensor 'x' has no 'data_offsets'");
  expect_refused(file_of(R"({"x":7})", 0), "tensor 'x' is 7");
  expect_refused(file_of(R"({"__metadata__":{"a":1}})", 0),
                 "__metadata__['a'] is 1: accepted strings only");
  expect_refused(file_of(one("I64", "[4611686018427387904, 4]", "[0,8]"), 8),
                 "overflows 64-bit sizes");
}

TEST(SafetensorsErrors, OffsetsOverlapOrLeaveGaps) {
  const std::string two = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                          R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})";
  expect_refused(file_of(two, 12), "tensors 'a' [0, 8] and 'b' [4, 12] overlap");
  const std::string gap = R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                          R"("b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})";
  expect_refused(file_of(gap, 12), "bytes [4, 8) of the data belong to no tensor (before 'b')");
  expect_refused(file_of(one("F32", "[1]", "[0,4]"), 9),
                 "5 bytes after the last tensor belong to no tensor");
}

TEST(SafetensorsErrors, FilesAndSaving) {
  TempDir dir;
  try {
    load((dir / "missing.safetensors").string());
    ADD_FAILURE() << "loaded a missing file";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cannot open"), std::string::npos) << e.what();
  }
  // Saving into a folder that does not exist fails cleanly and leaves nothing behind.
  EXPECT_THROW(save((dir / "no/such/folder/m.safetensors").string(), sample()), Error);
  // A tensor whose bytes do not match its shape is refused before anything is written.
  File bad = sample();
  bad.tensors["a_f32"].data.pop_back();
  try {
    save((dir / "bad.safetensors").string(), bad);
    ADD_FAILURE() << "saved a tensor of the wrong size";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("tensor 'a_f32': shape [2, 3] of F32 needs 24 bytes"),
              std::string::npos)
        << e.what();
  }
  EXPECT_TRUE(dir.entries().empty());
  EXPECT_THROW(make_tensor(DType::f16, {1}, "ab"), Error);
  try {
    sample().at("nope");
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no tensor 'nope'; the file holds: a_f32, b_bf16"),
              std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace memlayers::safetensors

// ---- a memory layer's weights ----

namespace memlayers::memory_layer {
namespace {

HostWeights random_weights(const Config& c, const std::string& seed) {
  test::Rng rng(seed);
  HostWeights w;
  w.config = c;
  auto fill = [&](std::vector<float>& v, int64_t n) {
    v.resize(static_cast<std::size_t>(n));
    for (float& e : v) e = rng.signed_unit();
  };
  const int64_t d = c.d_model, hn = c.heads * c.k_dim, v = c.value_dim;
  fill(w.wq, d * hn), fill(w.bq, hn);
  fill(w.keys1, c.heads * c.n_keys * c.k_dim / 2), fill(w.keys2, c.heads * c.n_keys * c.k_dim / 2);
  w.values = test::random_values(rng, c.values_dtype,
                                 static_cast<std::size_t>(c.num_values() * c.value_width()));
  if (c.kind == Kind::peer)
    w.down = test::random_values(rng, c.values_dtype, static_cast<std::size_t>(c.num_values() * d));
  if (c.kind == Kind::memory_plus)
    fill(w.w1, d * v), fill(w.b1, v), fill(w.w2, v * d), fill(w.b2, d);
  if (c.scalar_gate) fill(w.wg, d);
  return w;
}

Config small(Kind kind, bool gate, DType vt) {
  Config c;
  c.kind = kind, c.d_model = 6, c.heads = 2, c.n_keys = 3, c.k_dim = 4, c.k = 2;
  c.value_dim = kind == Kind::memory_plus ? 5 : 6;
  c.qk_norm = gate, c.scalar_gate = gate, c.values_dtype = vt;
  return c;
}

void expect_same(const HostWeights& a, const HostWeights& b, bool values = true) {
  EXPECT_EQ(a.config.kind, b.config.kind);
  EXPECT_EQ(a.config.d_model, b.config.d_model);
  EXPECT_EQ(a.config.heads, b.config.heads);
  EXPECT_EQ(a.config.n_keys, b.config.n_keys);
  EXPECT_EQ(a.config.k_dim, b.config.k_dim);
  EXPECT_EQ(a.config.k, b.config.k);
  EXPECT_EQ(a.config.value_dim, b.config.value_dim);
  EXPECT_EQ(a.config.qk_norm, b.config.qk_norm);
  EXPECT_EQ(a.config.scalar_gate, b.config.scalar_gate);
  EXPECT_EQ(a.wq, b.wq);
  EXPECT_EQ(a.bq, b.bq);
  EXPECT_EQ(a.keys1, b.keys1);
  EXPECT_EQ(a.keys2, b.keys2);
  if (values) {
    EXPECT_EQ(a.config.values_dtype, b.config.values_dtype);
    EXPECT_EQ(a.values, b.values);
  }
  EXPECT_EQ(a.down, b.down);
  EXPECT_EQ(a.w1, b.w1);
  EXPECT_EQ(a.b1, b.b1);
  EXPECT_EQ(a.w2, b.w2);
  EXPECT_EQ(a.b2, b.b2);
  EXPECT_EQ(a.wg, b.wg);
}

TEST(MemoryLayerWeights, RoundTripEveryKind) {
  safetensors::File f;
  for (Kind kind : {Kind::memory, Kind::memory_plus, Kind::peer})
    for (bool gate : {false, true})
      for (DType vt : {DType::f32, DType::bf16}) {
        const Config c = small(kind, gate, vt);
        const HostWeights w = random_weights(c, to_string(kind) + (gate ? "g" : ""));
        const auto file = weights_to_file(c, w.view());
        const auto bytes = safetensors::serialize(file);
        const HostWeights back = weights_from_file(safetensors::parse(bytes.data(), bytes.size()));
        expect_same(w, back);
        EXPECT_EQ(back.view().values, back.values.data());
        EXPECT_EQ(file.at("keys1").shape, (std::vector<int64_t>{2, 3, 2}));
        // Shared values left out: everything else loads, values stay for the caller to supply.
        const HostWeights shared = weights_from_file(weights_to_file(c, w.view(), false));
        expect_same(w, shared, false);
        EXPECT_TRUE(shared.values.empty());
        EXPECT_EQ(shared.view().values, nullptr);
      }
}

TEST(MemoryLayerWeights, OnDisk) {
  const std::string dir = ::testing::TempDir();
  const std::string path = dir + "/memlayers_weights_test.safetensors";
  const Config c = small(Kind::memory_plus, true, DType::bf16);
  const HostWeights w = random_weights(c, "disk");
  save_weights(path, c, w.view());
  expect_same(w, load_weights(path));
  std::filesystem::remove(path);
}

void expect_refused(const safetensors::File& f, const std::string& fragment) {
  try {
    weights_from_file(f, "w.safetensors");
    ADD_FAILURE() << "accepted; expected: " << fragment;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
  }
}

TEST(MemoryLayerWeights, Errors) {
  const Config c = small(Kind::memory_plus, true, DType::f32);
  const HostWeights w = random_weights(c, "errors");
  const safetensors::File good = weights_to_file(c, w.view());
  auto f = good;
  f.tensors.erase("w2");
  expect_refused(f, "w.safetensors: no tensor 'w2': a memory_plus layer needs it");
  f = good, f.tensors.erase("wg");
  expect_refused(f, "no tensor 'wg': a memory_plus layer with scalar_gate needs it");
  f = good, f.tensors["wq"].shape = {12, 6};
  expect_refused(f, "tensor 'wq' is F32 [12, 6]: the config needs F32 [6, 8]");
  f = good, f.tensors["extra"] = f.tensors["b2"];
  expect_refused(f, "tensor 'extra' is not a parameter of a memory_plus layer");
  f = good, f.metadata.erase("memlayers.kind");
  expect_refused(f, "has no 'memlayers.kind': not a memory layer's weights file");
  f = good, f.metadata["memlayers.kind"] = "swilu";
  expect_refused(f, "'swilu': accepted memory, memory_plus, peer");
  f = good, f.metadata["memlayers.heads"] = "two";
  expect_refused(f, "__metadata__['memlayers.heads'] = 'two': accepted an integer");
  f = good, f.metadata["memlayers.k"] = "9";
  expect_refused(f, "config in __metadata__: k = 9: accepted 1 <= k <= min(n_keys = 3");
  f = good, f.metadata["memlayers.qk_norm"] = "yes";
  expect_refused(f, "accepted true, false");
  // Saving refuses a missing weight the config needs.
  Weights missing = w.view();
  missing.b1 = nullptr;
  EXPECT_THROW(weights_to_file(c, missing), Error);
}

}  // namespace
}  // namespace memlayers::memory_layer
