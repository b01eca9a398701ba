// The harness tests' check of an error path: `fn` throws memlayers::Error whose message contains
// `expected`.
#pragma once
#include <gtest/gtest.h>

#include <functional>
#include <string>

#include "common/error.h"

namespace memlayers::test {

inline void expect_error(const std::function<void()>& fn, const std::string& expected) {
  try {
    fn();
    ADD_FAILURE() << "no error; expected one containing \"" << expected << "\"";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(expected), std::string::npos)
        << "message \"" << e.what() << "\" lacks \"" << expected << "\"";
  }
}

}  // namespace memlayers::test
