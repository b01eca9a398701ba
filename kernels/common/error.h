// Errors: library code throws memlayers::Error with a message that says what was wrong and what is
// accepted; only executables turn it into an exit code.
#pragma once
#include <stdexcept>
#include <string>

#include <fmt/format.h>

namespace memlayers {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

template <class... Args>
[[noreturn]] void fail(fmt::format_string<Args...> f, Args&&... args) {
  throw Error(fmt::format(f, std::forward<Args>(args)...));
}

}  // namespace memlayers

// MEMLAYERS_CHECK(cond, "fmt", args...): throws memlayers::Error with the formatted message.
#define MEMLAYERS_CHECK(cond, ...)               \
  do {                                           \
    if (!(cond)) ::memlayers::fail(__VA_ARGS__); \
  } while (0)
