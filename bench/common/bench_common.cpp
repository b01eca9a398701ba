#include "bench_common.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <thread>
#include <utility>

#include "common/bf16.h"
#include "common/blas_core.h"
#include "common/error.h"
#include "common/parallel.h"
#include "embbag/cpu/common.h"

namespace memlayers::bench {

// ---- machine ----

int64_t parse_cache_size(std::string s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.pop_back();
  if (s.empty()) return 0;
  int64_t scale = 1;
  switch (s.back()) {
    case 'K':
      scale = int64_t{1} << 10;
      break;
    case 'M':
      scale = int64_t{1} << 20;
      break;
    case 'G':
      scale = int64_t{1} << 30;
      break;
    default:
      break;
  }
  if (scale != 1) s.pop_back();
  int64_t v = 0;
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  return ec == std::errc() && ptr == s.data() + s.size() ? v * scale : 0;
}

namespace {

std::string read_line(const std::filesystem::path& p) {
  std::ifstream f(p);
  std::string s;
  std::getline(f, s);
  return s;
}
}  // namespace

int64_t host_last_level_cache_bytes() {
  int64_t best_level = 0, sysfs_bytes = 0;
  std::error_code ec;
  const std::filesystem::path dir = "/sys/devices/system/cpu/cpu0/cache";
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    if (entry.path().filename().string().rfind("index", 0) != 0) continue;
    const std::string type = read_line(entry.path() / "type");
    if (type == "Instruction") continue;
    const int64_t level = std::atoll(read_line(entry.path() / "level").c_str());
    const int64_t size = parse_cache_size(read_line(entry.path() / "size"));
    if (level > best_level || (level == best_level && size > sysfs_bytes)) {
      best_level = level;
      sysfs_bytes = size;
    }
  }
  int64_t sysconf_bytes = 0;
#ifdef _SC_LEVEL4_CACHE_SIZE
  sysconf_bytes = std::max<int64_t>(sysconf_bytes, sysconf(_SC_LEVEL4_CACHE_SIZE));
#endif
#ifdef _SC_LEVEL3_CACHE_SIZE
  sysconf_bytes = std::max<int64_t>(sysconf_bytes, sysconf(_SC_LEVEL3_CACHE_SIZE));
#endif
  return std::max(sysfs_bytes, sysconf_bytes);
}

int64_t host_physical_memory_bytes() {
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  return pages > 0 && page > 0 ? int64_t{pages} * page : 0;
}

int host_threads() { return parallel_detail::configured_threads(); }

std::string host_load_average() {
  const std::string line = read_line("/proc/loadavg");
  return line.substr(0, line.find(' '));
}

std::string human_bytes(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (bytes >= 1024 && u < 4) {
    bytes /= 1024;
    ++u;
  }
  return u == 0 ? fmt::format("{:.0f} B", bytes) : fmt::format("{:.2f} {}", bytes, units[u]);
}

void print_machine(int64_t host_llc, int64_t gpu_l2, int threads) {
  fmt::print("  host last-level cache {}{}, physical memory {}, threads {}, load average {}\n",
             human_bytes(double(host_llc)),
             gpu_l2 ? fmt::format(", GPU L2 {}", human_bytes(double(gpu_l2))) : std::string(),
             human_bytes(double(host_physical_memory_bytes())), threads, host_load_average());
  fmt::print("  host BLAS {}\n", host_blas::describe());
}

void add_context(const std::vector<std::pair<std::string, std::string>>& entries) {
  for (const auto& [key, value] : entries) benchmark::AddCustomContext(key, value);
}

void add_machine_context(int64_t host_llc, int64_t gpu_l2, int threads, double peak_gbs) {
  add_context({{"host_llc_bytes", std::to_string(host_llc)},
               {"gpu_l2_bytes", std::to_string(gpu_l2)},
               {"threads", std::to_string(threads)},
               {"host_load_avg_1m", host_load_average()},
               {"host_blas", host_blas::describe()},
               {"peak_gbs", fmt::format("{}", peak_gbs)}});
}

