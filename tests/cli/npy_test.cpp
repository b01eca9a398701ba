// .npy reading and writing: round trips per dtype and shape, files laid out as NumPy writes them,
// every refused input with its message, and (when python3 has numpy) files exchanged with NumPy.

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <random>
#include <sstream>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "npy/npy.h"
#include "tests/common/temp_dir.h"

namespace memlayers::npy {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

class NpyFile : public test::TempDirTest {
 protected:
  NpyFile() : TempDirTest("memlayers_npy_") {}

  void write_raw(const fs::path& p, const std::string& bytes) const {
    std::ofstream out(p, std::ios::binary);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  }
  std::string read_raw(const fs::path& p) const {
    std::ifstream in(p, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  }

  // The message read() throws for `p`; fails the test when it does not throw.
  std::string read_error(const fs::path& p, const Expect* expect = nullptr) const {
    try {
      expect ? read(p, *expect) : read(p);
    } catch (const Error& e) {
      return e.what();
    }
    ADD_FAILURE() << "reading " << p << " did not throw";
    return "";
  }
};

// A .npy file laid out by hand from the format's specification (not by our writer), with a header
// dictionary given verbatim, so the reader is tested against bytes it did not produce.
std::string npy_bytes(const std::string& dict, const std::string& data, int major = 1,
                      std::size_t align = 64) {
  const std::size_t preamble = major == 1 ? 10 : 12;
  const std::size_t total = (preamble + dict.size() + 1 + align - 1) / align * align;
  const std::size_t len = total - preamble;
  std::string out = "\x93NUMPY";
  out += static_cast<char>(major);
  out += '\0';
  for (std::size_t i = 0; i < preamble - 8; ++i) out += static_cast<char>((len >> (8 * i)) & 0xff);
  out += dict + std::string(total - preamble - dict.size() - 1, ' ') + "\n";
  return out + data;
}

template <class T>
std::string le_bytes(std::initializer_list<T> values) {
  std::string s;
  for (T v : values) s.append(reinterpret_cast<const char*>(&v), sizeof v);
  return s;
}

// ---- round trips ----

struct RoundTripCase {
  DType dtype;
  std::vector<std::int64_t> shape;
};

std::string case_name(const ::testing::TestParamInfo<RoundTripCase>& info) {
  std::string s(to_string(info.param.dtype));
  s += "_";
  if (info.param.shape.empty()) s += "scalar";
  for (std::size_t i = 0; i < info.param.shape.size(); ++i)
    s += (i ? "x" : "") + std::to_string(info.param.shape[i]);
  return s;
}

class NpyRoundTrip : public NpyFile, public ::testing::WithParamInterface<RoundTripCase> {};

TEST_P(NpyRoundTrip, BitExact) {
  const auto& c = GetParam();
  Array a = Array::zeros(c.dtype, c.shape);
  std::mt19937_64 rng(1234 + a.numel());
  // Random bytes cover every bit pattern: negative values, extremes and (for fp32) NaN payloads,
  // infinities and negative zero, all of which must come back bit for bit.
  for (auto& b : a.bytes) b = static_cast<std::byte>(rng());
  if (a.numel() > 0) {
    ASSERT_NE(a.bytes, std::vector<std::byte>(a.bytes.size(), std::byte{0}));
  }

  const auto p = file("a.npy");
  write(p, a);
  const std::string raw = read_raw(p);
  ASSERT_GE(raw.size(), 64u);
  EXPECT_EQ(raw.substr(0, 8), std::string("\x93NUMPY\x01\x00", 8));
  const std::size_t header_len =
      static_cast<unsigned char>(raw[8]) | static_cast<unsigned char>(raw[9]) << 8;
  EXPECT_EQ((10 + header_len) % 64, 0u) << "data must start 64-byte aligned, as NumPy writes it";
  EXPECT_EQ(raw[10 + header_len - 1], '\n');
  EXPECT_EQ(raw.size(), 10 + header_len + a.bytes.size());

  const Array b = read(p);
  EXPECT_EQ(b.dtype, c.dtype);
  EXPECT_EQ(b.shape, c.shape);
  EXPECT_EQ(b.bytes, a.bytes);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, NpyRoundTrip, ::testing::ValuesIn([] {
      std::vector<RoundTripCase> cases;
      for (DType dtype : {DType::f32, DType::i32, DType::i64})
        for (auto shape : std::vector<std::vector<std::int64_t>>{
                 {}, {1}, {17}, {0}, {3, 0, 2}, {2, 3, 4}, {1, 1, 1, 1}, {5, 129}})
          cases.push_back({dtype, shape});
      return cases;
    }()),
    case_name);

TEST_F(NpyFile, HeaderTextIsNumpys) {
  const Array a = Array::from<float>({2, 3}, std::vector<float>{1, 2, 3, 4, 5, 6});
  const std::string h = encode_header(a);
  EXPECT_EQ(h.size(), 128u);  // NumPy's data offset for a small array
  EXPECT_EQ(h.substr(10, h.find('}') - 9),
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }");
  EXPECT_THAT(encode_header(Array::zeros(DType::i64, {7})), HasSubstr("'descr': '<i8'"));
  EXPECT_THAT(encode_header(Array::zeros(DType::i64, {7})), HasSubstr("'shape': (7,)"));
  EXPECT_THAT(encode_header(Array::zeros(DType::i32, {})), HasSubstr("'shape': ()"));
  EXPECT_THAT(encode_header(Array::zeros(DType::i32, {})), HasSubstr("'descr': '<i4'"));
}

TEST_F(NpyFile, LongHeaderUsesVersion2) {
  // 30000 dims of size 1 ("1, " each) do not fit in a 2-byte header length.
  const Array a = Array::zeros(DType::f32, std::vector<std::int64_t>(30000, 1));
  write(file("v2.npy"), a);
  const std::string raw = read_raw(file("v2.npy"));
  EXPECT_EQ(raw[6], 2);
  const Array b = read(file("v2.npy"));
  EXPECT_EQ(b.shape, a.shape);
  EXPECT_EQ(b.bytes, a.bytes);
}

TEST_F(NpyFile, ValuesAccessorsCheckTheType) {
  const Array a = Array::from<std::int64_t>({3}, std::vector<std::int64_t>{-1, 1ll << 40, 7});
  EXPECT_EQ(a.to_vector<std::int64_t>(), (std::vector<std::int64_t>{-1, 1ll << 40, 7}));
  try {
    (void)a.values<float>();
    FAIL() << "reading int64 as fp32 did not throw";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("array holds int64, read as fp32"));
  }
  EXPECT_THROW((Array::from<float>({2, 2}, std::vector<float>{1, 2, 3})), Error);
}

// ---- files as NumPy lays them out ----

TEST_F(NpyFile, ReadsHandLaidFiles) {
  // Key order, quoting, spacing and padding vary between NumPy versions; all are valid.
  write_raw(file("a.npy"), npy_bytes("{'shape': (2, 2), 'fortran_order': False, 'descr': '<i8'}",
                                     le_bytes<std::int64_t>({1, -2, 3ll << 33, 4})));
  Array a = read(file("a.npy"));
  EXPECT_EQ(a.shape, (std::vector<std::int64_t>{2, 2}));
  EXPECT_EQ(a.to_vector<std::int64_t>(), (std::vector<std::int64_t>{1, -2, 3ll << 33, 4}));

  // NumPy >= 1.24 pads after the shape so a growing first axis can be rewritten in place.
  write_raw(file("b.npy"), npy_bytes("{\"descr\": \"<f4\", \"fortran_order\": False, \"shape\": "
                                     "(3,), }                      ",
                                     le_bytes<float>({0.5f, -1.5f, 3e38f}), 2));
  Array b = read(file("b.npy"));
  EXPECT_EQ(b.shape, (std::vector<std::int64_t>{3}));
  EXPECT_EQ(b.to_vector<float>(), (std::vector<float>{0.5f, -1.5f, 3e38f}));

  // Python 2's NumPy wrote dims with an L suffix and aligned to 16 bytes.
  write_raw(file("c.npy"),
            npy_bytes("{'descr': '<i4', 'fortran_order': False, 'shape': (1L, 2L), }",
                      le_bytes<std::int32_t>({-7, 2147483647}), 1, 16));
  Array c = read(file("c.npy"));
  EXPECT_EQ(c.shape, (std::vector<std::int64_t>{1, 2}));
  EXPECT_EQ(c.to_vector<std::int32_t>(), (std::vector<std::int32_t>{-7, 2147483647}));

  write_raw(file("d.npy"), npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (), }",
                                     le_bytes<float>({42.0f}), 3));
  Array d = read(file("d.npy"));
  EXPECT_EQ(d.rank(), 0);
  EXPECT_EQ(d.to_vector<float>(), std::vector<float>{42.0f});
}

