// `memlayers npy-info FILE...`: dtype, shape and value range of .npy files, read exactly as the op
// subcommands read their inputs — so a file that passes here is accepted there, and one that does
// not gets the same error message.
#include <algorithm>
#include <cmath>
#include <iostream>
#include <limits>
#include <memory>

#include <fmt/format.h>

#include "npy/npy.h"
#include "subcommand.h"

namespace memlayers::cli::npy_info_command {
namespace {

template <class T>
std::string value_range(const npy::Array& a) {
  const auto v = a.values<T>();
  if (v.empty()) return "empty";
  std::int64_t nan = 0;
  T lo = std::numeric_limits<T>::max(), hi = std::numeric_limits<T>::lowest();
  for (T x : v) {
    if constexpr (std::is_floating_point_v<T>) {
      if (std::isnan(x)) {
        ++nan;
        continue;
      }
    }
    lo = std::min(lo, x);
    hi = std::max(hi, x);
  }
  std::string s = nan == a.numel() ? "all NaN" : fmt::format("min {} max {}", lo, hi);
  if (nan) s += fmt::format(", {} NaN", nan);
  return s;
}

struct Options {
  std::vector<std::string> files;
};

Action setup(CLI::App& app) {
  auto* sub = app.add_subcommand("npy-info", "Check .npy files: dtype, shape and value range");
  auto opt = std::make_shared<Options>();
  sub->add_option("files", opt->files, ".npy files (float32, int32 or int64, C order)")->required();
  return [opt] {
    for (const auto& f : opt->files) {
      const npy::Array a = npy::read(f);
      std::string range;
      switch (a.dtype) {
        case DType::f32:
          range = value_range<float>(a);
          break;
        case DType::i32:
          range = value_range<std::int32_t>(a);
          break;
        default:
          range = value_range<std::int64_t>(a);
          break;
      }
      std::cout << fmt::format("{}: {} {}, {} elements, {}\n", f, to_string(a.dtype),
                               a.shape_string(), a.numel(), range);
    }
  };
}

MEMLAYERS_SUBCOMMAND("npy-info", setup);

}  // namespace
}  // namespace memlayers::cli::npy_info_command
