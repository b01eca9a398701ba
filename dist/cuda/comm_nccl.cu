// The NCCL communicator (dist/comm.h) for GPU ranks: the group of every MPI process
// (MPI_COMM_WORLD), one GPU per rank, device memory, every collective on the default stream and
// complete (the stream synchronised) when the call returns. MPI bootstraps it: each rank takes the
// GPU (node-local rank % device count), rank 0's ncclUniqueId is broadcast over MPI, then
// ncclCommInitRank. It mirrors dist/comm_mpi.cpp:
// - all_gather and all_to_all carry uneven byte counts as grouped ncclSend/ncclRecv
//   (ncclGroupStart/End: NCCL's documented way for variable sizes); a rank's own block is a
//   device-to-device copy;
// - reduce_scatter_sum is deterministic and the same on every rank by construction, not by NCCL's
//   choice of algorithm: the blocks are exchanged (that all-to-all, into a device workspace) and
//   a small kernel adds the P blocks in rank order; all_reduce_sum is that reduce-scatter followed
//   by an all-gather;
// - all_reduce_sum_host (host doubles) and barrier go over MPI.
// Errors of the CUDA runtime, NCCL (its error string and last error) and MPI become
// memlayers::Error naming the call.
#include <mpi.h>
#include <nccl.h>

#include <climits>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <vector>

#include "common/cuda.cuh"
#include "dist/comm.h"
#include "dist/mpi_detail.h"

namespace memlayers::dist {

bool nccl_built() { return true; }

namespace {

using detail::check_mpi;
using detail::init_mpi_once;

void check_nccl(ncclResult_t rc, const char* call, ncclComm_t comm) {
  if (rc == ncclSuccess) return;
  const char* last = ncclGetLastError(comm);
  fail("{} failed: {} ({})", call, ncclGetErrorString(rc),
       last != nullptr && *last != '\0' ? last : "NCCL gave no further detail");
}

// recv[i] = blocks[i] + blocks[n + i] + ... + blocks[(ranks-1)·n + i], added left to right in
// fp32: rank 0's term first, the order the contract fixes (the compiler does not reassociate).
__global__ void sum_blocks_in_rank_order(const float* __restrict__ blocks, float* __restrict__ recv,
                                         int64_t n, int ranks) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    float sum = blocks[i];
    for (int r = 1; r < ranks; ++r) sum += blocks[r * n + i];
    recv[i] = sum;
  }
}

// Byte offsets of the blocks of `counts` in rank order, after checking one count >= 0 per rank
// (before any data moves, so every rank refuses the same bad call alike).
std::vector<int64_t> offsets_of(const std::vector<int64_t>& counts, int P, const char* call) {
  MEMLAYERS_CHECK(static_cast<int>(counts.size()) == P,
                  "{}: {} counts given for a group of {} ranks: accepted one per rank", call,
                  counts.size(), P);
  std::vector<int64_t> off(counts.size());
  int64_t at = 0;
  for (std::size_t r = 0; r < counts.size(); ++r) {
    MEMLAYERS_CHECK(counts[r] >= 0, "{}: count {} for rank {}: accepted counts >= 0", call,
                    counts[r], r);
    off[r] = at;
    at += counts[r];
  }
  return off;
}

// A device buffer that only grows (the workspaces of the sums).
struct DeviceBuffer {
  void* ptr = nullptr;
  std::size_t bytes = 0;
  void* at_least(std::size_t want) {
    if (want > bytes) {
      if (ptr) MEMLAYERS_CUDA_CHECK(cudaFree(ptr));
      ptr = nullptr;
      bytes = 0;
      MEMLAYERS_CUDA_CHECK(cudaMalloc(&ptr, want));
      bytes = want;
    }
    return ptr;
  }
  ~DeviceBuffer() {
    if (ptr) cudaFree(ptr);  // at exit the runtime may be unloading already: nothing to report
  }
};

