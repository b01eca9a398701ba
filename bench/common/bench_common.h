// Helpers shared by the benchmark binaries (bench_embbag, bench_pk_topk, bench_memory_layer):
// the machine's cache and memory sizes, table sizing, the roofline ceilings each run measures for
// itself, roofline counters, the backends, variants and rows of a run, the end of main(), and a
// small flag parser that hands Google Benchmark's own flags on.
#pragma once
#include <benchmark/benchmark.h>

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "common/backend.h"
#include "common/dtype.h"
#include "common/registry.h"

#if MEMLAYERS_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

namespace memlayers::bench {

// ---- machine ----

// "32768K" / "1M" / "512" (sysfs cache sizes) in bytes; 0 when unreadable.
int64_t parse_cache_size(std::string text);

// The last-level cache in bytes: the larger of what sysfs lists for cpu0 and what sysconf reports
// (on some virtual machines sysfs shows one core complex's L3 and sysconf the whole socket's; a
// table that must not fit in cache is sized against the larger). 0 when neither says.
int64_t host_last_level_cache_bytes();
int64_t host_physical_memory_bytes();
// Threads the CPU variants use (kernels/common/parallel.h): MEMLAYERS_THREADS, else all hardware
// threads. The host ceiling reads with as many.
int host_threads();
// The 1-minute load average ("" where /proc/loadavg is missing). Printed with every run: on a
// shared machine, a load above the core count explains noisy numbers.
std::string host_load_average();
// "2.00 GiB", "512 KiB".
std::string human_bytes(double bytes);

// The GPU's L2 in bytes; 0 without CUDA or a device. Inline here because MEMLAYERS_HAVE_CUDA is
// defined for the bench binaries (through memlayers::all), not for this helper library.
inline int64_t gpu_l2_bytes() {
#if MEMLAYERS_HAVE_CUDA
  int device = 0, l2 = 0;
  if (cudaGetDevice(&device) == cudaSuccess &&
      cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, device) == cudaSuccess)
    return l2;
#endif
  return 0;
}

// Prints the machine line of a bench's configuration block: "  host last-level cache ..., GPU L2
// ..., physical memory ..., threads ..., load average ...".
void print_machine(int64_t host_llc, int64_t gpu_l2, int threads);
// Adds the machine's context keys to the JSON record: host_llc_bytes, gpu_l2_bytes, threads,
// host_load_avg_1m, peak_gbs.
void add_machine_context(int64_t host_llc, int64_t gpu_l2, int threads, double peak_gbs);
// Adds each (key, value) to the JSON record's context.
void add_context(const std::vector<std::pair<std::string, std::string>>& entries);

// Rows for a table that caches cannot hold: at least 8 × `cache_bytes` and at least 1 GiB, but at
// most a quarter of physical memory so the run fits beside its other buffers. `why` says which
// rule decided.
struct TableSizing {
  int64_t rows = 0;
  double bytes = 0;
  std::string why;
};
TableSizing size_table(int64_t row_bytes, int64_t cache_bytes);

// ---- statistics ----
double median(std::vector<double> v);

// Zipf over ranks 1..n (P(r) ∝ r^-s, s > 0) by rejection-inversion (Hörmann and Derflinger,
// 1996): O(1) memory, so it serves tables of any size.
class Zipf {
 public:
  Zipf(int64_t n, double s);
  // A rank in [1, n] from a uniform [0, 1) source.
  template <class Uniform01>
  int64_t operator()(Uniform01&& uniform01) const {
    while (true) {
      const double u = h_n_ + uniform01() * (h_x1_ - h_n_);
      const double x = H_inv(u);
      int64_t r = static_cast<int64_t>(x + 0.5);
      r = r < 1 ? 1 : (r > n_ ? n_ : r);
      if (double(r) - x <= cut_ || u >= H(double(r) + 0.5) - h(double(r))) return r;
    }
  }

 private:
  double h(double x) const;
  double H(double x) const;  // an antiderivative of h
  double H_inv(double x) const;
  int64_t n_;
  double s_, h_x1_ = 0, h_n_ = 0, cut_ = 0;
};

// ---- roofline ----

// A bandwidth ceiling measured in the same run as the kernels it judges. Its benchmark row times
// passes and records each pass's GB/s; `gbs()` is the median of what was recorded, measuring
// `fallback_passes` passes first when the row did not run (filtered out).
//
// A compute ceiling (CeilingKind::compute) is the same thing counted in flops: `bytes_per_pass`
// is then flops per pass, its row reports GFLOP/s and TFLOP/s instead of GB/s, and `gbs()` returns
// GFLOP/s (`gflops()` says so at the call site).
enum class CeilingKind { bandwidth, compute };
class Ceiling {
 public:
  // `pass` runs one pass and returns its seconds (timed by the backend's own clock).
  Ceiling(std::string row_name, double bytes_per_pass, std::function<double()> pass);
  Ceiling(std::string row_name, double work_per_pass, std::function<double()> pass,
          CeilingKind kind);
  void register_row(int repetitions);
  double gbs();
  double gflops() { return gbs(); }
  double bytes_per_pass() const { return bytes_; }
  const std::string& name() const { return name_; }
  CeilingKind kind() const { return kind_; }

