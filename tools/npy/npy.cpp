#include "npy/npy.h"

#include <algorithm>
#include <atomic>
#include <bit>
#include <cerrno>
#include <cstdio>
#include <limits>
#include <memory>
#include <optional>
#include <string_view>

#include <fcntl.h>
#include <unistd.h>

namespace memlayers::npy {

// The bytes in a file are the bytes in memory only on a little-endian host.
static_assert(std::endian::native == std::endian::little, "npy I/O assumes a little-endian host");

namespace {

constexpr char kMagic[] = "\x93NUMPY";
constexpr std::size_t kMagicLen = 6;
constexpr std::size_t kAlign = 64;
constexpr const char* kAccepted = "'<f4' (float32), '<i4' (int32), '<i8' (int64)";

std::string quoted(const std::filesystem::path& p) { return "'" + p.string() + "'"; }

std::string errno_text() { return std::strerror(errno); }

// Element count with an overflow check: a corrupt header must not turn into a huge allocation.
std::optional<std::int64_t> checked_numel(const std::vector<std::int64_t>& shape) {
  std::int64_t n = 1;
  for (std::int64_t d : shape) {
    if (d < 0) return std::nullopt;
    if (d != 0 && n > std::numeric_limits<std::int64_t>::max() / d) return std::nullopt;
    n *= d;
  }
  return n;
}

std::string shape_str(const std::vector<std::int64_t>& shape) {
  if (shape.empty()) return "()";
  std::string s = "(";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + (shape.size() == 1 ? ",)" : ")");
}

// ---- header dictionary parser ----
// The header is a Python dict literal such as
//   {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }
// Only the forms NumPy writes for plain arrays are understood: quoted strings, True/False and
// tuples of integers.
class HeaderParser {
 public:
  HeaderParser(std::string_view text, std::string file) : s_(text), file_(std::move(file)) {}

  struct Header {
    std::string descr;
    bool fortran_order = false;
    std::vector<std::int64_t> shape;
  };

  Header parse() {
    Header h;
    bool have_descr = false, have_order = false, have_shape = false;
    expect('{');
    while (true) {
      skip_space();
      if (peek() == '}') break;
      std::string key = string_literal();
      expect(':');
      skip_space();
      if (key == "descr") {
        if (peek() == '[')
          bad("descr is a structured dtype (a list of fields); accepted are plain arrays of " +
              std::string(kAccepted));
        h.descr = string_literal();
        have_descr = true;
      } else if (key == "fortran_order") {
        h.fortran_order = boolean();
        have_order = true;
      } else if (key == "shape") {
        h.shape = int_tuple();
        have_shape = true;
      } else {
        bad("unexpected key '" + key + "'; a header has exactly 'descr', 'fortran_order', 'shape'");
      }
      skip_space();
      if (peek() == ',') {
        ++pos_;
        continue;
      }
      skip_space();
      if (peek() != '}') bad("expected ',' or '}'");
    }
    ++pos_;
    skip_space();
    if (pos_ != s_.size()) bad("text after the closing '}'");
    if (!have_descr || !have_order || !have_shape)
      bad("missing key(s): the header needs 'descr', 'fortran_order' and 'shape'");
    return h;
  }