TableSizing size_table(int64_t row_bytes, int64_t cache_bytes) {
  MEMLAYERS_CHECK(row_bytes > 0, "size_table: row_bytes must be positive, got {}", row_bytes);
  constexpr double kGiB = double(int64_t{1} << 30);
  const double want_cache = 8.0 * double(cache_bytes);
  TableSizing s;
  double target = kGiB;
  s.why = "1 GiB floor";
  if (want_cache > target) {
    target = want_cache;
    s.why = fmt::format("8 x last-level cache ({})", human_bytes(double(cache_bytes)));
  }
  const double cap = double(host_physical_memory_bytes()) / 4;
  if (cap > 0 && target > cap) {
    target = cap;
    s.why += fmt::format(", capped at a quarter of physical memory ({})", human_bytes(cap));
  }
  s.rows = std::max<int64_t>(1, static_cast<int64_t>(std::ceil(target / double(row_bytes))));
  s.bytes = double(s.rows) * double(row_bytes);
  return s;
}

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  const std::size_t mid = v.size() / 2;
  std::nth_element(v.begin(), v.begin() + mid, v.end());
  if (v.size() % 2) return v[mid];
  const double hi = v[mid];
  return (*std::max_element(v.begin(), v.begin() + mid) + hi) / 2;
}

Zipf::Zipf(int64_t n, double s) : n_(n), s_(s) {
  MEMLAYERS_CHECK(n >= 1 && s > 0, "Zipf: needs n >= 1 and s > 0, got n {} s {}", n, s);
  h_x1_ = H(1.5) - 1;
  h_n_ = H(double(n) + 0.5);
  cut_ = 2 - H_inv(H(2.5) - h(2));
}

namespace {
double expm1_over(double x) { return std::abs(x) > 1e-8 ? std::expm1(x) / x : 1; }
double log1p_over(double x) { return std::abs(x) > 1e-8 ? std::log1p(x) / x : 1; }
}  // namespace

double Zipf::h(double x) const { return std::exp(-s_ * std::log(x)); }
// Written so that s = 1 (where the antiderivative is a log) needs no special case.
double Zipf::H(double x) const {
  const double lx = std::log(x);
  return expm1_over((1 - s_) * lx) * lx;
}
double Zipf::H_inv(double x) const {
  const double t = std::max(-1.0, x * (1 - s_));
  return std::exp(log1p_over(t) * x);
}

// ---- roofline ----

Ceiling::Ceiling(std::string row_name, double bytes_per_pass, std::function<double()> pass)
    : name_(std::move(row_name)), bytes_(bytes_per_pass), pass_(std::move(pass)) {}

Ceiling::Ceiling(std::string row_name, double work_per_pass, std::function<double()> pass,
                 CeilingKind kind)
    : name_(std::move(row_name)), bytes_(work_per_pass), pass_(std::move(pass)), kind_(kind) {}

void Ceiling::register_row(int repetitions) {
  register_timed_row(name_, repetitions, [this](benchmark::State& state) {
    pass_();  // warm-up: page tables, clocks
    double seconds = 0;
    for (auto _ : state) {
      const double s = pass_();
      state.SetIterationTime(s);
      seconds += s;
      samples_gbs_.push_back(bytes_ / s / 1e9);
    }
    // The ceiling is the 100% of its backend's rows, so it reports GB/s (or GFLOP/s) only.
    if (kind_ == CeilingKind::compute) {
      const double gflops = seconds > 0 ? bytes_ * double(state.iterations()) / seconds / 1e9 : 0;
      state.counters["GFLOP/s"] = gflops;
      state.counters["TFLOP/s"] = gflops / 1e3;
    } else {
      set_bandwidth_counters(state, bytes_ * double(state.iterations()), seconds, 0, 0);
    }
  });
}

double Ceiling::gbs() {
  if (samples_gbs_.empty()) {
    constexpr int kFallbackPasses = 5;
    pass_();
    for (int i = 0; i < kFallbackPasses; ++i) samples_gbs_.push_back(bytes_ / pass_() / 1e9);
  }
  return median(samples_gbs_);
}

std::unique_ptr<Ceiling> host_stream_ceiling(const void* data, double bytes, int threads) {
  return std::make_unique<Ceiling>(fmt::format("ceiling/host/stream_read_{}", human_bytes(bytes)),
                                   bytes, [data, bytes, threads] {
                                     return host_stream_read_seconds(data, std::size_t(bytes),
                                                                     threads);
                                   });
}

