// The cuda backend's entry: its memory operations through the CUDA runtime, and a probe that says
// whether a device is usable here (a build with nvcc runs fine on a machine without a GPU).
#include "common/cuda.cuh"

namespace memlayers {
namespace {

void* gpu_alloc(std::size_t bytes) {
  void* p = nullptr;
  MEMLAYERS_CUDA_CHECK(cudaMalloc(&p, bytes ? bytes : 1));
  return p;
}
void gpu_release(void* p) { MEMLAYERS_CUDA_CHECK(cudaFree(p)); }
void gpu_to_device(void* dst, const void* src, std::size_t bytes) {
  MEMLAYERS_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice));
}
void gpu_to_host(void* dst, const void* src, std::size_t bytes) {
  MEMLAYERS_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost));
}
void gpu_fill(void* dst, int value, std::size_t bytes) {
  MEMLAYERS_CUDA_CHECK(cudaMemset(dst, value, bytes));
}
void gpu_sync() { MEMLAYERS_CUDA_CHECK(cudaDeviceSynchronize()); }

const Memory kGpuMemory{gpu_alloc, gpu_release, gpu_to_device, gpu_to_host, gpu_fill, gpu_sync};

std::string probe() {
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) return std::string("no usable CUDA device: ") + cudaGetErrorString(err);
  if (count == 0) return "no CUDA device";
  return "";
}

[[maybe_unused]] const bool registered =
    register_backend({Backend::cuda, true, probe, &kGpuMemory});

}  // namespace
}  // namespace memlayers