class NcclComm final : public Comm {
 public:
  NcclComm() : host_(make_mpi_comm()) {
    init_mpi_once();
    check_mpi(MPI_Comm_rank(MPI_COMM_WORLD, &rank_), "MPI_Comm_rank");
    check_mpi(MPI_Comm_size(MPI_COMM_WORLD, &size_), "MPI_Comm_size");
    choose_device();
    ncclUniqueId id{};
    if (rank_ == 0) check_nccl(ncclGetUniqueId(&id), "ncclGetUniqueId", nullptr);
    check_mpi(MPI_Bcast(&id, static_cast<int>(sizeof id), MPI_BYTE, 0, MPI_COMM_WORLD),
              "MPI_Bcast (ncclUniqueId)");
    check_nccl(ncclCommInitRank(&comm_, size_, id, rank_), "ncclCommInitRank", nullptr);
  }
  ~NcclComm() override {
    if (comm_) ncclCommDestroy(comm_);  // at exit: nothing useful to report
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string name() const override { return "nccl"; }

  void all_gather(const void* send, void* recv, const std::vector<int64_t>& bytes) override {
    const std::vector<int64_t> off = offsets_of(bytes, size_, "all_gather");
    const auto* src = static_cast<const char*>(send);
    auto* dst = static_cast<char*>(recv);
    copy_own(dst + off[rank_], src, bytes[rank_]);
    check_nccl(ncclGroupStart(), "ncclGroupStart (all_gather)", comm_);
    for (int r = 0; r < size_; ++r) {
      if (r == rank_) continue;
      if (bytes[rank_] > 0) send_to(src, bytes[rank_], r, "ncclSend (all_gather)");
      if (bytes[r] > 0) recv_from(dst + off[r], bytes[r], r, "ncclRecv (all_gather)");
    }
    check_nccl(ncclGroupEnd(), "ncclGroupEnd (all_gather)", comm_);
    sync("all_gather");
  }

  void all_to_all(const void* send, const std::vector<int64_t>& send_bytes, void* recv,
                  const std::vector<int64_t>& recv_bytes) override {
    const std::vector<int64_t> soff = offsets_of(send_bytes, size_, "all_to_all");
    const std::vector<int64_t> roff = offsets_of(recv_bytes, size_, "all_to_all");
    MEMLAYERS_CHECK(send_bytes[rank_] == recv_bytes[rank_],
                    "all_to_all: rank {} sends {} bytes to itself but expects {}: accepted equal "
                    "counts",
                    rank_, send_bytes[rank_], recv_bytes[rank_]);
    const auto* src = static_cast<const char*>(send);
    auto* dst = static_cast<char*>(recv);
    copy_own(dst + roff[rank_], src + soff[rank_], send_bytes[rank_]);
    check_nccl(ncclGroupStart(), "ncclGroupStart (all_to_all)", comm_);
    for (int r = 0; r < size_; ++r) {
      if (r == rank_) continue;
      if (send_bytes[r] > 0) send_to(src + soff[r], send_bytes[r], r, "ncclSend (all_to_all)");
      if (recv_bytes[r] > 0) recv_from(dst + roff[r], recv_bytes[r], r, "ncclRecv (all_to_all)");
    }
    check_nccl(ncclGroupEnd(), "ncclGroupEnd (all_to_all)", comm_);
    sync("all_to_all");
  }

  void reduce_scatter_sum(const float* send, float* recv,
                          const std::vector<int64_t>& counts) override {
    offsets_of(counts, size_, "reduce_scatter_sum");
    const int64_t mine = counts[rank_];
    std::vector<int64_t> send_bytes(counts.size()), recv_bytes(counts.size());
    for (std::size_t s = 0; s < counts.size(); ++s) {
      send_bytes[s] = counts[s] * 4;
      recv_bytes[s] = mine * 4;
    }
    auto* blocks = static_cast<float*>(
        blocks_.at_least(static_cast<std::size_t>(mine * size_) * sizeof(float)));
    all_to_all(send, send_bytes, blocks, recv_bytes);
    if (mine > 0) {
      constexpr unsigned kThreads = 256;
      launch_kernel("sum_blocks_in_rank_order", sum_blocks_in_rank_order,
                    dim3(grid_cap(ceil_div(mine, int64_t{kThreads}))), dim3(kThreads), 0, stream(),
                    static_cast<const float*>(blocks), recv, mine, size_);
    }
    sync("reduce_scatter_sum");
  }

  void all_reduce_sum(float* data, int64_t count) override {
    MEMLAYERS_CHECK(count >= 0, "all_reduce_sum: count = {}: accepted count >= 0", count);
    std::vector<int64_t> counts(static_cast<std::size_t>(size_)), bytes(counts.size());
    for (int r = 0; r < size_; ++r) {
      counts[r] = count / size_ + (r < count % size_ ? 1 : 0);
      bytes[r] = counts[r] * 4;
    }
    auto* part = static_cast<float*>(
        part_.at_least(static_cast<std::size_t>(counts[rank_]) * sizeof(float)));
    reduce_scatter_sum(data, part, counts);
    all_gather(part, data, bytes);
  }

  void all_reduce_sum_host(double* data, int64_t count) override {
    host_->all_reduce_sum_host(data, count);  // few host values: over MPI
  }

  void barrier() override {
    sync("barrier");
    host_->barrier();
  }

  [[noreturn]] void abort_group(const std::string& why, int code) override {
    std::fprintf(stderr, "memlayers: rank %d of %d: %s\n", rank_, size_, why.c_str());
    std::fflush(stderr);
    if (comm_) ncclCommAbort(comm_);  // frees this rank's peers from NCCL kernels in flight
    comm_ = nullptr;
    MPI_Abort(MPI_COMM_WORLD, code);
    std::_Exit(code);
  }

 private:
  std::unique_ptr<Comm> host_;  // the same group over MPI, for host values and the barrier

  // The GPU of this rank: its rank among the ranks of its node, modulo the node's device count.
  // Every rank learns whether every rank found one before any NCCL call, so a rank without a GPU
  // ends the construction with an error on every rank instead of leaving the others in
  // ncclCommInitRank.
  void choose_device() {
    MPI_Comm node;
    check_mpi(
        MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node),
        "MPI_Comm_split_type (ranks of this node)");
    int local = 0, local_size = 1;
    check_mpi(MPI_Comm_rank(node, &local), "MPI_Comm_rank (node)");
    check_mpi(MPI_Comm_size(node, &local_size), "MPI_Comm_size (node)");
    MPI_Comm_free(&node);
    std::string problem;
    int devices = 0;
    if (const cudaError_t err = cudaGetDeviceCount(&devices); err != cudaSuccess) {
      problem = fmt::format("cudaGetDeviceCount failed: {}", cudaGetErrorString(err));
    } else if (devices == 0) {
      problem = "no CUDA device on this node: the nccl communicator needs one GPU per rank";
    } else if (local_size > devices) {
      problem = fmt::format(
          "{} ranks on this node share {} GPU(s): NCCL refuses two ranks on one GPU: accepted "
          "at most {} rank(s) per node",
          local_size, devices, devices);
    } else if (const cudaError_t err2 = cudaSetDevice(local % devices); err2 != cudaSuccess) {
      problem =
          fmt::format("cudaSetDevice({}) failed: {}", local % devices, cudaGetErrorString(err2));
    }
    // The lowest rank with a problem, or size_ when there is none.
    int mine = problem.empty() ? size_ : rank_, first = size_;
    check_mpi(MPI_Allreduce(&mine, &first, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD),
              "MPI_Allreduce (device check)");
    if (!problem.empty()) fail("make_nccl_comm: rank {} of {}: {}", rank_, size_, problem);
    if (first < size_)
      fail(
          "make_nccl_comm: rank {} of {} could not take a GPU (it reports why); every rank "
          "stops",
          first, size_);
  }

