// A test fixture with its own temp dir, <tmp>/<prefix><pid>_<suite>_<test>, made empty before
// each test and removed after it ('/' in a parameterised test's names becomes '_': one folder,
// none left behind).
#pragma once
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <string>
#include <utility>

#include <gtest/gtest.h>

namespace memlayers::test {

class TempDirTest : public ::testing::Test {
 protected:
  explicit TempDirTest(std::string prefix) : prefix_(std::move(prefix)) {}
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    std::string name = std::string(info->test_suite_name()) + "_" + info->name();
    std::replace(name.begin(), name.end(), '/', '_');
    dir_ = std::filesystem::temp_directory_path() /
           (prefix_ + std::to_string(::getpid()) + "_" + name);
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::string dir() const { return dir_.string(); }
  std::filesystem::path file(const std::string& name) const { return dir_ / name; }

 private:
  std::string prefix_;
  std::filesystem::path dir_;
};

}  // namespace memlayers::test
