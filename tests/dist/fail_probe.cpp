// A program that fails on purpose under mpirun, for the tests that every rank ends with a clear
// error rather than a hang (tests/dist/CMakeLists.txt):
//   --fail-rank R     rank R throws before the group's next collective; the others wait in it
//   --mismatch        rank 1 runs a different configuration (check_agreement refuses it)
// Like every memlayers executable, it catches on every rank and ends the group (abort_group).
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "common/error.h"
#include "dist/comm.h"

int main(int argc, char** argv) {
  using namespace memlayers;
  auto comm = dist::launched_by_mpi() ? dist::make_mpi_comm() : dist::make_single_comm();
  try {
    int fail_rank = -1;
    bool mismatch = false;
    for (int i = 1; i < argc; ++i) {
      if (!std::strcmp(argv[i], "--fail-rank") && i + 1 < argc)
        fail_rank = std::atoi(argv[++i]);
      else if (!std::strcmp(argv[i], "--mismatch"))
        mismatch = true;
      else
        fail("unknown argument '{}': accepted --fail-rank R, --mismatch", argv[i]);
    }
    const std::string config = mismatch && comm->rank() == 1 ? "k 16" : "k 32";
    dist::check_agreement(*comm, "the config", config);
    if (comm->rank() == fail_rank) fail("planted failure before the collective");
    comm->barrier();  // the ranks that did not fail wait here
    std::printf("rank %d: no failure\n", comm->rank());
    return 0;
  } catch (const std::exception& e) {
    comm->abort_group(e.what());
  }
}
