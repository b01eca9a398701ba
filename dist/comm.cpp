// The communicator's engine-independent parts: the configuration check and the single-rank
// stand-in (dist/comm.h).
#include "dist/comm.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>

#include "common/error.h"
#include "simt/memory.h"

namespace memlayers::dist {

void check_agreement(Comm& comm, std::string_view what, const std::string& value) {
  const int P = comm.size();
  if (P == 1) return;
  // Lengths first, then the texts, all-gathered so that every rank reaches the same verdict.
  double len = static_cast<double>(value.size());
  std::vector<double> lens(static_cast<std::size_t>(P), 0.0);
  lens[static_cast<std::size_t>(comm.rank())] = len;
  comm.all_reduce_sum_host(lens.data(), P);
  std::vector<int64_t> bytes(static_cast<std::size_t>(P));
  for (int r = 0; r < P; ++r) bytes[r] = static_cast<int64_t>(lens[r]);
  const int64_t total = std::accumulate(bytes.begin(), bytes.end(), int64_t{0});
  std::string all(static_cast<std::size_t>(total), '\0');
  // all_gather serves the communicator's memory; a host-only engine may differ (nccl), so the
  // texts travel as fp64 host scalars when the engine's buffers are not host memory.
  if (comm.name() == "nccl") {
    std::vector<double> chars(static_cast<std::size_t>(total), 0.0);
    int64_t off = 0;
    for (int r = 0; r < comm.rank(); ++r) off += bytes[r];
    for (std::size_t i = 0; i < value.size(); ++i)
      chars[static_cast<std::size_t>(off) + i] = static_cast<unsigned char>(value[i]);
    comm.all_reduce_sum_host(chars.data(), total);
    for (int64_t i = 0; i < total; ++i) all[i] = static_cast<char>(chars[i]);
  } else {
    comm.all_gather(value.data(), all.data(), bytes);
  }
  const std::string first = all.substr(0, static_cast<std::size_t>(bytes[0]));
  int64_t off = bytes[0];
  for (int r = 1; r < P; ++r) {
    const std::string mine = all.substr(static_cast<std::size_t>(off), bytes[r]);
    off += bytes[r];
    if (mine != first)
      fail(
          "{} differs across ranks: rank 0 has '{}', rank {} has '{}' (every rank of the group "
          "must run the same configuration)",
          what, first, r, mine);
  }
}

namespace {

class SingleComm final : public Comm {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string name() const override { return "single"; }
  void all_gather(const void* send, void* recv, const std::vector<int64_t>& bytes) override {
    check_counts("all_gather", bytes);
    copy(recv, send, bytes[0]);
  }
  void all_to_all(const void* send, const std::vector<int64_t>& send_bytes, void* recv,
                  const std::vector<int64_t>& recv_bytes) override {
    check_counts("all_to_all", send_bytes);
    check_counts("all_to_all", recv_bytes);
    MEMLAYERS_CHECK(send_bytes[0] == recv_bytes[0],
                    "all_to_all: rank 0 sends {} bytes to itself but expects {}", send_bytes[0],
                    recv_bytes[0]);
    copy(recv, send, send_bytes[0]);
  }
  void reduce_scatter_sum(const float* send, float* recv,
                          const std::vector<int64_t>& counts) override {
    check_counts("reduce_scatter_sum", counts);
    copy(recv, send, counts[0] * static_cast<int64_t>(sizeof(float)));
  }
  void all_reduce_sum(float*, int64_t count) override {
    MEMLAYERS_CHECK(count >= 0, "all_reduce_sum: count = {}: accepted count >= 0", count);
  }
  void all_reduce_sum_host(double*, int64_t count) override {
    MEMLAYERS_CHECK(count >= 0, "all_reduce_sum_host: count = {}: accepted count >= 0", count);
  }
  void barrier() override {}
  [[noreturn]] void abort_group(const std::string& why, int code) override {
    std::fprintf(stderr, "memlayers: rank 0 of 1: %s\n", why.c_str());
    std::fflush(stderr);
    std::_Exit(code);
  }

 private:
  static void check_counts(const char* call, const std::vector<int64_t>& c) {
    MEMLAYERS_CHECK(c.size() == 1 && c[0] >= 0,
                    "{}: {} counts given, the first {}: accepted one count >= 0 per rank (1 rank)",
                    call, c.size(), c.empty() ? int64_t{-1} : c[0]);
  }
  static void copy(void* dst, const void* src, int64_t bytes) {
    const simt::DeviceAccess buffers;  // simt's device memory under the simt backend
    if (bytes > 0 && dst != src) std::memmove(dst, src, static_cast<std::size_t>(bytes));
  }
};

}  // namespace

std::unique_ptr<Comm> make_single_comm() { return std::make_unique<SingleComm>(); }

bool launched_by_mpi() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"})
    if (std::getenv(v) != nullptr) return true;
  return false;
}

}  // namespace memlayers::dist