  static Stream stream() { return nullptr; }  // the default stream, as comm.h says

  void copy_own(void* dst, const void* src, int64_t bytes) {
    if (bytes > 0 && dst != src)
      MEMLAYERS_CUDA_CHECK(cudaMemcpyAsync(dst, src, static_cast<std::size_t>(bytes),
                                           cudaMemcpyDeviceToDevice, nullptr));
  }
  void send_to(const void* src, int64_t bytes, int peer, const char* call) {
    check_nccl(ncclSend(src, static_cast<std::size_t>(bytes), ncclUint8, peer, comm_, nullptr),
               call, comm_);
  }
  void recv_from(void* dst, int64_t bytes, int peer, const char* call) {
    check_nccl(ncclRecv(dst, static_cast<std::size_t>(bytes), ncclUint8, peer, comm_, nullptr),
               call, comm_);
  }
  // The contract: collectives are complete on return. An error NCCL met while the stream ran
  // (a peer or the network failing) is reported here too.
  void sync(const char* call) {
    const cudaError_t err = cudaStreamSynchronize(nullptr);
    if (err != cudaSuccess)
      fail("{}: cudaStreamSynchronize failed: {} ({})", call, cudaGetErrorName(err),
           cudaGetErrorString(err));
    ncclResult_t async = ncclSuccess;
    check_nccl(ncclCommGetAsyncError(comm_, &async), "ncclCommGetAsyncError", comm_);
    if (async != ncclSuccess)
      check_nccl(async, fmt::format("{} (asynchronous NCCL error)", call).c_str(), comm_);
  }

  int rank_ = 0, size_ = 1;
  ncclComm_t comm_ = nullptr;
  DeviceBuffer blocks_, part_;
};

}  // namespace

std::unique_ptr<Comm> make_nccl_comm() { return std::make_unique<NcclComm>(); }

}  // namespace memlayers::dist
