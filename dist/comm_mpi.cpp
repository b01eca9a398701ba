// The MPI communicator (dist/comm.h) over MPI_COMM_WORLD, for CPU ranks: host memory.
//
// The sums are deterministic and the same on every rank by construction rather than by the MPI
// library's choice of algorithm: reduce_scatter_sum exchanges the blocks (MPI_Alltoallv) and each
// rank adds the P blocks it received in rank order; all_reduce_sum is that reduce-scatter followed
// by an all-gather (the bandwidth of a ring all-reduce, 2·(P−1)/P of the data per rank).
// Errors return (MPI_ERRORS_RETURN) and become memlayers::Error naming the call.
// Under the simt backend the buffers are simt's device memory and MPI stands for NCCL's device
// collectives, so the calls that reach them open a simt::DeviceAccess (simt/memory.h).
#include <mpi.h>

#include <algorithm>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <vector>

#include "common/error.h"
#include "dist/comm.h"
#include "dist/mpi_detail.h"
#include "simt/memory.h"

namespace memlayers::dist {

bool mpi_built() { return true; }

namespace detail {

void check_mpi(int rc, const char* call) {
  if (rc == MPI_SUCCESS) return;
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  fail("{} failed: {}", call, std::string(msg, static_cast<std::size_t>(len)));
}

void init_mpi_once() {
  static std::once_flag once;
  std::call_once(once, [] {
    int initialised = 0;
    MPI_Initialized(&initialised);
    if (!initialised) {
      int provided = 0;
      // Only the main thread calls MPI; the cpu backend's worker threads never do.
      check_mpi(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided),
                "MPI_Init_thread");
      std::atexit([] {
        int finalised = 0;
        MPI_Finalized(&finalised);
        if (!finalised) MPI_Finalize();
      });
    }
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  });
}

}  // namespace detail

namespace {

using detail::check_mpi;

// MPI counts are int: a larger message is refused with its size rather than truncated.
int as_count(int64_t n, const char* call) {
  MEMLAYERS_CHECK(n >= 0 && n <= INT_MAX,
                  "{}: a count of {} does not fit MPI's int counts: accepted 0 <= count <= {} "
                  "per rank pair",
                  call, n, INT_MAX);
  return static_cast<int>(n);
}

struct Displacements {
  std::vector<int> counts, displs;
  Displacements(const std::vector<int64_t>& c, int P, const char* call) {
    MEMLAYERS_CHECK(static_cast<int>(c.size()) == P,
                    "{}: {} counts given for a group of {} ranks: accepted one per rank", call,
                    c.size(), P);
    int64_t off = 0;
    for (int64_t n : c) {
      counts.push_back(as_count(n, call));
      displs.push_back(as_count(off, call));
      off += n;
    }
    as_count(off, call);
  }
};

class MpiComm final : public Comm {
 public:
  MpiComm() {
    detail::init_mpi_once();
    check_mpi(MPI_Comm_rank(MPI_COMM_WORLD, &rank_), "MPI_Comm_rank");
    check_mpi(MPI_Comm_size(MPI_COMM_WORLD, &size_), "MPI_Comm_size");
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string name() const override { return "mpi"; }

  void all_gather(const void* send, void* recv, const std::vector<int64_t>& bytes) override {
    const simt::DeviceAccess buffers;
    const Displacements d(bytes, size_, "all_gather");
    check_mpi(MPI_Allgatherv(send, d.counts[rank_], MPI_BYTE, recv, d.counts.data(),
                             d.displs.data(), MPI_BYTE, MPI_COMM_WORLD),
              "MPI_Allgatherv");
  }

  void all_to_all(const void* send, const std::vector<int64_t>& send_bytes, void* recv,
                  const std::vector<int64_t>& recv_bytes) override {
    const simt::DeviceAccess buffers;
    const Displacements s(send_bytes, size_, "all_to_all"), r(recv_bytes, size_, "all_to_all");
    check_mpi(MPI_Alltoallv(send, s.counts.data(), s.displs.data(), MPI_BYTE, recv, r.counts.data(),
                            r.displs.data(), MPI_BYTE, MPI_COMM_WORLD),
              "MPI_Alltoallv");
  }

  void reduce_scatter_sum(const float* send, float* recv,
                          const std::vector<int64_t>& counts) override {
    const simt::DeviceAccess buffers;
    MEMLAYERS_CHECK(static_cast<int>(counts.size()) == size_,
                    "reduce_scatter_sum: {} counts given for a group of {} ranks: accepted one "
                    "per rank",
                    counts.size(), size_);
    const int64_t mine = counts[rank_];
    std::vector<int64_t> send_bytes(counts.size()), recv_bytes(counts.size());
    for (std::size_t s = 0; s < counts.size(); ++s) {
      send_bytes[s] = counts[s] * 4;
      recv_bytes[s] = mine * 4;
    }
    std::vector<float> blocks(static_cast<std::size_t>(mine * size_));
    all_to_all(send, send_bytes, blocks.data(), recv_bytes);
    for (int64_t i = 0; i < mine; ++i) {
      float sum = blocks[i];
      for (int r = 1; r < size_; ++r) sum += blocks[r * mine + i];
      recv[i] = sum;
    }
  }

  void all_reduce_sum(float* data, int64_t count) override {
    const simt::DeviceAccess buffers;
    MEMLAYERS_CHECK(count >= 0, "all_reduce_sum: count = {}: accepted count >= 0", count);
    std::vector<int64_t> counts(static_cast<std::size_t>(size_)), bytes(counts.size());
    for (int r = 0; r < size_; ++r) {
      counts[r] = count / size_ + (r < count % size_ ? 1 : 0);
      bytes[r] = counts[r] * 4;
    }
    std::vector<float> mine(static_cast<std::size_t>(counts[rank_]));
    reduce_scatter_sum(data, mine.data(), counts);
    all_gather(mine.data(), data, bytes);
  }

  void all_reduce_sum_host(double* data, int64_t count) override {
    // Few values (losses, counts, norms): gathered whole and summed in rank order.
    MEMLAYERS_CHECK(count >= 0, "all_reduce_sum_host: count = {}: accepted count >= 0", count);
    std::vector<double> all(static_cast<std::size_t>(count * size_));
    check_mpi(MPI_Allgather(data, as_count(count, "all_reduce_sum_host"), MPI_DOUBLE, all.data(),
                            static_cast<int>(count), MPI_DOUBLE, MPI_COMM_WORLD),
              "MPI_Allgather");
    for (int64_t i = 0; i < count; ++i) {
      double sum = all[i];
      for (int r = 1; r < size_; ++r) sum += all[r * count + i];
      data[i] = sum;
    }
  }

  void barrier() override { check_mpi(MPI_Barrier(MPI_COMM_WORLD), "MPI_Barrier"); }

  [[noreturn]] void abort_group(const std::string& why, int code) override {
    std::fprintf(stderr, "memlayers: rank %d of %d: %s\n", rank_, size_, why.c_str());
    std::fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, code);
    std::_Exit(code);
  }

 private:
  int rank_ = 0, size_ = 1;
};

}  // namespace

std::unique_ptr<Comm> make_mpi_comm() { return std::make_unique<MpiComm>(); }

}  // namespace memlayers::dist
