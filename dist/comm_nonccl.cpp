// Built without CUDA or NCCL: make_nccl_comm() says why there is none.
#include "common/error.h"
#include "dist/comm.h"

namespace memlayers::dist {

bool nccl_built() { return false; }

std::unique_ptr<Comm> make_nccl_comm() {
  fail(
      "this build has no NCCL: it needs a CUDA build (nvcc on PATH) with the toolkit's NCCL and "
      "MPI; the cpu and simt backends use the mpi communicator");
}

}  // namespace memlayers::dist
