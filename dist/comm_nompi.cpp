// Built when MPI is not found: make_mpi_comm() says how to get it.
#include "common/error.h"
#include "dist/comm.h"

namespace memlayers::dist {

bool mpi_built() { return false; }

std::unique_ptr<Comm> make_mpi_comm() {
  fail(
      "this build has no MPI: install Open MPI (apt-get install libopenmpi-dev openmpi-bin, as "
      "tools/install_deps.sh does) and configure again; one process runs without it");
}

}  // namespace memlayers::dist