 private:
  [[noreturn]] void bad(const std::string& what) const {
    fail("npy: {}: malformed header ({}) at offset {} of \"{}\"", file_, what, pos_,
         std::string(s_));
  }
  char peek() const { return pos_ < s_.size() ? s_[pos_] : '\0'; }
  void skip_space() {
    while (pos_ < s_.size() && (s_[pos_] == ' ' || s_[pos_] == '\t' || s_[pos_] == '\n')) ++pos_;
  }
  void expect(char c) {
    skip_space();
    if (peek() != c) bad(std::string("expected '") + c + "'");
    ++pos_;
  }
  std::string string_literal() {
    skip_space();
    char q = peek();
    if (q != '\'' && q != '"') bad("expected a quoted string");
    std::size_t end = s_.find(q, pos_ + 1);
    if (end == std::string_view::npos) bad("unterminated string");
    std::string out(s_.substr(pos_ + 1, end - pos_ - 1));
    pos_ = end + 1;
    return out;
  }
  bool boolean() {
    if (s_.substr(pos_, 4) == "True") {
      pos_ += 4;
      return true;
    }
    if (s_.substr(pos_, 5) == "False") {
      pos_ += 5;
      return false;
    }
    bad("expected True or False");
  }
  std::int64_t integer() {
    skip_space();
    std::size_t start = pos_;
    std::int64_t v = 0;
    while (pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9') {
      int digit = s_[pos_] - '0';
      if (v > (std::numeric_limits<std::int64_t>::max() - digit) / 10) bad("dimension too large");
      v = v * 10 + digit;
      ++pos_;
    }
    if (pos_ == start) bad("expected a non-negative integer dimension");
    if (peek() == 'L') ++pos_;  // Python 2 long suffix, written by old NumPy
    return v;
  }
  std::vector<std::int64_t> int_tuple() {
    expect('(');
    std::vector<std::int64_t> dims;
    skip_space();
    if (peek() == ')') {
      ++pos_;
      return dims;
    }
    while (true) {
      dims.push_back(integer());
      skip_space();
      if (peek() == ',') {
        ++pos_;
        skip_space();
        if (peek() == ')') break;
        continue;
      }
      if (peek() == ')') break;
      bad("expected ',' or ')' in shape");
    }
    ++pos_;
    return dims;
  }

  std::string_view s_;
  std::string file_;
  std::size_t pos_ = 0;
};

DType parse_descr(const std::string& d, const std::string& file) {
  if (d == "<f4") return DType::f32;
  if (d == "<i4") return DType::i32;
  if (d == "<i8") return DType::i64;
  if (!d.empty() && d[0] == '>')
    fail(
        "npy: {}: dtype '{}' is big-endian, which is not accepted: save it little-endian "
        "(arr.astype(arr.dtype.newbyteorder('<'))); accepted are {}",
        file, d, kAccepted);
  if (d == "<f8")
    fail(
        "npy: {}: float64 is not accepted: save as float32 (arr.astype(np.float32)); accepted "
        "are {}",
        file, kAccepted);
  if (d == "<f2")
    fail(
        "npy: {}: float16 is not accepted: save as float32 (bf16 and fp16 tensors travel as "
        "float32); accepted are {}",
        file, kAccepted);
  fail("npy: {}: dtype '{}' is not accepted; accepted are {}", file, d, kAccepted);
}

struct FileCloser {
  void operator()(std::FILE* f) const { std::fclose(f); }
};
using File = std::unique_ptr<std::FILE, FileCloser>;

std::uint64_t read_le(const unsigned char* p, int n) {
  std::uint64_t v = 0;
  for (int i = n - 1; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

}  // namespace

// ---- Array ----

std::int64_t Array::numel() const {
  auto n = checked_numel(shape);
  MEMLAYERS_CHECK(n.has_value(), "npy: shape {} is invalid (negative or overflowing dims)",
                  shape_str(shape));
  return *n;
}

std::string Array::shape_string() const { return shape_str(shape); }

Array Array::zeros(DType dtype, std::vector<std::int64_t> shape) {
  MEMLAYERS_CHECK(dtype == DType::f32 || dtype == DType::i32 || dtype == DType::i64,
                  "npy: arrays hold fp32, int32 or int64, not {}", to_string(dtype));
  Array a;
  a.dtype = dtype;
  a.shape = std::move(shape);
  a.bytes.assign(static_cast<std::size_t>(a.numel()) * dtype_size(dtype), std::byte{0});
  return a;
}

void Array::check_type(DType want) const {
  MEMLAYERS_CHECK(dtype == want, "npy: array holds {}, read as {}", to_string(dtype),
                  to_string(want));
  MEMLAYERS_CHECK(bytes.size() == static_cast<std::size_t>(numel()) * dtype_size(dtype),
                  "npy: array of shape {} {} holds {} bytes, expected {}", shape_string(),
                  to_string(dtype), bytes.size(), numel() * dtype_size(dtype));
}

std::string descr(DType dtype) {
  switch (dtype) {
    case DType::f32:
      return "<f4";
    case DType::i32:
      return "<i4";
    case DType::i64:
      return "<i8";
    default:
      fail("npy: {} has no .npy dtype here; accepted are {}", to_string(dtype), kAccepted);
  }
}

// ---- reading ----

Array read(const std::filesystem::path& path) {
  const std::string file = quoted(path);
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec))
    fail("npy: {}: is a directory, not a .npy file", file);
  File f(std::fopen(path.c_str(), "rb"));
  if (!f) fail("npy: cannot open {}: {}", file, errno_text());
  const auto size = std::filesystem::file_size(path, ec);
  if (ec) fail("npy: cannot stat {}: {}", file, ec.message());

