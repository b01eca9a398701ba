// MPI helpers shared by the communicators built on it: comm_mpi.cpp defines them, and
// cuda/comm_nccl.cu (built only where MPI is) uses them to bootstrap NCCL.
#pragma once

namespace memlayers::dist::detail {

// An MPI error code as memlayers::Error naming the call and MPI's message.
void check_mpi(int rc, const char* call);
// MPI started once (funneled: only the main thread calls it), finalised at exit unless the
// program did; MPI_COMM_WORLD returns errors instead of aborting.
void init_mpi_once();

}  // namespace memlayers::dist::detail