// ---- refused input ----

TEST_F(NpyFile, MissingFile) {
  const std::string msg = read_error(file("nope.npy"));
  EXPECT_THAT(msg, HasSubstr("cannot open"));
  EXPECT_THAT(msg, HasSubstr("nope.npy"));
  EXPECT_THAT(msg, HasSubstr("No such file"));
}

TEST_F(NpyFile, Directory) { EXPECT_THAT(read_error(dir()), HasSubstr("is a directory")); }

TEST_F(NpyFile, BadMagic) {
  write_raw(file("x.npy"), "PK\x03\x04 this is a zip (an .npz), not an .npy file");
  const std::string msg = read_error(file("x.npy"));
  EXPECT_THAT(msg, HasSubstr("x.npy' is not a .npy file"));
  EXPECT_THAT(msg, HasSubstr("magic"));
  write_raw(file("empty.npy"), "");
  EXPECT_THAT(read_error(file("empty.npy")), HasSubstr("is not a .npy file"));
}

TEST_F(NpyFile, TruncatedData) {
  std::string bytes = npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }",
                                le_bytes<float>({1, 2, 3, 4, 5, 6}));
  write_raw(file("t.npy"), bytes.substr(0, bytes.size() - 5));
  const std::string msg = read_error(file("t.npy"));
  EXPECT_THAT(msg, HasSubstr("t.npy' is truncated"));
  EXPECT_THAT(msg, HasSubstr("shape (2, 3) fp32 needs 24 bytes of data, the file has 19"));
}

