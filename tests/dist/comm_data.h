// The inputs of the communicator's checks (tests/dist/comm_test.cpp on host memory,
// tests/dist/gpu/nccl_comm_check.cpp on device memory): a function of the rank, so every rank
// knows every other rank's data and can compute what a collective must return.
#pragma once
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

namespace memlayers::dist::testing {

// Rank r's `n` floats of stream `salt`: mixed signs and magnitudes, so the order of a sum shows
// in its bits.
inline std::vector<float> data_of(int r, int64_t n, uint64_t salt) {
  std::mt19937_64 rng(1000 * salt + static_cast<uint64_t>(r));
  std::uniform_real_distribution<float> mag(-8.0f, 8.0f);
  std::vector<float> v(static_cast<std::size_t>(n));
  for (auto& x : v)
    x = std::ldexp(1.0f + mag(rng) / 16.0f, static_cast<int>(mag(rng))) *
        (rng() % 2 ? 1.0f : -1.0f);
  return v;
}

}  // namespace memlayers::dist::testing