std::unique_ptr<Ceiling> host_gather_ceiling(const void* data, int64_t table_rows,
                                             int64_t row_bytes, int64_t rows, int threads) {
  MEMLAYERS_CHECK(table_rows > 0 && row_bytes > 0 && rows > 0,
                  "gather ceiling: table_rows {}, row_bytes {}, rows {}: each must be > 0",
                  table_rows, row_bytes, rows);
  auto pass = std::make_shared<uint64_t>(0);  // each pass its own rows
  return std::make_unique<Ceiling>(
      fmt::format("ceiling/host/gather_{}B_rows", row_bytes), double(rows) * double(row_bytes),
      [data, table_rows, row_bytes, rows, threads, pass] {
        return host_gather_seconds(data, table_rows, row_bytes, rows, ++*pass, threads);
      });
}

std::unique_ptr<Ceiling> cuda_copy_ceiling(const void* src, void* dst, std::size_t bytes) {
  return std::make_unique<Ceiling>(
      fmt::format("ceiling/cuda/d2d_copy_{}", human_bytes(double(bytes))), 2.0 * double(bytes),
      [src, dst, bytes] { return device_copy_seconds(Backend::cuda, dst, src, bytes); });
}

uint64_t sum_words_simd(const uint64_t* p, std::size_t n);  // stream_read.cpp
uint64_t sum_row_group_simd(const uint64_t* const* rows, const uint64_t* const* next,
                            std::size_t words, std::size_t pf_step);

namespace {
std::atomic<uint64_t> g_sink{0};

}  // namespace

double host_gather_seconds(const void* data, int64_t table_rows, int64_t row_bytes, int64_t n_rows,
                           uint64_t seed, int threads, uint64_t* sum) {
  constexpr int64_t kGroup = 8, kAhead = 32;  // the EmbeddingBag forward's group and distance
  const auto* base = static_cast<const unsigned char*>(data);
  const int64_t n = n_rows;
  const auto words = static_cast<std::size_t>(row_bytes / 8);
  // The forward's prefetch step: every line, or each page's first where rows are whole pages.
  const auto pf_step =
      static_cast<std::size_t>(embbag::cpu::row_prefetch_step(data, row_bytes, row_bytes));
  threads = std::max(1, threads);
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<std::thread> pool;
  std::vector<uint64_t> partial(static_cast<std::size_t>(threads), 0);
  for (int t = 0; t < threads; ++t) {
    const int64_t begin = n * t / threads, end = n * (t + 1) / threads;
    pool.emplace_back([&, t, begin, end] {
      const auto row = [&](int64_t j) {
        return reinterpret_cast<const uint64_t*>(base +
                                                 gather_row(seed, j, table_rows) * row_bytes);
      };
      const auto bytes_past_words = [&](const uint64_t* r) {  // rows of odd byte lengths
        uint64_t s = 0;
        for (int64_t b = int64_t(words) * 8; b < row_bytes; ++b)
          s += reinterpret_cast<const unsigned char*>(r)[b];
        return s;
      };
      uint64_t acc = 0;
      const uint64_t* rows[kGroup];
      const uint64_t* next[kGroup];
      int64_t j = begin;
      for (; j + kGroup <= end; j += kGroup) {
        const bool ahead = j + kAhead + kGroup <= end;
        for (int64_t g = 0; g < kGroup; ++g) {
          rows[g] = row(j + g);
          next[g] = ahead ? row(j + kAhead + g) : nullptr;
        }
        acc += sum_row_group_simd(rows, ahead ? next : nullptr, words, pf_step);
        for (int64_t g = 0; g < kGroup; ++g) acc += bytes_past_words(rows[g]);
      }
      for (; j < end; ++j) {  // the last rows, fewer than a group
        const auto* r = reinterpret_cast<const unsigned char*>(row(j));
        for (std::size_t i = 0; i < words; ++i) {
          uint64_t w;
          std::memcpy(&w, r + 8 * i, sizeof(w));
          acc += w;
        }
        acc += bytes_past_words(row(j));
      }
      partial[static_cast<std::size_t>(t)] = acc;
    });
  }
  for (auto& th : pool) th.join();
  const auto t1 = std::chrono::steady_clock::now();
  uint64_t total = 0;
  for (uint64_t p : partial) total += p;
  g_sink.fetch_xor(total, std::memory_order_relaxed);
  if (sum) *sum = total;
  return std::chrono::duration<double>(t1 - t0).count();
}

