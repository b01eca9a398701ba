// The NCCL communicator (dist/cuda/comm_nccl.cu) on GPUs: every collective on device buffers
// against the expectations of tests/dist/comm_test.cpp (each rank's data is a function of its
// rank, so every rank computes what every collective must return). A plain executable, not a
// gtest: it prints one PASS or FAIL line per check and rank, and exits non-zero when any check
// failed on any rank; with no usable GPU it prints "no GPU: skipped" and exits 0 (ctest reports
// it skipped).
//
//   cmake --build build/<dir> --target dist_nccl_comm_check
//   mpirun -np 1 build/<dir>/tests/dist/gpu/dist_nccl_comm_check      # one rank per GPU
//
// NCCL refuses two ranks on one GPU, so -np is at most the number of GPUs. At -np 1 no byte goes
// to a peer: the run checks the NCCL set-up, the own-block copies, the rank-order sum kernel, the
// host sums and the refusals; -np 2 and more (several GPUs) also check ncclSend/ncclRecv.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "common/error.h"
#include "dist/comm.h"
#include "tests/dist/comm_data.h"

namespace {

using memlayers::Error;
using memlayers::fail;
using memlayers::dist::Comm;

void cuda_ok(cudaError_t err, const char* call) {
  if (err != cudaSuccess)
    fail("{} failed: {} ({})", call, cudaGetErrorName(err), cudaGetErrorString(err));
}

// A device array of T, filled with a poison byte pattern until written.
template <class T>
class Device {
 public:
  explicit Device(std::size_t n) : n_(n) {
    cuda_ok(cudaMalloc(&p_, n ? n * sizeof(T) : 1), "cudaMalloc");
    poison();
  }
  Device(const Device&) = delete;
  Device& operator=(const Device&) = delete;
  ~Device() { cudaFree(p_); }
  T* get() { return static_cast<T*>(p_); }
  void poison() { cuda_ok(cudaMemset(p_, 0xEE, n_ ? n_ * sizeof(T) : 1), "cudaMemset"); }
  void put(const std::vector<T>& v) {
    cuda_ok(cudaMemcpy(p_, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice), "cudaMemcpy");
  }
  std::vector<T> host() const {
    std::vector<T> v(n_);
    cuda_ok(cudaMemcpy(v.data(), p_, n_ * sizeof(T), cudaMemcpyDeviceToHost), "cudaMemcpy");
    return v;
  }

 private:
  void* p_ = nullptr;
  std::size_t n_;
};

using memlayers::dist::testing::data_of;

// The mismatches of got against want, bitwise: their count and the first five, or "" when none.
template <class T>
std::string mismatches(const std::vector<T>& got, const std::vector<T>& want) {
  if (got.size() != want.size())
    return fmt::format("{} elements, expected {}", got.size(), want.size());
  std::string first;
  std::size_t count = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    if (std::memcmp(&got[i], &want[i], sizeof(T)) == 0) continue;
    if (++count <= 5) first += fmt::format(" [{}] {} (expected {})", i, +got[i], +want[i]);
  }
  return count == 0 ? ""
                    : fmt::format("{} of {} elements differ; first:{}", count, got.size(), first);
}

// ---- the checks: each makes its collectives first and compares after, on every rank ----

std::string rank_and_size(Comm& g) {
  double v[2] = {1.0, static_cast<double>(g.rank())};
  g.all_reduce_sum_host(v, 2);
  const int P = g.size();
  if (v[0] != P || v[1] != P * (P - 1) / 2.0)
    return fmt::format("all_reduce_sum_host gave {} ranks, rank sum {}: expected {}, {}", v[0],
                       v[1], P, P * (P - 1) / 2.0);
  return "";
}

std::string all_gather_uneven_and_empty(Comm& g) {
  const int P = g.size();
  // Rank r sends 3·r + 1 bytes, and with 4 ranks rank 2 none (comm_test.cpp's counts).
  auto bytes_of = [&](int r) { return (P == 4 && r == 2) ? int64_t{0} : int64_t{3 * r + 1}; };
  std::vector<int64_t> bytes(P);
  for (int r = 0; r < P; ++r) bytes[r] = bytes_of(r);
  auto pattern = [](int r, int64_t i) { return static_cast<unsigned char>(r * 16 + i); };
  std::vector<unsigned char> mine(static_cast<std::size_t>(bytes[g.rank()])), want;
  for (std::size_t i = 0; i < mine.size(); ++i)
    mine[i] = pattern(g.rank(), static_cast<int64_t>(i));
  for (int r = 0; r < P; ++r)
    for (int64_t i = 0; i < bytes[r]; ++i) want.push_back(pattern(r, i));
  Device<unsigned char> send(mine.size()), recv(want.size());
  send.put(mine);
  g.all_gather(send.get(), recv.get(), bytes);
  return mismatches(recv.host(), want);
}