TEST_F(NpyFile, TruncatedHeader) {
  const std::string bytes = npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }",
                                      le_bytes<float>({1, 2}));
  write_raw(file("h.npy"), bytes.substr(0, 30));
  EXPECT_THAT(read_error(file("h.npy")),
              HasSubstr("is truncated: the header claims 118 bytes but the file has 20"));
  write_raw(file("p.npy"), bytes.substr(0, 8));
  EXPECT_THAT(read_error(file("p.npy")), HasSubstr("shorter than the .npy preamble"));
}

TEST_F(NpyFile, TrailingBytes) {
  write_raw(file("x.npy"), npy_bytes("{'descr': '<i4', 'fortran_order': False, 'shape': (2,), }",
                                     le_bytes<std::int32_t>({1, 2, 3})));
  EXPECT_THAT(read_error(file("x.npy")), HasSubstr("4 unexpected bytes after the data"));
}

TEST_F(NpyFile, FortranOrder) {
  write_raw(file("f.npy"), npy_bytes("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }",
                                     le_bytes<float>({1, 2, 3, 4})));
  EXPECT_THAT(read_error(file("f.npy")), HasSubstr("fortran_order True is not accepted"));
}

TEST_F(NpyFile, Float64Refused) {
  write_raw(file("d.npy"), npy_bytes("{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }",
                                     le_bytes<double>({1, 2})));
  const std::string msg = read_error(file("d.npy"));
  EXPECT_THAT(msg, HasSubstr("float64 is not accepted: save as float32"));
  EXPECT_THAT(msg, HasSubstr("d.npy"));
}

TEST_F(NpyFile, Float16Refused) {
  write_raw(file("h.npy"), npy_bytes("{'descr': '<f2', 'fortran_order': False, 'shape': (2,), }",
                                     std::string(4, '\0')));
  EXPECT_THAT(read_error(file("h.npy")), HasSubstr("float16 is not accepted"));
}

TEST_F(NpyFile, BigEndianRefused) {
  write_raw(file("b.npy"), npy_bytes("{'descr': '>f4', 'fortran_order': False, 'shape': (1,), }",
                                     std::string(4, '\0')));
  const std::string msg = read_error(file("b.npy"));
  EXPECT_THAT(msg, HasSubstr("'>f4' is big-endian, which is not accepted"));
  EXPECT_THAT(msg, HasSubstr("'<f4' (float32), '<i4' (int32), '<i8' (int64)"));
}

TEST_F(NpyFile, OtherDtypesRefused) {
  write_raw(file("u.npy"), npy_bytes("{'descr': '|u1', 'fortran_order': False, 'shape': (4,), }",
                                     std::string(4, '\0')));
  const std::string msg = read_error(file("u.npy"));
  EXPECT_THAT(msg, HasSubstr("dtype '|u1' is not accepted"));
  EXPECT_THAT(msg, HasSubstr("'<f4' (float32), '<i4' (int32), '<i8' (int64)"));
  write_raw(file("s.npy"),
            npy_bytes("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,), }",
                      std::string(4, '\0')));
  EXPECT_THAT(read_error(file("s.npy")), HasSubstr("structured dtype"));
}