double host_stream_read_seconds(const void* data, std::size_t bytes, int threads) {
  const auto* bytes_ptr = static_cast<const unsigned char*>(data);
  const std::size_t words = bytes / 8;
  threads = std::max(1, threads);
  // Slices start on cache lines so no line is read by two threads.
  const std::size_t per = (words / threads + 7) / 8 * 8;
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<std::thread> pool;
  std::vector<uint64_t> partial(threads, 0);
  for (int t = 0; t < threads; ++t) {
    const std::size_t begin = std::min(words, per * t);
    const std::size_t end = t == threads - 1 ? words : std::min(words, per * (t + 1));
    pool.emplace_back([&, t, begin, end] {
      partial[t] =
          sum_words_simd(reinterpret_cast<const uint64_t*>(bytes_ptr) + begin, end - begin);
    });
  }
  uint64_t tail = 0;
  for (std::size_t i = words * 8; i < bytes; ++i) tail += bytes_ptr[i];
  for (auto& th : pool) th.join();
  const auto t1 = std::chrono::steady_clock::now();
  for (uint64_t p : partial) tail += p;
  g_sink.fetch_xor(tail, std::memory_order_relaxed);
  return std::chrono::duration<double>(t1 - t0).count();
}

double device_copy_seconds(Backend backend, void* dst, const void* src, std::size_t bytes) {
  const BackendInfo& info = backend_info(backend);
  MEMLAYERS_CHECK(info.memory && info.timing, "backend {} has no memory or timing: {}",
                  to_string(backend), usable(backend));
  const Timing& t = *info.timing;
  void* start = t.event_create();
  void* end = t.event_create();
  t.event_record(start, nullptr);
  info.memory->copy_within(dst, src, bytes);
  t.event_record(end, nullptr);
  const double ms = t.elapsed_ms(start, end);
  t.event_destroy(start);
  t.event_destroy(end);
  return ms / 1e3;
}

void set_bandwidth_counters(benchmark::State& state, double bytes, double seconds,
                            double ceiling_gbs, double peak_gbs) {
  state.SetBytesProcessed(static_cast<int64_t>(bytes));
  const double gbs = seconds > 0 ? bytes / seconds / 1e9 : 0;
  state.counters["GB/s"] = gbs;
  if (ceiling_gbs > 0) state.counters["pct_ceiling"] = 100 * gbs / ceiling_gbs;
  if (peak_gbs > 0) state.counters["pct_peak"] = 100 * gbs / peak_gbs;
}

// ---- rows, buffers and timing ----

