// Seeded random inputs for tests: each case seeds from its own name, so a failure reproduces alone
// and cases do not share data by accident. Never zeros: values and weights are drawn away from 0.
#pragma once
#include <cstdint>
#include <cstring>
#include <random>
#include <string_view>
#include <vector>

#include "common/bf16.h"
#include "common/dtype.h"

namespace memlayers::test {

// FNV-1a: stable across standard libraries, unlike std::hash.
inline uint64_t seed_from(std::string_view name) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : name) h = (h ^ c) * 1099511628211ull;
  return h;
}

class Rng {
 public:
  explicit Rng(std::string_view name) : gen_(seed_from(name)) {}
  explicit Rng(uint64_t seed) : gen_(seed) {}

  // Uniform in [-1, -0.05] ∪ [0.05, 1]: both signs, never (near) zero.
  float signed_unit() {
    const float m = std::uniform_real_distribution<float>(0.05f, 1.0f)(gen_);
    return std::bernoulli_distribution(0.5)(gen_) ? m : -m;
  }
  int64_t index(int64_t n) { return std::uniform_int_distribution<int64_t>(0, n - 1)(gen_); }
  std::mt19937_64& engine() { return gen_; }

 private:
  std::mt19937_64 gen_;
};

// n values of `t` (f32 or bf16) as raw element storage: 4 or 2 bytes each.
inline std::vector<unsigned char> random_values(Rng& rng, DType t, std::size_t n) {
  std::vector<unsigned char> out(n * dtype_size(t));
  for (std::size_t i = 0; i < n; ++i) {
    const float v = rng.signed_unit();
    if (t == DType::bf16) {
      const uint16_t b = float_to_bf16_bits(v);
      std::memcpy(out.data() + 2 * i, &b, 2);
    } else {
      std::memcpy(out.data() + 4 * i, &v, 4);
    }
  }
  return out;
}

// Indices as int32 or int64 raw storage.
inline std::vector<unsigned char> pack_indices(const std::vector<int64_t>& idx, DType t) {
  std::vector<unsigned char> out(idx.size() * dtype_size(t));
  for (std::size_t i = 0; i < idx.size(); ++i) {
    if (t == DType::i32) {
      const auto v = static_cast<int32_t>(idx[i]);
      std::memcpy(out.data() + 4 * i, &v, 4);
    } else {
      std::memcpy(out.data() + 8 * i, &idx[i], 8);
    }
  }
  return out;
}

}  // namespace memlayers::test