TEST_F(NpyFile, UnknownVersion) {
  std::string bytes =
      npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }", std::string(4, '\0'));
  bytes[6] = 4;
  write_raw(file("v.npy"), bytes);
  EXPECT_THAT(read_error(file("v.npy")),
              HasSubstr("format version 4.0 is not accepted; accepted are 1.0, 2.0 and 3.0"));
}

TEST_F(NpyFile, MalformedHeaders) {
  const std::pair<const char*, const char*> cases[] = {
      {"{'descr': '<f4', 'shape': (1,), }", "missing key"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'extra': 1}",
       "unexpected key 'extra'"},
      {"{'descr': '<f4', 'fortran_order': Maybe, 'shape': (1,), }", "expected True or False"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (-1,), }", "non-negative integer"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999,), }",
       "dimension too large"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296), }",
       "is too large"},
      {"{'descr': '<f4, 'fortran_order': False, 'shape': (1,), }", "malformed header"},
  };
  for (const auto& [dict, want] : cases) {
    write_raw(file("m.npy"), npy_bytes(dict, std::string(4, '\0')));
    const std::string msg = read_error(file("m.npy"));
    EXPECT_THAT(msg, HasSubstr(want)) << dict;
    EXPECT_THAT(msg, HasSubstr("m.npy")) << dict;
  }
}

TEST_F(NpyFile, ExpectationsNameTheArgument) {
  write(file("x.npy"), Array::from<float>({2, 3}, std::vector<float>{1, 2, 3, 4, 5, 6}));
  Expect rank3{"--values", {DType::f32}, 3, {}};
  EXPECT_THAT(read_error(file("x.npy"), &rank3),
              HasSubstr("--values ('" + file("x.npy").string() +
                        "'): has rank 2 (shape (2, 3)), expected rank 3"));
  Expect ints{"--indices", {DType::i32, DType::i64}, -1, {}};
  EXPECT_THAT(read_error(file("x.npy"), &ints),
              HasSubstr("dtype fp32 is not accepted here; accepted: int32, int64"));
  Expect shape{"--values", {}, -1, {-1, 4}};
  EXPECT_THAT(
      read_error(file("x.npy"), &shape),
      HasSubstr("shape (2, 3) does not match the expected (-1, 4) at dim 1 (-1: any size)"));
  Expect ok{"--values", {DType::f32}, -1, {-1, 3}};
  EXPECT_EQ(read(file("x.npy"), ok).shape, (std::vector<std::int64_t>{2, 3}));
}

TEST_F(NpyFile, CorruptedFilesFailCleanly) {
  // Random byte flips in the preamble and header: each read either succeeds or throws Error.
  write(file("ok.npy"), Array::from<float>({2, 3}, std::vector<float>{1, 2, 3, 4, 5, 6}));
  const std::string good = read_raw(file("ok.npy"));
  std::mt19937 rng(99);
  int refused = 0;
  for (int i = 0; i < 600; ++i) {
    std::string bad = good;
    for (int flips = 1 + i % 3; flips > 0; --flips)
      bad[rng() % 128] = static_cast<char>(rng() % 2 ? rng() : " ()',:{}0123456789TF"[rng() % 20]);
    if (i % 7 == 0) bad.resize(rng() % bad.size());
    write_raw(file("bad.npy"), bad);
    try {
      const Array a = read(file("bad.npy"));
      EXPECT_EQ(a.bytes.size(), static_cast<std::size_t>(a.numel()) * dtype_size(a.dtype));
    } catch (const Error& e) {
      ++refused;
      EXPECT_THAT(e.what(), HasSubstr("bad.npy"));
    }
  }
  EXPECT_GT(refused, 300);
}

// ---- atomic writes ----

TEST_F(NpyFile, WriteReplacesAndLeavesNoTemporary) {
  const auto p = file("w.npy");
  write(p, Array::from<std::int32_t>({2}, std::vector<std::int32_t>{1, 2}));
  write(p, Array::from<std::int32_t>({3}, std::vector<std::int32_t>{7, 8, 9}));
  EXPECT_EQ(read(p).to_vector<std::int32_t>(), (std::vector<std::int32_t>{7, 8, 9}));
  int entries = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(dir())) ++entries;
  EXPECT_EQ(entries, 1) << "a temporary file was left beside the output";
}