std::vector<Backend> parse_backends(const std::string& text) {
  std::vector<Backend> out;
  std::size_t start = 0;
  while (start <= text.size()) {
    const std::size_t comma = text.find(',', start);
    const std::string item = text.substr(start, comma == std::string::npos ? comma : comma - start);
    if (item == "all") {
      out.push_back(Backend::cpu);
      out.push_back(Backend::cuda);
    } else if (auto b = parse_backend(item)) {
      out.push_back(*b);
    } else {
      fail(
          "--backend {}: '{}' is not a backend; accepted are cpu, cuda, all, and the "
          "correctness backends simt and reference, comma-separated",
          text, item);
    }
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  std::vector<Backend> unique;
  for (Backend b : out)
    if (std::find(unique.begin(), unique.end(), b) == unique.end()) unique.push_back(b);
  return unique;
}

Runnable runnable_backends(const std::vector<Backend>& wanted) {
  Runnable r;
  for (Backend b : wanted) {
    if (std::string why = usable(b); !why.empty())
      fmt::print("skip backend {}: {}\n", to_string(b), why);
    else
      r.backends.push_back(b);
  }
  r.any_host = std::any_of(r.backends.begin(), r.backends.end(),
                           [](Backend b) { return b != Backend::cuda; });
  r.has_cuda = std::find(r.backends.begin(), r.backends.end(), Backend::cuda) != r.backends.end();
  return r;
}

std::string join_or_none(const std::vector<std::string>& items) {
  return items.empty() ? "none" : fmt::format("{}", fmt::join(items, ", "));
}

void register_skip(const std::string& name, const std::string& why) {
  fmt::print("skip {}: {}\n", name, why);
  benchmark::RegisterBenchmark(name.c_str(), [why](benchmark::State& state) {
    state.SkipWithError(("unsupported: " + why).c_str());
  });
}

void register_timed_row(const std::string& name, int repetitions,
                        std::function<void(benchmark::State&)> body) {
  auto* b = benchmark::RegisterBenchmark(name.c_str(), std::move(body));
  b->UseManualTime()->Unit(benchmark::kMillisecond)->Repetitions(std::max(1, repetitions));
  if (repetitions > 1) b->ReportAggregatesOnly(true);
}

std::optional<GradForm> pick_grad_form(const std::string& choice, const char* what,
                                       const std::function<std::string(GradForm)>& why_not,
                                       std::string* reasons) {
  for (GradForm f : {GradForm::compact, GradForm::dense}) {
    if (choice == "compact" && f != GradForm::compact) continue;
    if (choice == "dense" && f != GradForm::dense) continue;
    const std::string why = why_not(f);
    if (why.empty()) return f;
    *reasons += fmt::format("{}{} {}: {}", reasons->empty() ? "" : "; ",
                            f == GradForm::compact ? "compact" : "dense", what, why);
  }
  return std::nullopt;
}

namespace {
uint64_t splitmix64(uint64_t& s) {
  uint64_t z = (s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
}  // namespace

void fill_uniform(void* data, int64_t elems, DType dtype, uint64_t seed) {
  MEMLAYERS_CHECK(dtype == DType::f32 || dtype == DType::bf16,
                  "fill_uniform: dtype {} is not accepted; accepted: fp32, bf16", to_string(dtype));
  const int threads = host_threads();
  const int64_t per = (elems + threads - 1) / threads;
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([=] {
      uint64_t s = seed * 0x2545f4914f6cdd1dull + uint64_t(t) + 1;
      const int64_t lo = std::min(elems, per * t), hi = std::min(elems, per * (t + 1));
      for (int64_t i = lo; i < hi; ++i) {
        const float v = float(int64_t(splitmix64(s) >> 40) - (int64_t{1} << 23)) * 0x1p-23f;
        if (dtype == DType::bf16)
          static_cast<uint16_t*>(data)[i] = float_to_bf16_bits(v);
        else
          static_cast<float*>(data)[i] = v;
      }
    });
  }
  for (auto& th : pool) th.join();
}

Buffer::Buffer(const Memory& m, std::size_t bytes)
    : mem_(&m), ptr_(m.alloc(std::max<std::size_t>(bytes, 1))), bytes_(bytes) {}
Buffer::Buffer(Buffer&& o) noexcept
    : mem_(o.mem_), ptr_(std::exchange(o.ptr_, nullptr)), bytes_(o.bytes_) {}
Buffer& Buffer::operator=(Buffer&& o) noexcept {
  std::swap(mem_, o.mem_);
  std::swap(ptr_, o.ptr_);
  std::swap(bytes_, o.bytes_);
  return *this;
}
Buffer::~Buffer() {
  if (ptr_) mem_->release(ptr_);
}
Buffer Buffer::upload(const Memory& m, const void* host, std::size_t bytes) {
  Buffer b(m, bytes);
  if (bytes) m.to_device(b.ptr_, host, bytes);
  return b;
}

bool time_rotating(benchmark::State& state, Backend backend, int64_t sets,
                   const std::function<void(int64_t)>& launch,
                   const std::function<void(int64_t)>& on_timed, double* seconds,
                   int64_t* iterations) {
  const Timing& t = *backend_info(backend).timing;
  const Memory& mem = *backend_info(backend).memory;
  void* start = t.event_create();
  void* end = t.event_create();
  *seconds = 0;
  *iterations = 0;
  bool ok = true;
  try {
    launch(0);  // warm-up
    mem.synchronize();
    for (auto _ : state) {
      const int64_t set = (*iterations)++ % std::max<int64_t>(1, sets);
      t.event_record(start, nullptr);
      launch(set);
      t.event_record(end, nullptr);
      const double s = t.elapsed_ms(start, end) / 1e3;
      state.SetIterationTime(s);
      *seconds += s;
      if (on_timed) on_timed(set);
    }
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
    ok = false;
  }
  t.event_destroy(start);
  t.event_destroy(end);
  return ok;
}

// ---- main ----

int run_registered(int* argc, char** argv, const char* program, const std::atomic<int>& failures) {
  benchmark::Initialize(argc, argv);
  if (benchmark::ReportUnrecognizedArguments(*argc, argv)) return 2;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  if (failures > 0) {
    fmt::print(stderr, "{}: {} row(s) failed (see ERROR OCCURRED above)\n", program,
               failures.load());
    return 1;
  }
  return 0;
}

int main_guarded(const char* program, int argc, char** argv, int (*run)(int, char**)) {
  host_blas::use_native_core(argc, argv);  // OpenBLAS's own kernels, not its generic fallback
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    fmt::print(stderr, "{}: {}\n", program, e.what());
    return 2;
  }
}

// ---- flags ----

Flags::Flags(std::string program, std::string description)
    : program_(std::move(program)), description_(std::move(description)) {}

void Flags::add(std::string name, std::string default_value, std::string help,
                std::function<void(const std::string&)> set) {
  flags_.push_back({std::move(name), std::move(default_value), std::move(help), std::move(set)});
}

void Flags::add_int(std::string name, int64_t* target, std::string help, int64_t min_value) {
  const std::string flag = name;
  add(std::move(name), std::to_string(*target), std::move(help), [=](const std::string& v) {
    int64_t x = 0;
    auto [ptr, ec] = std::from_chars(v.data(), v.data() + v.size(), x);
    MEMLAYERS_CHECK(ec == std::errc() && ptr == v.data() + v.size(), "--{} {}: not an integer",
                    flag, v);
    MEMLAYERS_CHECK(x >= min_value, "--{} {}: must be at least {}", flag, v, min_value);
    *target = x;
  });
}

void Flags::add_double(std::string name, double* target, std::string help) {
  const std::string flag = name;
  add(std::move(name), fmt::format("{}", *target), std::move(help), [=](const std::string& v) {
    char* end = nullptr;
    const double x = std::strtod(v.c_str(), &end);
    MEMLAYERS_CHECK(!v.empty() && end == v.c_str() + v.size() && std::isfinite(x),
                    "--{} {}: not a number", flag, v);
    *target = x;
  });
}

void Flags::add_choice(std::string name, std::string* target, std::vector<std::string> choices,
                       std::string help) {
  const std::string flag = name;
  help += fmt::format(" {{{}}}", fmt::join(choices, ","));
  add(std::move(name), *target, std::move(help), [=](const std::string& v) {
    MEMLAYERS_CHECK(std::find(choices.begin(), choices.end(), v) != choices.end(),
                    "--{} {}: accepted are {}", flag, v, fmt::join(choices, ", "));
    *target = v;
  });
}

void Flags::add_switch(std::string name, bool* target, std::string help) {
  const std::string flag = name;
  add(std::move(name), *target ? "true" : "false", std::move(help), [=](const std::string& v) {
    if (v == "true" || v == "1")
      *target = true;
    else if (v == "false" || v == "0")
      *target = false;
    else
      fail("--{}={}: accepted are --{} alone, or =true, =false, =1, =0", flag, v, flag);
  });
  flags_.back().is_switch = true;
}

void Flags::add_string(std::string name, std::string* target, std::string help) {
  add(std::move(name), target->empty() ? "(none)" : *target, std::move(help),
      [=](const std::string& v) { *target = v; });
}

std::string Flags::help() const {
  std::string out = fmt::format("{}: {}\n\nUsage: {} [flags] [--benchmark_* flags]\n\n", program_,
                                description_, program_);
  for (const auto& f : flags_) {
    out += fmt::format("  --{} (default: {})\n", f.name, f.default_value);
    std::size_t start = 0;
    while (start <= f.help.size()) {
      const std::size_t nl = f.help.find('\n', start);
      const std::string line =
          f.help.substr(start, nl == std::string::npos ? std::string::npos : nl - start);
      out += fmt::format("      {}\n", line);
      if (nl == std::string::npos) break;
      start = nl + 1;
    }
  }
  out +=
      "\nGoogle Benchmark's own flags pass through unchanged, e.g. --benchmark_filter=REGEX,\n"
      "--benchmark_format=json, --benchmark_out=FILE, --benchmark_out_format=json,\n"
      "--benchmark_min_time=SECONDS, --benchmark_list_tests.\n";
  if (!epilog_.empty()) out += "\n" + epilog_;
  return out;
}

bool Flags::parse(int* argc, char** argv) {
  std::vector<char*> rest{argv[0]};
  for (int i = 1; i < *argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      fmt::print("{}", help());
      return false;
    }
    if (arg.rfind("--benchmark_", 0) == 0) {
      rest.push_back(argv[i]);
      continue;
    }
    MEMLAYERS_CHECK(arg.rfind("--", 0) == 0 && arg.size() > 2,
                    "unexpected argument '{}': flags are --name value or --name=value (--help "
                    "lists them)",
                    arg);
    const std::size_t eq = arg.find('=');
    const std::string name = arg.substr(2, eq == std::string::npos ? std::string::npos : eq - 2);
    auto it =
        std::find_if(flags_.begin(), flags_.end(), [&](const Flag& f) { return f.name == name; });
    if (it == flags_.end()) {
      std::vector<std::string> names;
      for (const auto& f : flags_) names.push_back("--" + f.name);
      fail("unknown flag --{}; accepted are {} and Google Benchmark's --benchmark_* flags", name,
           fmt::join(names, " "));
    }
    std::string value;
    if (eq != std::string::npos) {
      value = arg.substr(eq + 1);
    } else if (it->is_switch) {
      value = "true";
    } else {
      MEMLAYERS_CHECK(i + 1 < *argc, "--{} needs a value (--help lists them)", name);
      value = argv[++i];
    }
    it->set(value);
    given_[name] = true;
  }
  for (std::size_t i = 0; i < rest.size(); ++i) argv[i] = rest[i];
  *argc = static_cast<int>(rest.size());
  return true;
}

