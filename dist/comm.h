// Collective communication for a memory-parallel group (issue 8): the interface the sharded
// EmbeddingBag and the sharded memory layer are written against, with implementations on existing
// engines only — MPI (Open MPI) for CPU ranks, NCCL for GPUs — and a single-rank stand-in.
//
// Every call is collective: every rank of the group makes it, in the same order, with counts that
// agree (what rank r sends to s is what s expects from r). Buffers are the memory of the backend
// the communicator serves: host memory for `single` and `mpi` (the reference, cpu and simt
// backends; simt's is device memory the host may reach only as a device library would, so these
// engines open a simt::DeviceAccess around the data they move), device memory for `nccl` (cuda).
// Counts are in bytes or elements as named, 64-bit.
//
// Errors: a call that fails throws memlayers::Error naming the call and the engine's message. A
// rank that fails must not leave the others waiting in a collective: executables catch on every
// rank and call abort_group(), which prints the reason and ends every rank of the group (MPI_Abort
// for mpi and nccl). check_agreement() turns a configuration that differs across ranks into the
// same clear error on every rank before any data moves.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace memlayers::dist {

class Comm {
 public:
  virtual ~Comm() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string name() const = 0;  // "single", "mpi", "nccl"

  // recv = every rank's send buffer, concatenated in rank order; rank r contributes bytes[r]
  // bytes (bytes.size() == size(); send holds bytes[rank()] bytes).
  virtual void all_gather(const void* send, void* recv, const std::vector<int64_t>& bytes) = 0;

  // Personalised exchange. send holds, in rank order, send_bytes[s] bytes for each rank s;
  // recv receives, in rank order, recv_bytes[r] bytes from each rank r. send_bytes[s] on rank r
  // must equal recv_bytes[r] on rank s.
  virtual void all_to_all(const void* send, const std::vector<int64_t>& send_bytes, void* recv,
                          const std::vector<int64_t>& recv_bytes) = 0;

  // fp32 sums over ranks. send holds counts[0] + ... + counts[size()-1] floats, block s in rank
  // order; rank r receives block r summed over every rank's send buffer, in rank order (rank 0's
  // term first): bitwise the same on every run of the same group size.
  virtual void reduce_scatter_sum(const float* send, float* recv,
                                  const std::vector<int64_t>& counts) = 0;

  // In place, data[i] = Σ over ranks of data[i], summed in rank order; every rank ends with the
  // same bits.
  virtual void all_reduce_sum(float* data, int64_t count) = 0;
  // The same for fp64 host scalars (losses, norms, counts); always host memory, any engine.
  virtual void all_reduce_sum_host(double* data, int64_t count) = 0;

  virtual void barrier() = 0;

  // Ends every rank of the group after printing "memlayers: rank R of P: <why>" to stderr.
  [[noreturn]] virtual void abort_group(const std::string& why, int code = 1) = 0;
};

// Throws memlayers::Error on every rank when `value` is not the same text on every rank:
// "<what> differs across ranks: rank 0 has '...', rank 2 has '...'" (the first rank that differs
// from rank 0). Collective.
void check_agreement(Comm& comm, std::string_view what, const std::string& value);

// One rank, no engine: all_gather and all_to_all copy, the sums are identities. Host memory.
std::unique_ptr<Comm> make_single_comm();

// Whether this build has MPI (find_package(MPI) found Open MPI).
bool mpi_built();
// The group of every process of the job (MPI_COMM_WORLD); MPI is initialised on the first call
// and finalised at exit. Throws when MPI is not built. Host memory.
std::unique_ptr<Comm> make_mpi_comm();
// Whether the process runs under an MPI launcher (mpirun set OMPI_COMM_WORLD_SIZE or PMI_SIZE),
// so a program can choose make_mpi_comm() without initialising MPI when started alone.
bool launched_by_mpi();

// Whether this build has NCCL (a CUDA build). make_nccl_comm: the group of every MPI process,
// one GPU each (device rank % device count), bootstrapped over MPI; device memory; collectives
// on the default stream, synchronised before return. Throws when not built or no GPU.
bool nccl_built();
std::unique_ptr<Comm> make_nccl_comm();

}  // namespace memlayers::dist