 private:
  std::string name_;
  double bytes_;
  std::function<double()> pass_;
  std::vector<double> samples_gbs_;
  CeilingKind kind_ = CeilingKind::bandwidth;
};

// The host bandwidth ceiling "ceiling/host/stream_read_SIZE": an all-core streaming read of
// `bytes` at `data`, which must outlive the ceiling.
std::unique_ptr<Ceiling> host_stream_ceiling(const void* data, double bytes, int threads);
// The host gather ceiling "ceiling/host/gather_BYTESB_rows": `rows` rows of `row_bytes` at
// uniform random row indices of a table of `table_rows` rows (row stride `row_bytes`) at `data`,
// read with no arithmetic but a sum, 8 rows at a time, the next rows prefetched 32 rows ahead, as
// the EmbeddingBag forward gathers. Every pass draws new rows (gather_row with the pass's seed),
// so a pass finds in cache only what a table several times the last-level cache leaves there,
// as the benchmark's rotating input sets do. What the memory system gives a gather of rows of
// that size: random rows read less of DRAM than a stream, the shorter the less. Informational
// beside the streaming read, which stays the roof of every row.
std::unique_ptr<Ceiling> host_gather_ceiling(const void* data, int64_t table_rows,
                                             int64_t row_bytes, int64_t rows, int threads);
// The CUDA bandwidth ceiling "ceiling/cuda/d2d_copy_SIZE": a device-to-device copy of `bytes` from
// `src` to `dst` (read + write bytes counted).
std::unique_ptr<Ceiling> cuda_copy_ceiling(const void* src, void* dst, std::size_t bytes);

// The compute ceilings, GEMM passes C(m×n) = A(m×k)·B(n×k)ᵀ over buffers the ceiling owns:
// "ceiling/host/sgemm_MxNxK" (OpenBLAS, its threads) and "ceiling/cuda/{s,bf16}gemm_MxNxK"
// (cuBLAS: sgemm, or bf16 inputs with fp32 compute on the tensor cores). The cuda one exists only
// in a build with CUDA (have_cuda_gemm_ceiling()); elsewhere it throws.
std::unique_ptr<Ceiling> host_gemm_ceiling(int64_t m, int64_t n, int64_t k);
// "ceiling/host/amx_bf16_MxNxK": bf16 × bf16 → fp32 products on the CPU's AMX tiles, where the CPU
// has them (amx_unavailable() is ""; it throws elsewhere), the host's bf16 compute ceiling: m and
// k padded to the tiles' 32, n to 32 keys, the padded flops counted (the tiles' own rate). The
// kernels' way: B packed once (L2), A streamed from memory, C into a per-thread block of 96 rows
// that stays in cache, every thread of the pool.
std::unique_ptr<Ceiling> host_amx_ceiling(int64_t m, int64_t n, int64_t k);
bool have_cuda_gemm_ceiling();
std::unique_ptr<Ceiling> cuda_gemm_ceiling(int64_t m, int64_t n, int64_t k, DType dtype);

// One pass of a multithreaded streaming read over a host buffer: every thread sums its slice
// with the widest vectors the CPU has (stream_read.cpp). Returns seconds.
double host_stream_read_seconds(const void* data, std::size_t bytes, int threads);
// Row j of the gather drawn with `seed`: a uniform index in [0, table_rows) from a 64-bit mix
// of (seed, j), a few instructions a row.
inline int64_t gather_row(uint64_t seed, int64_t j, int64_t table_rows) {
  uint64_t z = seed * 0x9e3779b97f4a7c15ull + static_cast<uint64_t>(j) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 31)) * 0x94d049bb133111ebull;
  z ^= z >> 29;
  return static_cast<int64_t>(z % static_cast<uint64_t>(table_rows));
}
// One pass of host_gather_ceiling's gather: rows gather_row(seed, j, table_rows), j in
// [0, n_rows), split over `threads` threads. Returns seconds; `sum`, when given, gets what was
// read: per row the sum of its whole 64-bit words (native order) plus its remaining bytes.
double host_gather_seconds(const void* data, int64_t table_rows, int64_t row_bytes, int64_t n_rows,
                           uint64_t seed, int threads, uint64_t* sum = nullptr);

// One device-to-device copy of `bytes` with the backend's copy_within, timed by its events
// (CUDA events on the GPU). Returns seconds.
double device_copy_seconds(Backend backend, void* dst, const void* src, std::size_t bytes);