std::string all_to_all_personalised(Comm& g) {
  const int P = g.size(), me = g.rank();
  // Rank r sends (r + 2·s) % 5 floats to rank s, each encoding (r, s, i); with P = 1 that is 0:
  // a second round at (r + 2·s) % 5 + 3 moves data to oneself too.
  std::string out;
  for (int extra : {0, 3}) {
    auto n_of = [&](int r, int s) { return int64_t{(r + 2 * s) % 5 + extra}; };
    std::vector<int64_t> send_bytes(P), recv_bytes(P);
    std::vector<float> sent, want;
    for (int s = 0; s < P; ++s) {
      send_bytes[s] = n_of(me, s) * 4;
      recv_bytes[s] = n_of(s, me) * 4;
      for (int64_t i = 0; i < n_of(me, s); ++i) sent.push_back(float(100 * me + 10 * s + i));
      for (int64_t i = 0; i < n_of(s, me); ++i) want.push_back(float(100 * s + 10 * me + i));
    }
    Device<float> send(sent.size()), recv(want.size());
    send.put(sent);
    g.all_to_all(send.get(), send_bytes, recv.get(), recv_bytes);
    const std::string bad = mismatches(recv.host(), want);
    if (!bad.empty())
      out +=
          fmt::format("{}with {} extra floats per pair: {}", out.empty() ? "" : "; ", extra, bad);
  }
  return out;
}

// Block r of every rank summed in rank order (rank 0's term first), as the host computes it.
std::string reduce_scatter_sums_in_rank_order(Comm& g, int64_t base) {
  const int P = g.size(), me = g.rank();
  std::vector<int64_t> counts(P);
  for (int r = 0; r < P; ++r) counts[r] = base + 31 * r;  // uneven, not multiples of anything
  const int64_t total = std::accumulate(counts.begin(), counts.end(), int64_t{0});
  Device<float> send(static_cast<std::size_t>(total)), recv(static_cast<std::size_t>(counts[me]));
  send.put(data_of(me, total, 1));
  g.reduce_scatter_sum(send.get(), recv.get(), counts);
  const std::vector<float> got = recv.host();
  int64_t off = 0;
  for (int r = 0; r < me; ++r) off += counts[r];
  std::vector<std::vector<float>> all(P);
  for (int r = 0; r < P; ++r) all[r] = data_of(r, total, 1);
  std::vector<float> want(static_cast<std::size_t>(counts[me]));
  for (int64_t i = 0; i < counts[me]; ++i) {
    float w = all[0][off + i];
    for (int r = 1; r < P; ++r) w += all[r][off + i];
    want[i] = w;
  }
  // The same call again must give the same bits (deterministic by construction).
  recv.poison();
  g.reduce_scatter_sum(send.get(), recv.get(), counts);
  const std::string again = mismatches(recv.host(), got);
  const std::string bad = mismatches(got, want);
  if (!bad.empty()) return "not the rank-ordered fp32 sum: " + bad;
  if (!again.empty()) return "a second run differs from the first: " + again;
  return "";
}

std::string all_reduce_same_bits_everywhere(Comm& g, int64_t n) {
  const int P = g.size();
  Device<float> data(static_cast<std::size_t>(n));
  data.put(data_of(g.rank(), n, 2));
  g.all_reduce_sum(data.get(), n);
  std::vector<std::vector<float>> all(P);
  for (int r = 0; r < P; ++r) all[r] = data_of(r, n, 2);
  std::vector<float> want(static_cast<std::size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    float w = all[0][i];
    for (int r = 1; r < P; ++r) w += all[r][i];
    want[i] = w;
  }
  return mismatches(data.host(), want);
}

std::string agreement(Comm& g) {
  try {
    memlayers::dist::check_agreement(g, "the config", "d_model 32, layers 4");
  } catch (const Error& e) {
    return std::string("the same config on every rank was refused: ") + e.what();
  }
  if (g.size() == 1) return "";
  try {
    memlayers::dist::check_agreement(g, "the config", g.rank() == 1 ? "d_model 64" : "d_model 32");
    return "a config that differs on rank 1 was accepted";
  } catch (const Error& e) {
    const std::string want =
        "the config differs across ranks: rank 0 has 'd_model 32', rank 1 has 'd_model 64'";
    if (std::string(e.what()).find(want) == std::string::npos)
      return fmt::format("the error '{}' does not say '{}'", e.what(), want);
  }
  return "";
}