void add_run_flags(Flags& flags, const RunFlags& f) {
  if (f.peak_gbs)
    flags.add_double("peak-gbs", f.peak_gbs,
                     "nominal peak bandwidth in GB/s for pct_peak (3350 = H100 SXM HBM3)");
  if (f.peak_tflops)
    flags.add_double("peak-tflops", f.peak_tflops,
                     "nominal peak compute in TFLOP/s for pct_peak_tflops (67 = H100 SXM fp32,\n"
                     "no tensor cores)");
  if (f.ceiling_bytes)
    flags.add("ceiling-bytes", "auto",
              "buffer of the bandwidth ceilings; auto: at least 8 x the last-level cache (host\n"
              "LLC, and the GPU's L2 when cuda runs) and at least 1 GiB, at most a quarter of\n"
              "physical memory",
              [target = f.ceiling_bytes](const std::string& v) {
                char* end = nullptr;
                *target = std::strtoll(v.c_str(), &end, 10);
                MEMLAYERS_CHECK(!v.empty() && *end == '\0' && *target >= 4096,
                                "--ceiling-bytes {}: must be an integer >= 4096 or 'auto'", v);
              });
  flags.add_int("seed", f.seed, "seed of " + f.seed_what);
  flags.add_int("reps", f.reps, "repetitions per row; the median is the record", 1);
  flags.add_int("sets", f.sets, "input sets (" + f.sets_what + ") rotated between iterations", 1);
}

void add_backend_flags(Flags& flags, std::string* backend, std::string* variant,
                       const std::string& unit) {
  flags.add_string("backend", backend,
                   "comma-separated: cpu, cuda, all (= cpu,cuda), or the correctness backends\n"
                   "simt and reference, which run only when named");
  *backend = "all";
  flags.add_string("variant", variant, "only the " + unit + " of this name (on each backend run)");
}

std::string finish_run_flags(const Flags& flags, const RunFlags& f, int64_t cache_bytes) {
  if (f.peak_gbs) MEMLAYERS_CHECK(*f.peak_gbs > 0, "--peak-gbs {}: must be > 0", *f.peak_gbs);
  if (f.peak_tflops)
    MEMLAYERS_CHECK(*f.peak_tflops > 0, "--peak-tflops {}: must be > 0", *f.peak_tflops);
  if (!f.ceiling_bytes || flags.given("ceiling-bytes")) return "--ceiling-bytes";
  const TableSizing t = size_table(4096, cache_bytes);
  *f.ceiling_bytes = int64_t(t.bytes);
  return t.why;
}

}  // namespace memlayers::bench