  unsigned char pre[12];
  const std::size_t got = std::fread(pre, 1, 10, f.get());
  if (got < kMagicLen || std::memcmp(pre, kMagic, kMagicLen) != 0)
    fail(
        "npy: {} is not a .npy file: it does not start with the magic \\x93NUMPY (save it with "
        "numpy.save)",
        file);
  if (got < 10) fail("npy: {} is truncated: {} bytes, shorter than the .npy preamble", file, size);
  const int major = pre[6], minor = pre[7];
  std::size_t preamble = 10;
  std::uint64_t header_len;
  if (major == 1 && minor == 0) {
    header_len = read_le(pre + 8, 2);
  } else if ((major == 2 || major == 3) && minor == 0) {
    // 3.0 differs from 2.0 only in allowing UTF-8 in the header, which plain arrays never need.
    if (std::fread(pre + 10, 1, 2, f.get()) != 2)
      fail("npy: {} is truncated inside its preamble", file);
    header_len = read_le(pre + 8, 4);
    preamble = 12;
  } else {
    fail("npy: {}: format version {}.{} is not accepted; accepted are 1.0, 2.0 and 3.0", file,
         major, minor);
  }
  if (preamble + header_len > size)
    fail("npy: {} is truncated: the header claims {} bytes but the file has {} after the preamble",
         file, header_len, size - preamble);
  std::string text(header_len, '\0');
  if (std::fread(text.data(), 1, header_len, f.get()) != header_len)
    fail("npy: cannot read the header of {}: {}", file, errno_text());
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ' || text.back() == '\0'))
    text.pop_back();

  auto h = HeaderParser(text, file).parse();
  const DType dtype = parse_descr(h.descr, file);
  if (h.fortran_order)
    fail(
        "npy: {}: fortran_order True is not accepted: save a C-ordered array "
        "(numpy.ascontiguousarray(arr))",
        file);
  const auto numel = checked_numel(h.shape);
  const std::uint64_t elem = dtype_size(dtype);
  if (!numel ||
      static_cast<std::uint64_t>(*numel) > std::numeric_limits<std::uint64_t>::max() / elem)
    fail("npy: {}: shape {} is too large", file, shape_str(h.shape));
  const std::uint64_t nbytes = static_cast<std::uint64_t>(*numel) * elem;
  const std::uint64_t after = size - preamble - header_len;
  if (after < nbytes)
    fail("npy: {} is truncated: shape {} {} needs {} bytes of data, the file has {}", file,
         shape_str(h.shape), to_string(dtype), nbytes, after);
  if (after > nbytes)
    fail("npy: {}: {} unexpected bytes after the data of shape {} {} (a corrupt or appended file)",
         file, after - nbytes, shape_str(h.shape), to_string(dtype));