TEST_F(NpyFile, WriteIntoMissingDirectoryFails) {
  try {
    write(file("no/such/dir/w.npy"), Array::zeros(DType::f32, {2}));
    FAIL() << "write did not throw";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("cannot write"));
    EXPECT_THAT(e.what(), HasSubstr("w.npy"));
    EXPECT_THAT(e.what(), HasSubstr("No such file or directory"));
  }
}

TEST_F(NpyFile, WriteRejectsInconsistentArray) {
  Array a = Array::zeros(DType::f32, {2, 2});
  a.bytes.resize(12);
  try {
    write(file("w.npy"), a);
    FAIL() << "write did not throw";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("needs 16 bytes, the array holds 12"));
  }
  EXPECT_FALSE(fs::exists(file("w.npy")));
}

// ---- exchange with NumPy ----

TEST_F(NpyFile, ExchangesFilesWithNumpy) {
  if (std::system("python3 -c 'import numpy' >/dev/null 2>&1") != 0)
    GTEST_SKIP() << "python3 with numpy is not available (python3 -c 'import numpy' failed)";

  // NumPy writes; we read.
  std::ofstream(file("write.py")) << R"(import numpy as np, sys
d = sys.argv[1]
np.save(d + '/f32.npy', (np.arange(24, dtype=np.float32).reshape(2, 3, 4) - 7.25) / 3)
np.save(d + '/i32.npy', np.array([-2**31, -1, 0, 2**31 - 1], dtype=np.int32))
np.save(d + '/i64.npy', np.array(-(2**40) - 3, dtype=np.int64))
np.save(d + '/f64.npy', np.zeros(3))
np.save(d + '/fortran.npy', np.asfortranarray(np.ones((2, 3), dtype=np.float32)))
np.save(d + '/big.npy', np.ones(3, dtype='>f4'))
)";
  ASSERT_EQ(std::system(("python3 " + file("write.py").string() + " " + dir()).c_str()), 0);

  const Array f = read(file("f32.npy"));
  ASSERT_EQ(f.shape, (std::vector<std::int64_t>{2, 3, 4}));
  const auto fv = f.values<float>();
  for (int i = 0; i < 24; ++i) EXPECT_EQ(fv[i], (static_cast<float>(i) - 7.25f) / 3.0f) << i;
  EXPECT_EQ(read(file("i32.npy")).to_vector<std::int32_t>(),
            (std::vector<std::int32_t>{std::numeric_limits<std::int32_t>::min(), -1, 0,
                                       std::numeric_limits<std::int32_t>::max()}));
  const Array s = read(file("i64.npy"));
  EXPECT_EQ(s.rank(), 0);
  EXPECT_EQ(s.to_vector<std::int64_t>(), std::vector<std::int64_t>{-(1ll << 40) - 3});
  EXPECT_THAT(read_error(file("f64.npy")), HasSubstr("float64 is not accepted: save as float32"));
  EXPECT_THAT(read_error(file("fortran.npy")), HasSubstr("fortran_order True is not accepted"));
  EXPECT_THAT(read_error(file("big.npy")), HasSubstr("big-endian"));

  // We write; NumPy reads and checks every value (the script exits non-zero on a mismatch).
  write(file("ours_f32.npy"),
        Array::from<float>({3, 1, 2}, std::vector<float>{1.5f, -2, 0, 4, 5, 6}));
  write(file("ours_i64.npy"), Array::from<std::int64_t>({}, std::vector<std::int64_t>{1ll << 50}));
  write(file("ours_i32.npy"), Array::from<std::int32_t>({0, 4}, std::vector<std::int32_t>{}));
  std::ofstream(file("check.py")) << R"(import numpy as np, sys
d = sys.argv[1]
a = np.load(d + '/ours_f32.npy')
assert a.dtype == np.float32 and a.shape == (3, 1, 2), (a.dtype, a.shape)
assert (a.ravel() == np.array([1.5, -2, 0, 4, 5, 6], dtype=np.float32)).all(), a
b = np.load(d + '/ours_i64.npy')
assert b.dtype == np.int64 and b.shape == () and b == 2**50, b
c = np.load(d + '/ours_i32.npy')
assert c.dtype == np.int32 and c.shape == (0, 4), c
)";
  EXPECT_EQ(std::system(("python3 " + file("check.py").string() + " " + dir()).c_str()), 0);
}

}  // namespace
}  // namespace memlayers::npy
