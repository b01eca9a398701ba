// The communicator (dist/comm.h) on the group the test runs in (1 rank alone, 2 or 4 under
// mpirun): every collective against what each rank computes itself from every rank's inputs
// (each rank's data is a function of its rank, so every rank knows all of them).
#include <gtest/gtest.h>

#include <cstdint>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "common/error.h"
#include "group.h"
#include "tests/dist/comm_data.h"

namespace memlayers::dist {
namespace {

using testing::group;

using memlayers::dist::testing::data_of;

TEST(Comm, RankAndSize) {
  Comm& g = group();
  EXPECT_GE(g.size(), 1);
  EXPECT_GE(g.rank(), 0);
  EXPECT_LT(g.rank(), g.size());
  double ranks[2] = {1.0, static_cast<double>(g.rank())};
  g.all_reduce_sum_host(ranks, 2);
  EXPECT_EQ(ranks[0], g.size());
  EXPECT_EQ(ranks[1], g.size() * (g.size() - 1) / 2.0);
}

TEST(Comm, AllGatherUnevenAndEmpty) {
  Comm& g = group();
  const int P = g.size();
  // Rank r sends 3·r + 1 bytes (rank 0 one, the last the most), and with 4 ranks rank 2 none.
  auto bytes_of = [&](int r) { return (P == 4 && r == 2) ? int64_t{0} : int64_t{3 * r + 1}; };
  std::vector<int64_t> bytes(P);
  for (int r = 0; r < P; ++r) bytes[r] = bytes_of(r);
  std::vector<unsigned char> mine(static_cast<std::size_t>(bytes[g.rank()]));
  for (std::size_t i = 0; i < mine.size(); ++i)
    mine[i] = static_cast<unsigned char>(g.rank() * 16 + i);
  const int64_t total = std::accumulate(bytes.begin(), bytes.end(), int64_t{0});
  std::vector<unsigned char> all(static_cast<std::size_t>(total), 0xEE);
  g.all_gather(mine.data(), all.data(), bytes);
  int64_t off = 0;
  for (int r = 0; r < P; ++r)
    for (int64_t i = 0; i < bytes[r]; ++i, ++off)
      ASSERT_EQ(all[off], static_cast<unsigned char>(r * 16 + i)) << "from rank " << r;
}

TEST(Comm, AllToAllPersonalised) {
  Comm& g = group();
  const int P = g.size(), me = g.rank();
  // Rank r sends (r + 2·s) % 5 floats to rank s, each float encoding (r, s, i).
  auto n_of = [](int r, int s) { return int64_t{(r + 2 * s) % 5}; };
  std::vector<int64_t> send_bytes(P), recv_bytes(P);
  std::vector<float> send;
  for (int s = 0; s < P; ++s) {
    send_bytes[s] = n_of(me, s) * 4;
    recv_bytes[s] = n_of(s, me) * 4;
    for (int64_t i = 0; i < n_of(me, s); ++i) send.push_back(float(100 * me + 10 * s + i));
  }
  std::vector<float> recv(std::accumulate(recv_bytes.begin(), recv_bytes.end(), int64_t{0}) / 4,
                          -1.0f);
  g.all_to_all(send.data(), send_bytes, recv.data(), recv_bytes);
  std::size_t at = 0;
  for (int r = 0; r < P; ++r)
    for (int64_t i = 0; i < n_of(r, me); ++i, ++at)
      ASSERT_EQ(recv[at], float(100 * r + 10 * me + i)) << "from rank " << r << " element " << i;
}

TEST(Comm, ReduceScatterSumsInRankOrder) {
  Comm& g = group();
  const int P = g.size(), me = g.rank();
  std::vector<int64_t> counts(P);
  for (int r = 0; r < P; ++r) counts[r] = 257 + 31 * r;  // uneven, not multiples of anything
  const int64_t total = std::accumulate(counts.begin(), counts.end(), int64_t{0});
  const std::vector<float> send = data_of(me, total, 1);
  std::vector<float> recv(static_cast<std::size_t>(counts[me]), 0.0f);
  g.reduce_scatter_sum(send.data(), recv.data(), counts);
  int64_t off = 0;
  for (int r = 0; r < me; ++r) off += counts[r];
  std::vector<std::vector<float>> all(P);
  for (int r = 0; r < P; ++r) all[r] = data_of(r, total, 1);
  for (int64_t i = 0; i < counts[me]; ++i) {
    float want = all[0][off + i];
    for (int r = 1; r < P; ++r) want += all[r][off + i];
    ASSERT_EQ(recv[i], want) << "element " << i << ": not the rank-ordered fp32 sum";
  }
}

TEST(Comm, AllReduceSameBitsEverywhere) {
  Comm& g = group();
  const int P = g.size();
  const int64_t n = 1001;
  std::vector<float> data = data_of(g.rank(), n, 2);
  g.all_reduce_sum(data.data(), n);
  std::vector<std::vector<float>> all(P);
  for (int r = 0; r < P; ++r) all[r] = data_of(r, n, 2);
  for (int64_t i = 0; i < n; ++i) {
    float want = all[0][i];
    for (int r = 1; r < P; ++r) want += all[r][i];
    ASSERT_EQ(data[i], want) << "element " << i;
  }
}

TEST(Comm, AgreementPassesAndNamesTheRankThatDiffers) {
  Comm& g = group();
  EXPECT_NO_THROW(check_agreement(g, "the config", "d_model 32, layers 4"));
  const std::string mine = g.rank() == 1 ? "d_model 64" : "d_model 32";
  if (g.size() == 1) return;
  try {
    check_agreement(g, "the config", mine);
    FAIL() << "a config that differs on rank 1 was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("the config differs across ranks: rank 0 has 'd_model "
                                         "32', rank 1 has 'd_model 64'"),
              std::string::npos)
        << e.what();
  }
}

TEST(Comm, BadCountsAreRefused) {
  Comm& g = group();
  std::vector<int64_t> wrong(static_cast<std::size_t>(g.size() + 1), 4);
  float x[8] = {};
  // Refused before any data moves, on every rank alike (nothing is left waiting).
  EXPECT_THROW(g.all_gather(x, x, wrong), Error);
  EXPECT_THROW(g.reduce_scatter_sum(x, x, wrong), Error);
  EXPECT_THROW(g.all_reduce_sum(x, -1), Error);
}

}  // namespace
}  // namespace memlayers::dist

MEMLAYERS_DIST_TEST_MAIN()