std::string bad_counts_are_refused(Comm& g) {
  std::vector<int64_t> wrong(static_cast<std::size_t>(g.size() + 1), 4);
  std::vector<int64_t> negative(static_cast<std::size_t>(g.size()), -4);
  Device<float> x(8);
  std::string out;
  auto expect_refused = [&](const char* what, auto&& call) {
    try {
      call();
      out += fmt::format("{}{} was accepted", out.empty() ? "" : "; ", what);
    } catch (const Error&) {
    }
  };
  expect_refused("all_gather with P + 1 counts", [&] { g.all_gather(x.get(), x.get(), wrong); });
  expect_refused("all_gather with negative counts",
                 [&] { g.all_gather(x.get(), x.get(), negative); });
  expect_refused("all_to_all with P + 1 counts",
                 [&] { g.all_to_all(x.get(), wrong, x.get(), wrong); });
  expect_refused("reduce_scatter_sum with P + 1 counts",
                 [&] { g.reduce_scatter_sum(x.get(), x.get(), wrong); });
  expect_refused("all_reduce_sum of -1 floats", [&] { g.all_reduce_sum(x.get(), -1); });
  // A group still usable after the refusals.
  g.barrier();
  return out;
}

}  // namespace

int main() {
  int devices = 0;
  if (const cudaError_t err = cudaGetDeviceCount(&devices); err != cudaSuccess || devices == 0) {
    std::printf("no GPU: skipped (%s)\n",
                err != cudaSuccess ? cudaGetErrorString(err) : "cudaGetDeviceCount says 0");
    return 0;
  }
  if (!memlayers::dist::nccl_built()) {
    std::printf(
        "this build has no NCCL (it needs MPI and the toolkit's libnccl at configure): "
        "nothing to check\n");
    return 1;
  }
  std::unique_ptr<Comm> comm;
  try {
    comm = memlayers::dist::make_nccl_comm();
  } catch (const std::exception& e) {
    // Every rank throws alike from make_nccl_comm (its device check is collective).
    std::fprintf(stderr, "nccl_comm_check: %s\n", e.what());
    return 1;
  }
  Comm& g = *comm;
  try {
    struct Check {
      std::string name;
      std::string (*run)(Comm&);
    };
    const Check checks[] = {
        {"RankAndSize", rank_and_size},
        {"AllGatherUnevenAndEmpty", all_gather_uneven_and_empty},
        {"AllToAllPersonalised", all_to_all_personalised},
        {"ReduceScatterSumsInRankOrder/257",
         [](Comm& c) { return reduce_scatter_sums_in_rank_order(c, 257); }},
        {"ReduceScatterSumsInRankOrder/1000003",
         [](Comm& c) { return reduce_scatter_sums_in_rank_order(c, 1000003); }},
        {"AllReduceSameBitsEverywhere/1001",
         [](Comm& c) { return all_reduce_same_bits_everywhere(c, 1001); }},
        {"AllReduceSameBitsEverywhere/3000017",
         [](Comm& c) { return all_reduce_same_bits_everywhere(c, 3000017); }},
        {"AllReduceSameBitsEverywhere/0",
         [](Comm& c) { return all_reduce_same_bits_everywhere(c, 0); }},
        {"AgreementPassesAndNamesTheRankThatDiffers", agreement},
        {"BadCountsAreRefused", bad_counts_are_refused},
    };
    double failed = 0;
    for (const Check& c : checks) {
      const std::string why = c.run(g);
      if (why.empty()) {
        std::printf("rank %d of %d: PASS %s\n", g.rank(), g.size(), c.name.c_str());
      } else {
        std::printf("rank %d of %d: FAIL %s: %s\n", g.rank(), g.size(), c.name.c_str(),
                    why.c_str());
        failed += 1;
      }
      std::fflush(stdout);
    }
    g.all_reduce_sum_host(&failed, 1);
    if (g.rank() == 0)
      std::printf(
          "nccl_comm_check: %s on %d rank(s) (%s)\n", failed == 0 ? "every check passed" : "FAILED",
          g.size(),
          failed == 0 ? "nccl" : fmt::format("{} failed check(s) over all ranks", failed).c_str());
    return failed == 0 ? 0 : 1;
  } catch (const std::exception& e) {
    g.abort_group(e.what());
  }
}