  Array a;
  a.dtype = dtype;
  a.shape = std::move(h.shape);
  a.bytes.resize(nbytes);
  if (nbytes && std::fread(a.bytes.data(), 1, nbytes, f.get()) != nbytes)
    fail("npy: cannot read the data of {}: {}", file, errno_text());
  return a;
}

void check(const Array& a, const Expect& expect, const std::string& source) {
  const std::string what = expect.name.empty() ? source : expect.name + " (" + source + ")";
  if (!expect.dtypes.empty()) {
    bool ok = false;
    std::string accepted;
    for (DType t : expect.dtypes) {
      ok |= t == a.dtype;
      accepted += (accepted.empty() ? "" : ", ") + std::string(to_string(t));
    }
    if (!ok)
      fail("{}: dtype {} is not accepted here; accepted: {}", what, to_string(a.dtype), accepted);
  }
  const int rank = !expect.shape.empty() ? static_cast<int>(expect.shape.size()) : expect.rank;
  if (rank >= 0 && a.rank() != rank)
    fail("{}: has rank {} (shape {}), expected rank {}{}", what, a.rank(), a.shape_string(), rank,
         expect.shape.empty() ? "" : " " + shape_str(expect.shape));
  for (std::size_t i = 0; i < expect.shape.size(); ++i)
    if (expect.shape[i] >= 0 && expect.shape[i] != a.shape[i])
      fail("{}: shape {} does not match the expected {} at dim {}{}", what, a.shape_string(),
           shape_str(expect.shape), i,
           std::find(expect.shape.begin(), expect.shape.end(), -1) != expect.shape.end()
               ? " (-1: any size)"
               : "");
}

Array read(const std::filesystem::path& path, const Expect& expect) {
  Array a = read(path);
  check(a, expect, quoted(path));
  return a;
}

// ---- writing ----

std::string encode_header(const Array& a) {
  std::string dict = "{'descr': '" + descr(a.dtype) +
                     "', 'fortran_order': False, 'shape': " + shape_str(a.shape) + ", }";
  // Version 1.0 stores the header length in 2 bytes; longer headers (huge ranks) need 2.0.
  std::size_t preamble = 10;
  std::size_t total = (preamble + dict.size() + 1 + kAlign - 1) / kAlign * kAlign;
  if (total - preamble > 0xffff) {
    preamble = 12;
    total = (preamble + dict.size() + 1 + kAlign - 1) / kAlign * kAlign;
  }
  const std::size_t header_len = total - preamble;
  std::string out(kMagic, kMagicLen);
  out += static_cast<char>(preamble == 10 ? 1 : 2);
  out += '\0';
  for (std::size_t i = 0; i < preamble - 8; ++i)
    out += static_cast<char>((header_len >> (8 * i)) & 0xff);
  out += dict;
  out.append(total - out.size() - 1, ' ');
  out += '\n';
  return out;
}

void write(const std::filesystem::path& path, const Array& a) {
  const std::string file = quoted(path);
  const std::int64_t numel = a.numel();
  const std::string header = encode_header(a);
  if (a.bytes.size() != static_cast<std::size_t>(numel) * dtype_size(a.dtype))
    fail("npy: cannot write {}: shape {} {} needs {} bytes, the array holds {}", file,
         a.shape_string(), to_string(a.dtype), numel * dtype_size(a.dtype), a.bytes.size());

  // The temporary lives in the same directory so that rename() is atomic (same file system).
  static std::atomic<unsigned> counter{0};
  const auto tmp =
      path.parent_path() / ("." + path.filename().string() + ".tmp-" + std::to_string(::getpid()) +
                            "-" + std::to_string(counter.fetch_add(1)));
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) fail("npy: cannot write {}: creating {} failed: {}", file, quoted(tmp), errno_text());
  auto give_up = [&](const std::string& what) {
    const std::string why = errno_text();
    ::close(fd);
    std::error_code ignored;
    std::filesystem::remove(tmp, ignored);
    fail("npy: cannot write {}: {}: {}", file, what, why);
  };
  auto put = [&](const void* data, std::size_t n) {
    const char* p = static_cast<const char*>(data);
    while (n > 0) {
      const ssize_t w = ::write(fd, p, n);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) give_up("write failed");
      p += w;
      n -= static_cast<std::size_t>(w);
    }
  };
  put(header.data(), header.size());
  put(a.bytes.data(), a.bytes.size());
  if (::fsync(fd) != 0) give_up("fsync failed");
  if (::close(fd) != 0) {
    const std::string why = errno_text();
    std::error_code ec;
    std::filesystem::remove(tmp, ec);
    fail("npy: cannot write {}: close failed: {}", file, why);
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    std::error_code ignored;
    std::filesystem::remove(tmp, ignored);
    fail("npy: cannot write {}: renaming the temporary file failed: {}", file, ec.message());
  }
}

}  // namespace memlayers::npy
