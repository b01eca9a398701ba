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
void gpu_copy_within(void* dst, const void* src, std::size_t bytes) {
  MEMLAYERS_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToDevice));
}

void gpu_copy_2d(void* dst, std::size_t dst_pitch, const void* src, std::size_t src_pitch,
                 std::size_t row_bytes, std::size_t rows) {
  if (row_bytes == 0 || rows == 0) return;
  MEMLAYERS_CUDA_CHECK(
      cudaMemcpy2D(dst, dst_pitch, src, src_pitch, row_bytes, rows, cudaMemcpyDeviceToDevice));
}

const Memory kGpuMemory{gpu_alloc, gpu_release, gpu_to_device,   gpu_to_host,
                        gpu_fill,  gpu_sync,    gpu_copy_within, gpu_copy_2d};

void* event_create() {
  cudaEvent_t e;
  MEMLAYERS_CUDA_CHECK(cudaEventCreate(&e));
  return e;
}
void event_destroy(void* e) { MEMLAYERS_CUDA_CHECK(cudaEventDestroy(static_cast<cudaEvent_t>(e))); }
void event_record(void* e, Stream s) {
  MEMLAYERS_CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(e), static_cast<cudaStream_t>(s)));
}
double elapsed_ms(void* a, void* b) {
  MEMLAYERS_CUDA_CHECK(cudaEventSynchronize(static_cast<cudaEvent_t>(b)));
  float ms = 0;
  MEMLAYERS_CUDA_CHECK(
      cudaEventElapsedTime(&ms, static_cast<cudaEvent_t>(a), static_cast<cudaEvent_t>(b)));
  return ms;
}
const Timing kGpuTiming{event_create, event_destroy, event_record, elapsed_ms};

std::string probe() {
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) return std::string("no usable CUDA device: ") + cudaGetErrorString(err);
  if (count == 0) return "no CUDA device";
  return "";
}

[[maybe_unused]] const bool registered =
    register_backend({Backend::cuda, true, probe, &kGpuMemory, &kGpuTiming});

}  // namespace
}  // namespace memlayers
