// Weighted EmbeddingBag over bags of fixed size k (DESIGN.md §1 step 6):
//   forward   y[b,:]  = Σ_j w[b,j] · V[idx[b,j], :]
//   backward  dV[r,:] = Σ_{(b,j): idx[b,j]=r} w[b,j] · dy[b,:]     (touched rows only)
//             dw[b,j] = dy[b,:] · V[idx[b,j], :]
// Accumulation is always fp32 (fp64 in the reference). All sizes and offsets are 64-bit.
#pragma once
#include <cstdint>
#include <string>

#include "common/dtype.h"
#include "common/registry.h"

namespace memlayers::embbag {

inline constexpr int64_t kMaxK = 256;
inline constexpr int64_t kMaxDim = 8192;

struct FwdParams {
  const void* values = nullptr;    // V: (num_rows, dim), values_dtype, rows values_stride apart
  const void* indices = nullptr;   // idx: (batch, k) contiguous, index_dtype
  const float* weights = nullptr;  // w: (batch, k) contiguous
  void* out = nullptr;             // y: (batch, dim), out_dtype, rows out_stride apart
  int64_t batch = 0, k = 0, dim = 0, num_rows = 0;
  int64_t values_stride = 0;        // elements between rows of V; >= dim (0 means dim)
  int64_t out_stride = 0;           // elements between rows of y; >= dim (0 means dim)
  DType values_dtype = DType::f32;  // f32 or bf16
  DType index_dtype = DType::i64;   // i32 or i64
  DType out_dtype = DType::f32;     // f32 or bf16
};

// Backward. Inputs as in the forward, plus dy. Outputs that are null are not computed.
// The compact dV lists the touched rows in ascending order with their gradient rows; the caller
// sizes unique_rows and grad_values_compact for batch·k rows (the most there can be) and reads
// the count from *num_unique (device memory, like the other outputs).
struct BwdParams {
  const void* values = nullptr;
  const void* indices = nullptr;
  const float* weights = nullptr;
  const float* grad_out = nullptr;  // dy: (batch, dim) fp32 contiguous
  int64_t batch = 0, k = 0, dim = 0, num_rows = 0;
  int64_t values_stride = 0;
  DType values_dtype = DType::f32;
  DType index_dtype = DType::i64;

  float* grad_weights = nullptr;         // dw: (batch, k)
  float* grad_values_dense = nullptr;    // dV: (num_rows, dim), every element written
  int64_t* unique_rows = nullptr;        // (batch·k) capacity, ascending row ids
  float* grad_values_compact = nullptr;  // (batch·k, dim) capacity, row i is dV[unique_rows[i]]
  int64_t* num_unique = nullptr;         // one int64: how many rows the compact form holds
};

// "" when the params describe a valid problem, else what is wrong and what is accepted.
std::string validate(const FwdParams& p);
std::string validate(const BwdParams& p);

// The first out-of-range index in host memory, as "index 1048577 out of range [0, 1048576) at
// bag 12, slot 3", or "" when all are valid. The CLI runs it (on by default); benchmarks do not.
std::string find_bad_index(const void* indices_host, DType index_dtype, int64_t batch, int64_t k,
                           int64_t num_rows);

// Expected number of distinct rows among n uniform draws from N rows: N·(1 − (1 − 1/N)^n).
double expected_unique_rows(int64_t draws, int64_t num_rows);

// The op descriptors read by the registry, tests, benchmarks and reports (DESIGN.md §5).
struct Fwd {
  using Params = FwdParams;
  static constexpr const char* name = "embbag_fwd";
  static std::string validate(const Params& p) { return embbag::validate(p); }
  // B·k·dim·s_V (gathered rows) + B·k·(s_idx + 4) (indices, weights) + B·dim·s_y (output).
  static double bytes_moved(const Params& p);
  static double flops(const Params& p);  // 2·B·k·dim
};

struct Bwd {
  using Params = BwdParams;
  static constexpr const char* name = "embbag_bwd";
  static std::string validate(const Params& p) { return embbag::validate(p); }
  // dw: B·k·dim·s_V (rows re-read) + B·dim·4 (dy) + B·k·4 (dw written);
  // compact dV: U·dim·4 (rows written) + B·k·(s_idx + 4)·2 (the sort's keys and values, in and
  // out). U, the number of distinct rows, is an argument: it depends on the indices.
  // Only the terms of requested outputs count (dy once when either is); a dense dV counts like
  // the compact one here, its zeroing is dense_zeroing_bytes.
  static double bytes_moved(const Params& p, double unique_rows);
  // The extra cost of a dense dV: zeroing N·dim·4 bytes. Reported separately, whether or not
  // grad_values_dense is set (it is what a dense-gradient framework pays).
  static double dense_zeroing_bytes(const Params& p);
  static double flops(const Params& p);  // 2·B·k·dim (dw) + 2·B·k·dim (dV), requested ones only
};

}  // namespace memlayers::embbag
