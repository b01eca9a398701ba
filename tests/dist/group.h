// The group a dist test runs in: every process of the mpirun job, or one rank when started alone.
// A main() that makes the group before the tests and ends every rank when any test failed on any
// rank (so the exit code is the same everywhere and mpirun reports it).
#pragma once
#include <gtest/gtest.h>

#include <memory>

#include "dist/comm.h"

namespace memlayers::dist::testing {

inline Comm& group() {
  static std::unique_ptr<Comm> comm = launched_by_mpi() ? make_mpi_comm() : make_single_comm();
  return *comm;
}

}  // namespace memlayers::dist::testing

// Each test file ends with MEMLAYERS_DIST_TEST_MAIN().
#define MEMLAYERS_DIST_TEST_MAIN()                 \
  int main(int argc, char** argv) {                \
    ::testing::InitGoogleTest(&argc, argv);        \
    auto& g = ::memlayers::dist::testing::group(); \
    const int rc = RUN_ALL_TESTS();                \
    double failed = rc != 0 ? 1.0 : 0.0;           \
    g.all_reduce_sum_host(&failed, 1);             \
    return failed > 0 ? 1 : 0;                     \
  }
