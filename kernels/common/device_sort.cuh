// Device-wide sort, run-length encoding and prefix sum with one signature on both paths: CUB on
// the GPU; std algorithms on host memory under simt (the design's "thin wrapper": kernels we write
// never call a library from device code, and CUB's device-wide calls do not compile for the host).
// The simt stand-ins work on device memory as the library's kernels would, so each opens a
// simt::DeviceAccess.
#pragma once
#include <cstdint>

#include "common/cuda.cuh"

#if defined(__CUDACC__)
#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_run_length_encode.cuh>
#include <cub/device/device_scan.cuh>
#else
#include <algorithm>
#include <numeric>
#include <utility>
#include <vector>
#endif

namespace memlayers {
inline namespace MEMLAYERS_TARGET_NS {
namespace dev {

// Sorts n (key, value) pairs by the key's bits [0, end_bit). Stable: pairs with equal keys keep
// their input order, which the deterministic reductions rely on.
inline void sort_pairs(const uint64_t* keys_in, uint64_t* keys_out, const uint32_t* values_in,
                       uint32_t* values_out, int n, int end_bit, Stream stream) {
#if defined(__CUDACC__)
  auto s = static_cast<cudaStream_t>(stream);
  std::size_t temp_bytes = 0;
  MEMLAYERS_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, keys_in, keys_out,
                                                       values_in, values_out, n, 0, end_bit, s));
  Buffer<unsigned char> temp(temp_bytes, stream);
  MEMLAYERS_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp.get(), temp_bytes, keys_in, keys_out,
                                                       values_in, values_out, n, 0, end_bit, s));
#else
  (void)stream;
  ::simt::DeviceAccess access;
  const uint64_t mask = end_bit >= 64 ? ~uint64_t{0} : (uint64_t{1} << end_bit) - 1;
  std::vector<std::pair<uint64_t, uint32_t> > pairs(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) pairs[i] = {keys_in[i] & mask, values_in[i]};
  std::stable_sort(pairs.begin(), pairs.end(),
                   [](const auto& a, const auto& b) { return a.first < b.first; });
  for (int i = 0; i < n; ++i) {
    keys_out[i] = pairs[i].first;
    values_out[i] = pairs[i].second;
  }
#endif
}

// Runs of equal keys in sorted keys: unique[r], counts[r] for r < *num_runs (device memory).
inline void run_length_encode(const uint64_t* keys, uint64_t* unique, uint32_t* counts,
                              int64_t* num_runs, int n, Stream stream) {
#if defined(__CUDACC__)
  auto s = static_cast<cudaStream_t>(stream);
  std::size_t temp_bytes = 0;
  MEMLAYERS_CUDA_CHECK(cub::DeviceRunLengthEncode::Encode(nullptr, temp_bytes, keys, unique, counts,
                                                          num_runs, n, s));
  Buffer<unsigned char> temp(temp_bytes, stream);
  MEMLAYERS_CUDA_CHECK(cub::DeviceRunLengthEncode::Encode(temp.get(), temp_bytes, keys, unique,
                                                          counts, num_runs, n, s));
#else
  (void)stream;
  ::simt::DeviceAccess access;
  int64_t runs = 0;
  for (int i = 0; i < n; ++i) {
    if (i == 0 || keys[i] != keys[i - 1]) {
      unique[runs] = keys[i];
      counts[runs] = 0;
      ++runs;
    }
    ++counts[runs - 1];
  }
  *num_runs = runs;
#endif
}

// out[i] = in[0] + ... + in[i-1].
inline void exclusive_sum(const uint32_t* in, uint32_t* out, int n, Stream stream) {
#if defined(__CUDACC__)
  auto s = static_cast<cudaStream_t>(stream);
  std::size_t temp_bytes = 0;
  MEMLAYERS_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(nullptr, temp_bytes, in, out, n, s));
  Buffer<unsigned char> temp(temp_bytes, stream);
  MEMLAYERS_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(temp.get(), temp_bytes, in, out, n, s));
#else
  (void)stream;
  ::simt::DeviceAccess access;
  std::exclusive_scan(in, in + n, out, uint32_t{0});
#endif
}

}  // namespace dev
}  // namespace MEMLAYERS_TARGET_NS
}  // namespace memlayers