// Sets the counters every bandwidth row reports: GB/s (1e9 bytes) of `bytes` over `seconds`, its
// percentage of the ceiling measured in this run and of the nominal peak, and SetBytesProcessed.
void set_bandwidth_counters(benchmark::State& state, double bytes, double seconds,
                            double ceiling_gbs, double peak_gbs);

// ---- rows, buffers and timing shared by the bench_* binaries ----

// Backends named by a --backend flag: comma-separated cpu, cuda, simt, reference, and all
// (= cpu,cuda); duplicates dropped, order kept. Throws memlayers::Error naming what is accepted.
std::vector<Backend> parse_backends(const std::string& text);

// The backends of --backend that can run here; the others are printed ("skip backend B: why"),
// not dropped silently. `any_host`: one runs on the host (all but cuda); `has_cuda`: cuda runs.
struct Runnable {
  std::vector<Backend> backends;
  bool any_host = false, has_cuda = false;
};
Runnable runnable_backends(const std::vector<Backend>& wanted);

// The variants of Op registered on `b`, only the one named `variant` when that is not empty.
template <class Op>
std::vector<const Variant<typename Op::Params>*> selected_variants(Backend b,
                                                                   const std::string& variant) {
  auto all = Registry<Op>::of(b);
  if (!variant.empty()) std::erase_if(all, [&](const auto* v) { return v->name != variant; });
  return all;
}

// Calls each(v) for every variant of Op selected on `b` (see selected_variants); prints "note: OP
// has no variant registered on backend B" when no --variant is given and none is registered.
template <class Op, class Each>
void for_each_variant(Backend b, const std::string& variant, Each each) {
  const auto variants = selected_variants<Op>(b, variant);
  if (variants.empty() && variant.empty())
    fmt::print("note: {} has no variant registered on backend {}\n", Op::name, to_string(b));
  for (const auto* v : variants) each(v);
}

// A row's name: "<op>/<backend>/<variant>/<shape>".
template <class Op>
std::string row_name(Backend b, const Variant<typename Op::Params>& v, const std::string& shape) {
  return fmt::format("{}/{}/{}/{}", Op::name, to_string(b), v.name, shape);
}

// Why `v` cannot time `p`: the op's validation, then the variant's supports(); "" when it can.
template <class Op>
std::string why_not(const Variant<typename Op::Params>& v, const typename Op::Params& p) {
  const std::string why = Op::validate(p);
  return why.empty() ? v.supports(p) : why;
}

// launch(set) for time_rotating: `v` on params[set] inside an NVTX range "<op>/<variant>" (the
// params were validated and checked for support once, before the row was registered, so the
// timed region holds only the launch). `params` must outlive the returned function.
template <class Op>
std::function<void(int64_t)> nvtx_launch(const Variant<typename Op::Params>* v,
                                         const std::vector<typename Op::Params>& params) {
  return [v, &params, range = std::string(Op::name) + "/" + v->name](int64_t set) {
    NvtxRange r(range);
    v->launch(params[set], nullptr);
  };
}

// For the --variant check: appends "<backend>/<name><tag>" for every variant of Op on `b` to
// `known`, and returns whether one of them is named `variant`.
template <class Op>
bool list_variants(Backend b, const std::string& variant, const char* tag,
                   std::vector<std::string>* known) {
  bool found = false;
  for (const auto* v : Registry<Op>::of(b)) {
    found |= v->name == variant;
    known->push_back(fmt::format("{}/{}{}", to_string(b), v->name, tag));
  }
  return found;
}
// "a, b, c", or "none" for an empty list.
std::string join_or_none(const std::vector<std::string>& items);

// A row that cannot run is still registered, and reports why (printed as "skip NAME: why").
void register_skip(const std::string& name, const std::string& why);

// Registers a timed row: manual time in milliseconds, `repetitions` repetitions (at least 1), only
// the aggregates reported when there are several.
void register_timed_row(const std::string& name, int repetitions,
                        std::function<void(benchmark::State&)> body);

// The backward's gradient form: compact (the floor's form) or dense.
enum class GradForm { compact, dense };
// The form a backward row times: the first of compact, dense that `choice` (the --dv / --dk flag:
// auto, compact, dense) allows and `why_not(form)` accepts (returns ""). When none is accepted,
// returns nullopt and `reasons` says why each was refused ("compact <what>: why; dense ...").
std::optional<GradForm> pick_grad_form(const std::string& choice, const char* what,
                                       const std::function<std::string(GradForm)>& why_not,
                                       std::string* reasons);

// Fills `elems` elements (fp32 or bf16) with seeded values uniform in [-1, 1) on all host
// threads; touching every page here keeps page faults out of the timed runs.
void fill_uniform(void* data, int64_t elems, DType dtype, uint64_t seed);

