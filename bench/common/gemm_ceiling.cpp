// The compute ceilings: an OpenBLAS sgemm on the host (and bf16 products on AMX tiles where the
// CPU has them), a cuBLAS GEMM on the GPU, each over buffers the ceiling owns (bench_common.h).
#include <cblas.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include <fmt/format.h>

#include <hwy/aligned_allocator.h>

#include "bench/common/bench_common.h"
#include "common/amx.h"
#include "common/error.h"
#include "common/parallel.h"

#if MEMLAYERS_BENCH_CUBLAS
#include <cublas_v2.h>
#endif

namespace memlayers::bench {

namespace {

double gemm_flops(int64_t m, int64_t n, int64_t k) {
  return 2.0 * double(m) * double(n) * double(k);
}

struct HostGemm {
  int64_t m, n, k;
  std::vector<float> a, b, c;
  HostGemm(int64_t m_, int64_t n_, int64_t k_)
      : m(m_), n(n_), k(k_), a(std::size_t(m * k)), b(std::size_t(n * k)), c(std::size_t(m * n)) {
    fill_uniform(a.data(), m * k, DType::f32, 7);
    fill_uniform(b.data(), n * k, DType::f32, 8);
  }
  // OpenBLAS with its own threads, one per host thread: the library's best, independent of how
  // the kernels call it (common/blas.h sets it back to one thread on their next GEMM).
  double pass() {
#if defined(OPENBLAS_VERSION)
    openblas_set_num_threads(host_threads());
#endif
    const auto t0 = std::chrono::steady_clock::now();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(m), int(n), int(k), 1.0f, a.data(),
                int(k), b.data(), int(k), 0.0f, c.data(), int(n));
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
};

// C = A·Bᵀ on AMX tiles, shapes padded to the tiles (host_amx_ceiling).
struct HostAmx {
  static constexpr int64_t kBlock = 96;  // rows a C block: 3 passes of kAmxRows, as v3 takes
  int64_t m, n, k;                       // padded
  hwy::AlignedFreeUniquePtr<uint16_t[]> a, b;
  HostAmx(int64_t m_, int64_t n_, int64_t k_)
      : m((m_ + kAmxRows - 1) / kAmxRows * kAmxRows),
        n((n_ + kAmxKeys - 1) / kAmxKeys * kAmxKeys),
        k((k_ + kAmxDepth - 1) / kAmxDepth * kAmxDepth),
        a(hwy::AllocateAligned<uint16_t>(std::size_t(m * k))),
        b(hwy::AllocateAligned<uint16_t>(std::size_t(n * k))) {
    MEMLAYERS_CHECK(amx_unavailable().empty(), "the AMX ceiling {}", amx_unavailable());
    fill_uniform(a.get(), m * k, DType::bf16, 12);
    std::vector<uint16_t> rows(std::size_t(n * k));
    fill_uniform(rows.data(), n * k, DType::bf16, 13);
    for (int64_t j = 0; j < n; j += kAmxKeys)
      amx_pack_panel(rows.data() + j * k, k, kAmxKeys, k, k, b.get() + j * k);
  }
  double flops() const { return gemm_flops(m, n, k); }
  double pass() {
    const int64_t blocks = (m + kBlock - 1) / kBlock;
    const auto t0 = std::chrono::steady_clock::now();
    parallel_for(blocks, balanced_grain(blocks, 1), [&](int64_t b0, int64_t b1) {
      const AmxTiles tiles;
      auto c = hwy::AllocateAligned<float>(std::size_t(kBlock * n));
      for (int64_t blk = b0; blk < b1; ++blk)
        amx_gemm_bf16(a.get() + blk * kBlock * k, k, std::min(kBlock, m - blk * kBlock), b.get(),
                      n / kAmxKeys, k, c.get(), n);
    });
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
};

#if MEMLAYERS_BENCH_CUBLAS
void cublas_check(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS) fail("{}: cuBLAS status {}", what, int(s));
}

struct CudaGemm {
  int64_t m, n, k;
  DType dtype;
  Buffer a, b, c;
  cublasHandle_t handle = nullptr;
  CudaGemm(int64_t m_, int64_t n_, int64_t k_, DType dtype_)
      : m(m_),
        n(n_),
        k(k_),
        dtype(dtype_),
        a(*backend_info(Backend::cuda).memory, std::size_t(m * k) * dtype_size(dtype)),
        b(*backend_info(Backend::cuda).memory, std::size_t(n * k) * dtype_size(dtype)),
        c(*backend_info(Backend::cuda).memory, std::size_t(m * n) * 4) {
    cublas_check(cublasCreate(&handle), "cublasCreate");
    const Memory& mem = *backend_info(Backend::cuda).memory;
    for (Buffer* buf : {&a, &b}) {
      std::vector<unsigned char> host(buf->bytes());
      fill_uniform(host.data(), int64_t(host.size() / dtype_size(dtype)), dtype, 9);
      mem.to_device(buf->get(), host.data(), host.size());
    }
    mem.synchronize();
  }
  ~CudaGemm() { cublasDestroy(handle); }
  CudaGemm(const CudaGemm&) = delete;
  CudaGemm& operator=(const CudaGemm&) = delete;
  double pass() {
    const Timing& t = *backend_info(Backend::cuda).timing;
    void* start = t.event_create();
    void* end = t.event_create();
    const float one = 1, zero = 0;
    // Row-major C = A·Bᵀ is column-major Cᵀ = B·Aᵀ: (n × m) from B (k × n)ᵀ and A (k × m).
    const int cm = int(n), cn = int(m), ck = int(k);
    t.event_record(start, nullptr);
    if (dtype == DType::bf16)
      cublas_check(cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, cm, cn, ck, &one, b.get(),
                                CUDA_R_16BF, ck, a.get(), CUDA_R_16BF, ck, &zero, c.get(),
                                CUDA_R_32F, cm, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                   "cublasGemmEx");
    else
      cublas_check(cublasSgemm(handle, CUBLAS_OP_T, CUBLAS_OP_N, cm, cn, ck, &one, b.as<float>(),
                               ck, a.as<float>(), ck, &zero, c.as<float>(), cm),
                   "cublasSgemm");
    t.event_record(end, nullptr);
    const double ms = t.elapsed_ms(start, end);
    t.event_destroy(start);
    t.event_destroy(end);
    return ms / 1e3;
  }
};
#endif

}  // namespace

std::unique_ptr<Ceiling> host_gemm_ceiling(int64_t m, int64_t n, int64_t k) {
  auto g = std::make_shared<HostGemm>(m, n, k);
  return std::make_unique<Ceiling>(
      fmt::format("ceiling/host/sgemm_{}x{}x{}", m, n, k), gemm_flops(m, n, k),
      [g] { return g->pass(); }, CeilingKind::compute);
}

std::unique_ptr<Ceiling> host_amx_ceiling(int64_t m, int64_t n, int64_t k) {
  auto g = std::make_shared<HostAmx>(m, n, k);
  return std::make_unique<Ceiling>(
      fmt::format("ceiling/host/amx_bf16_{}x{}x{}", g->m, g->n, g->k), g->flops(),
      [g] { return g->pass(); }, CeilingKind::compute);
}

bool have_cuda_gemm_ceiling() { return MEMLAYERS_BENCH_CUBLAS != 0; }

std::unique_ptr<Ceiling> cuda_gemm_ceiling(int64_t m, int64_t n, int64_t k, DType dtype) {
#if MEMLAYERS_BENCH_CUBLAS
  auto g = std::make_shared<CudaGemm>(m, n, k, dtype);
  return std::make_unique<Ceiling>(
      fmt::format("ceiling/cuda/{}gemm_{}x{}x{}", dtype == DType::bf16 ? "bf16" : "s", m, n, k),
      gemm_flops(m, n, k), [g] { return g->pass(); }, CeilingKind::compute);
#else
  (void)m, (void)n, (void)k, (void)dtype;
  fail("the cuBLAS compute ceiling needs a build with CUDA (this one has none)");
#endif
}

}  // namespace memlayers::bench