// A buffer in a backend's memory (host or device), released with it.
class Buffer {
 public:
  Buffer() = default;
  Buffer(const Memory& m, std::size_t bytes);
  Buffer(Buffer&& o) noexcept;
  Buffer& operator=(Buffer&& o) noexcept;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer();
  // A buffer holding a copy of `bytes` bytes of host memory.
  static Buffer upload(const Memory& m, const void* host, std::size_t bytes);
  void* get() const { return ptr_; }
  template <class T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }
  std::size_t bytes() const { return bytes_; }

 private:
  const Memory* mem_ = nullptr;
  void* ptr_ = nullptr;
  std::size_t bytes_ = 0;
};

// Times `launch(set)` once per benchmark iteration between two events of the backend's clock
// (CUDA events on the GPU, a steady clock on the host), rotating set = 0, 1, .., sets - 1, 0, ..
// so no cache carries one iteration's inputs into the next; one untimed warm-up launch first.
// `on_timed(set)` runs after each timed launch (to add up that set's bytes). A launch that throws
// marks the row with SkipWithError and the run returns false. Returns the timed seconds and the
// iteration count through `seconds` and `iterations`.
bool time_rotating(benchmark::State& state, Backend backend, int64_t sets,
                   const std::function<void(int64_t)>& launch,
                   const std::function<void(int64_t)>& on_timed, double* seconds,
                   int64_t* iterations);

// ---- main ----

// Hands what is left of argv to Google Benchmark and runs the registered rows. Returns the exit
// status: 2 for a flag Google Benchmark does not know, 1 when rows failed (`failures`, read after
// the run; printed as "PROGRAM: N row(s) failed"), else 0.
int run_registered(int* argc, char** argv, const char* program, const std::atomic<int>& failures);

// Runs `run` and turns an exception into "PROGRAM: message" on stderr and exit status 2.
int main_guarded(const char* program, int argc, char** argv, int (*run)(int, char**));

// ---- flags ----

// Flags of a benchmark binary, parsed before Google Benchmark's: `--name value` or
// `--name=value`. Arguments starting with --benchmark_ (and the program name) are handed on to
// benchmark::Initialize; anything else unknown is an error that lists what is accepted.
class Flags {
 public:
  explicit Flags(std::string program, std::string description);
  // Each flag has a default shown in --help; the setter receives the text and throws
  // memlayers::Error when it is not acceptable.
  void add(std::string name, std::string default_value, std::string help,
           std::function<void(const std::string&)> set);
  void add_int(std::string name, int64_t* target, std::string help, int64_t min_value = 0);
  void add_double(std::string name, double* target, std::string help);
  void add_choice(std::string name, std::string* target, std::vector<std::string> choices,
                  std::string help);
  void add_string(std::string name, std::string* target, std::string help);
  // A switch: `--name` alone sets true; `--name=true|false|1|0` sets either. Never takes the next
  // argument as its value.
  void add_switch(std::string name, bool* target, std::string help);
  // Text printed after the flag list by --help (formulas, notes).
  void set_epilog(std::string text) { epilog_ = std::move(text); }

  // Returns false when --help was printed (the caller exits 0). Throws memlayers::Error on a bad
  // flag. On return, argc/argv hold only what Google Benchmark should see.
  bool parse(int* argc, char** argv);
  bool given(const std::string& name) const { return given_.count(name) != 0; }
  std::string help() const;

 private:
  struct Flag {
    std::string name, default_value, help;
    std::function<void(const std::string&)> set;
    bool is_switch = false;
  };
  std::string program_, description_, epilog_;
  std::vector<Flag> flags_;
  std::map<std::string, bool> given_;
};

// The flags every bench_* takes beside its shape: --peak-gbs, --peak-tflops and --ceiling-bytes
// (each only when its target is set; --ceiling-bytes is 'auto' by default), --seed, --reps,
// --sets. `seed_what` and `sets_what` name what the seed makes and what the sets hold.
struct RunFlags {
  double* peak_gbs = nullptr;
  double* peak_tflops = nullptr;
  int64_t* ceiling_bytes = nullptr;
  int64_t* seed = nullptr;
  int64_t* reps = nullptr;
  int64_t* sets = nullptr;
  std::string seed_what, sets_what;
};
void add_run_flags(Flags& flags, const RunFlags& f);
// --backend (comma-separated cpu, cuda, all, or the correctness backends simt and reference; its
// default "all" is written to *backend) and --variant ("only the <unit> of this name").
void add_backend_flags(Flags& flags, std::string* backend, std::string* variant,
                       const std::string& unit);
// After parse: checks the peaks, and sizes the ceiling buffer unless --ceiling-bytes was given
// (size_table over `cache_bytes`). Returns why the buffer has its size.
std::string finish_run_flags(const Flags& flags, const RunFlags& f, int64_t cache_bytes);

}  // namespace memlayers::bench
