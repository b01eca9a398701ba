// bench_embbag: every registered weighted-EmbeddingBag variant, forward and backward, timed against
// the memory roofline that the same run measures (DESIGN.md §5).
//
// Build: cmake -S . -B build -G Ninja && cmake --build build --target bench_embbag
// Run:   build/bench/embbag/bench_embbag --dim 1024 --k 32
//        build/bench/embbag/bench_embbag --dim 1024 --k 32 --benchmark_out=embbag.json
//            --benchmark_out_format=json          (JSON is the record the report reads)
//        build/bench/embbag/bench_embbag --help   (every flag, its default, the bytes counted)
//
// Bytes come from the op's declaration (Fwd::bytes_moved, Bwd::bytes_moved with U counted from
// the indices actually used); the bench never counts them itself. Times are the backend's own
// (CUDA events on the GPU, a steady clock on the host), reported as manual time; the record is
// the median of --reps repetitions.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <memory>
#include <numeric>
#include <optional>
#include <random>
#include <vector>

#include <fmt/format.h>

#include "bench/common/bench_common.h"
#include "embbag/embbag.h"
#include "simt/memory.h"

namespace {

using namespace memlayers;
using namespace memlayers::embbag;
namespace mb = memlayers::bench;
using mb::Buffer;
using mb::GradForm;

// ---- configuration ----

struct Config {
  int64_t dim = 1024, k = 32, batch = 4096, rows = 0, seed = 1, reps = 5, sets = 4;
  std::string dtype = "fp32", index = "int64", direction = "all", backend = "all", variant;
  std::string dist = "uniform", dv = "auto";
  double zipf_s = 1.0, peak_gbs = 3350;

  DType values_dtype() const { return dtype == "bf16" ? DType::bf16 : DType::f32; }
  DType index_dtype() const { return index == "int32" ? DType::i32 : DType::i64; }
  bool fwd() const { return direction != "bwd"; }
  bool bwd() const { return direction != "fwd"; }
};

constexpr const char* kFormulas =
    R"(Bytes counted (declared once in kernels/embbag/embbag.h, DESIGN.md section 5;
s_X = bytes per element of X, B = batch, U = distinct rows among a batch's indices):
  fwd  B*k*dim*s_V (gathered rows) + B*k*(s_idx + 4) (indices, weights) + B*dim*s_y (output)
  bwd  B*k*dim*s_V (rows re-read for dw) + B*dim*4 (dy) + B*k*4 (dw written)
       + U*dim*4 (compact dV rows written) + B*k*(s_idx + 4)*2 (the sort's keys and values, in
       and out). U is counted from each input set's actual indices.
       A dense dV also zeroes N*dim*4 bytes (N = --rows). That is reported apart, as the counter
       dense_zeroing_bytes and as GB/s_incl_zeroing; GB/s counts only the floor above.
Counters: GB/s = counted bytes / time (1e9 bytes); pct_ceiling = % of the ceiling row measured
in this run (host backends: streaming read of the table with all cores; cuda: device-to-device
copy, read + write bytes counted); pct_peak = % of --peak-gbs; GFLOP/s from the op's flops().
Host rows also carry pct_gather: % of the row ceiling/host/gather_<bytes>B_rows, a plain gather
of B*k fresh random table rows each pass (8 at a time, prefetched as the forward does, summed
with no other arithmetic). Random rows read less than a stream, the shorter the less: that row
says how much of the streaming read a gather of rows this size gets on this machine. It is a
reference, not a bound: a kernel keeping more rows in flight can exceed it.
Rows: ceiling/<backend>/..., embbag_fwd|embbag_bwd/<backend>/<variant>/<shape>, the backward's
ending in _compact or _dense (the dV form timed). With --reps > 1 only the aggregates are
reported; the median is the record.
Threads: the CPU variants and the host ceiling use MEMLAYERS_THREADS threads (default: all).
Backends: 'all' runs cpu and cuda. reference and simt are correctness backends (exact fp64 loops,
and the CUDA source on CPU threads): they run only when named, e.g. --backend cpu,simt.
Unsupported combinations are printed and reported as skipped rows with the reason.)";

// ---- input generation ----

// One input set: indices (raw bytes of the index dtype), weights, dy and its distinct-row count.
struct InputSet {
  std::vector<unsigned char> indices;
  std::vector<float> weights, grad_out;
  int64_t unique_rows = 0;
};

std::vector<InputSet> make_inputs(const Config& c) {
  std::vector<InputSet> sets(c.sets);
  const int64_t n = c.batch * c.k;
  // Hot ranks are spread over the table by a multiplier coprime with N, not packed at its start.
  int64_t mult = std::max<int64_t>(1, int64_t(double(c.rows) * 0.6180339887));
  while (std::gcd(mult, c.rows) != 1) ++mult;
  std::optional<mb::Zipf> zipf;
  if (c.dist == "zipf") zipf.emplace(c.rows, c.zipf_s);
  for (int64_t s = 0; s < c.sets; ++s) {
    std::mt19937_64 rng(uint64_t(c.seed) * 1000003 + uint64_t(s));
    std::uniform_int_distribution<int64_t> uni(0, c.rows - 1);
    std::uniform_real_distribution<float> wdist(0.f, 1.f), gdist(-1.f, 1.f);
    std::uniform_real_distribution<double> unit(0, 1);
    std::vector<int64_t> idx(n);
    for (auto& i : idx) {
      if (zipf) {
        __extension__ using u128 = unsigned __int128;
        const int64_t rank = (*zipf)([&] { return unit(rng); });
        i = int64_t(u128(uint64_t(rank - 1)) * u128(uint64_t(mult)) % u128(uint64_t(c.rows)));
      } else {
        i = uni(rng);
      }
    }
    InputSet& in = sets[s];
    const std::size_t s_idx = dtype_size(c.index_dtype());
    in.indices.resize(std::size_t(n) * s_idx);
    for (int64_t j = 0; j < n; ++j) {
      if (c.index_dtype() == DType::i32) {
        const int32_t v = int32_t(idx[j]);
        std::memcpy(&in.indices[j * 4], &v, 4);
      } else {
        std::memcpy(&in.indices[j * 8], &idx[j], 8);
      }
    }
    in.weights.resize(n);
    for (auto& w : in.weights) w = wdist(rng);
    if (c.bwd()) {
      in.grad_out.resize(std::size_t(c.batch * c.dim));
      for (auto& g : in.grad_out) g = gdist(rng);
    }
    std::sort(idx.begin(), idx.end());
    in.unique_rows = std::unique(idx.begin(), idx.end()) - idx.begin();
  }
  return sets;
}

// ---- buffers on a backend ----

// Everything one backend's variants read and write (reference and cpu share one). The host
// backends' table is the host table itself: simt's kernels reach it as a GPU reaches registered
// (mapped) host memory, so a table of many GiB is not copied for them; cuda gets a copy.
struct Workspace {
  const Memory* mem;
  const void* table = nullptr;
  Buffer table_copy;                               // device table (cuda)
  std::unique_ptr<simt::HostRegistration> mapped;  // the host table, for simt's kernels
  std::vector<Buffer> indices, weights, grad_out;
  Buffer out, grad_weights, unique_rows, grad_compact, num_unique, grad_dense;

  Workspace(Backend b, const Config& c, const void* host_table, std::size_t table_bytes,
            const std::vector<InputSet>& sets)
      : mem(backend_info(b).memory) {
    if (b == Backend::cuda) {
      table_copy = Buffer::upload(*mem, host_table, table_bytes);
      table = table_copy.get();
    } else {
      table = host_table;
      if (b == Backend::simt) mapped = std::make_unique<simt::HostRegistration>(table, table_bytes);
    }
    for (const auto& s : sets) {
      indices.push_back(Buffer::upload(*mem, s.indices.data(), s.indices.size()));
      weights.push_back(Buffer::upload(*mem, s.weights.data(), s.weights.size() * 4));
      if (c.bwd())
        grad_out.push_back(Buffer::upload(*mem, s.grad_out.data(), s.grad_out.size() * 4));
    }
    const std::size_t bk = std::size_t(c.batch * c.k);
    if (c.fwd()) out = Buffer(*mem, std::size_t(c.batch * c.dim) * dtype_size(c.values_dtype()));
    if (c.bwd()) {
      grad_weights = Buffer(*mem, bk * 4);
      unique_rows = Buffer(*mem, bk * 8);
      grad_compact = Buffer(*mem, bk * std::size_t(c.dim) * 4);
      num_unique = Buffer(*mem, 8);
    }
    mem->synchronize();
  }

  float* dense(const Config& c) {
    if (!grad_dense.get()) grad_dense = Buffer(*mem, std::size_t(c.rows) * std::size_t(c.dim) * 4);
    return grad_dense.as<float>();
  }
};

FwdParams fwd_params(const Config& c, const Workspace& w, int64_t set) {
  FwdParams p;
  p.values = w.table;
  p.indices = w.indices[set].get();
  p.weights = w.weights[set].as<const float>();
  p.out = w.out.get();
  p.batch = c.batch;
  p.k = c.k;
  p.dim = c.dim;
  p.num_rows = c.rows;
  p.values_dtype = p.out_dtype = c.values_dtype();
  p.index_dtype = c.index_dtype();
  return p;
}

BwdParams bwd_params(const Config& c, Workspace& w, int64_t set, GradForm form) {
  BwdParams p;
  p.values = w.table;
  p.indices = w.indices[set].get();
  p.weights = w.weights[set].as<const float>();
  p.grad_out = w.grad_out[set].as<const float>();
  p.batch = c.batch;
  p.k = c.k;
  p.dim = c.dim;
  p.num_rows = c.rows;
  p.values_dtype = c.values_dtype();
  p.index_dtype = c.index_dtype();
  p.grad_weights = w.grad_weights.as<float>();
  if (form == GradForm::dense) {
    p.grad_values_dense = w.dense(c);
  } else {
    p.unique_rows = w.unique_rows.as<int64_t>();
    p.grad_values_compact = w.grad_compact.as<float>();
    p.num_unique = w.num_unique.as<int64_t>();
  }
  return p;
}

// ---- timed rows ----

std::atomic<int> g_failures{0};
int g_rows_registered = 0;

// Times `launch(set)` with mb::time_rotating and sets the row's counters. `bytes(set)` is the op's
// declared count for that input set.
template <class Launch, class Bytes>
void timed_loop(benchmark::State& state, const Config& c, Backend b, mb::Ceiling& ceiling,
                mb::Ceiling* gather, Launch launch, Bytes bytes, double flops_per_launch,
                double extra_bytes_per_launch) {
  double seconds = 0, total_bytes = 0;
  int64_t iter = 0;
  if (!mb::time_rotating(
          state, b, c.sets, launch, [&](int64_t set) { total_bytes += bytes(set); }, &seconds,
          &iter)) {
    ++g_failures;
    return;
  }
  if (seconds <= 0) return;
  mb::set_bandwidth_counters(state, total_bytes, seconds, ceiling.gbs(), c.peak_gbs);
  if (gather && gather->gbs() > 0)
    state.counters["pct_gather"] = 100 * total_bytes / seconds / 1e9 / gather->gbs();
  state.counters["GFLOP/s"] = flops_per_launch * double(iter) / seconds / 1e9;
  if (extra_bytes_per_launch > 0) {
    state.counters["dense_zeroing_bytes"] = extra_bytes_per_launch;
    state.counters["GB/s_incl_zeroing"] =
        (total_bytes + extra_bytes_per_launch * double(iter)) / seconds / 1e9;
  }
}

std::string shape_name(const Config& c) {
  return fmt::format("{}_{}_d{}_k{}_b{}_{}", c.dtype, c.index, c.dim, c.k, c.batch, c.dist);
}

void register_fwd(const Config& c, Backend b, Workspace& w, mb::Ceiling& ceiling,
                  mb::Ceiling* gather) {
  mb::for_each_variant<Fwd>(b, c.variant, [&](const Variant<FwdParams>* v) {
    const std::string name = mb::row_name<Fwd>(b, *v, shape_name(c));
    if (std::string why = mb::why_not<Fwd>(*v, fwd_params(c, w, 0)); !why.empty()) {
      mb::register_skip(name, why);
      return;
    }
    mb::register_timed_row(
        name, int(c.reps), [&c, &w, &ceiling, gather, v, b](benchmark::State& state) {
          std::vector<FwdParams> params;
          for (int64_t s = 0; s < c.sets; ++s) params.push_back(fwd_params(c, w, s));
          timed_loop(
              state, c, b, ceiling, gather, mb::nvtx_launch<Fwd>(v, params),
              [&](int64_t s) { return Fwd::bytes_moved(params[s]); }, Fwd::flops(params[0]), 0);
        });
    ++g_rows_registered;
  });
}

void register_bwd(const Config& c, Backend b, const std::vector<InputSet>& sets, Workspace& w,
                  mb::Ceiling& ceiling, mb::Ceiling* gather) {
  mb::for_each_variant<Bwd>(b, c.variant, [&](const Variant<BwdParams>* v) {
    const std::string base = mb::row_name<Bwd>(b, *v, shape_name(c));
    // The compact dV is the floor's form; a variant that only writes a dense dV is measured dense.
    std::string reasons;
    const std::optional<GradForm> form = mb::pick_grad_form(
        c.dv, "dV", [&](GradForm f) { return mb::why_not<Bwd>(*v, bwd_params(c, w, 0, f)); },
        &reasons);
    if (!form) {
      mb::register_skip(base, reasons);
      return;
    }
    const std::string name = base + (form == GradForm::dense ? "_dense" : "_compact");
    std::vector<int64_t> unique;
    for (const auto& s : sets) unique.push_back(s.unique_rows);
    mb::register_timed_row(
        name, int(c.reps),
        [&c, &w, &ceiling, gather, v, b, f = *form, unique](benchmark::State& state) {
          std::vector<BwdParams> params;
          for (int64_t s = 0; s < c.sets; ++s) params.push_back(bwd_params(c, w, s, f));
          const double zeroing = f == GradForm::dense ? Bwd::dense_zeroing_bytes(params[0]) : 0;
          timed_loop(
              state, c, b, ceiling, gather, mb::nvtx_launch<Bwd>(v, params),
              [&](int64_t s) { return Bwd::bytes_moved(params[s], double(unique[s])); },
              Bwd::flops(params[0]), zeroing);
          double mean_unique = 0;
          for (int64_t u : unique) mean_unique += double(u) / double(unique.size());
          state.counters["unique_rows"] = mean_unique;
        });
    ++g_rows_registered;
  });
}

// ---- flags and main ----

int run(int argc, char** argv) {
  Config c;
  mb::Flags flags("bench_embbag",
                  "weighted EmbeddingBag forward and backward, every registered variant, "
                  "against the memory roofline measured in the same run");
  flags.add_int("dim", &c.dim, "values per row (d)", 1);
  flags.add_int("k", &c.k, "rows per bag (top-k)", 1);
  flags.add_int("batch", &c.batch, "bags per launch (tokens B)", 1);
  flags.add("rows", "auto",
            "rows of the table (N); auto: the table is at least 8 x the last-level cache\n"
            "(host LLC, and the GPU's L2 when cuda runs) and at least 1 GiB, at most a quarter of\n"
            "physical memory",
            [&](const std::string& v) {
              char* end = nullptr;
              c.rows = std::strtoll(v.c_str(), &end, 10);
              MEMLAYERS_CHECK(!v.empty() && *end == '\0' && c.rows > 0,
                              "--rows {}: must be a positive integer or 'auto'", v);
            });
  flags.add_choice("dtype", &c.dtype, {"fp32", "bf16"},
                   "element type of the table and the forward's output (dy and dV are fp32)");
  flags.add_choice("index", &c.index, {"int32", "int64"}, "index type");
  flags.add_choice("direction", &c.direction, {"fwd", "bwd", "all"}, "which passes to time");
  mb::add_backend_flags(flags, &c.backend, &c.variant, "variant");
  flags.add_choice("dist", &c.dist, {"uniform", "zipf"}, "distribution of the indices");
  flags.add_double("zipf-s", &c.zipf_s, "Zipf exponent for --dist zipf (> 0)");
  flags.add_choice("dv", &c.dv, {"auto", "compact", "dense"},
                   "backward dV form: auto = compact when the variant supports it, else dense");
  const mb::RunFlags run{&c.peak_gbs,
                         nullptr,
                         nullptr,
                         &c.seed,
                         &c.reps,
                         &c.sets,
                         "the table and the input sets",
                         "indices, weights, dy"};
  mb::add_run_flags(flags, run);
  flags.set_epilog(kFormulas);
  if (!flags.parse(&argc, argv)) return 0;
  MEMLAYERS_CHECK(c.zipf_s > 0, "--zipf-s {}: must be > 0", c.zipf_s);
  mb::finish_run_flags(flags, run, 0);
  const mb::Runnable runnable = mb::runnable_backends(mb::parse_backends(c.backend));

  if (!c.variant.empty()) {
    bool found = false;
    std::vector<std::string> known;
    for (Backend b : runnable.backends) {
      found |= mb::list_variants<Fwd>(b, c.variant, "", &known);
      found |= mb::list_variants<Bwd>(b, c.variant, "", &known);
    }
    MEMLAYERS_CHECK(found,
                    "--variant {}: not registered on the backends run ({}); registered "
                    "there: {}",
                    c.variant, c.backend, mb::join_or_none(known));
  }

  const int64_t host_llc = mb::host_last_level_cache_bytes();
  const int64_t l2 = runnable.has_cuda ? mb::gpu_l2_bytes() : 0;
  const int64_t s_v = int64_t(dtype_size(c.values_dtype()));
  std::string rows_why = "--rows";
  if (!flags.given("rows")) {
    const mb::TableSizing t = mb::size_table(c.dim * s_v, std::max(host_llc, l2));
    c.rows = t.rows;
    rows_why = t.why;
  }
  MEMLAYERS_CHECK(c.index_dtype() == DType::i64 || c.rows <= INT32_MAX,
                  "--rows {} does not fit --index int32 (at most {}); use --index int64", c.rows,
                  INT32_MAX);
  const double table_bytes = double(c.rows) * double(c.dim * s_v);
  const double cache = double(std::max(host_llc, l2));

  fmt::print("bench_embbag configuration\n");
  fmt::print("  rows {} ({}), table {} ({})\n", c.rows, rows_why, mb::human_bytes(table_bytes),
             fmt::format("{:.1f} x cache", cache > 0 ? table_bytes / cache : 0.0));
  mb::print_machine(host_llc, l2, mb::host_threads());
  fmt::print("  batch {}, k {}, dim {}, dtype {}, index {}, dist {}{}, direction {}, dV {}\n",
             c.batch, c.k, c.dim, c.dtype, c.index, c.dist,
             c.dist == "zipf" ? fmt::format(" (s {})", c.zipf_s) : std::string(), c.direction,
             c.dv);
  fmt::print("  input sets {}, repetitions {}, seed {}, nominal peak {} GB/s\n", c.sets, c.reps,
             c.seed, c.peak_gbs);
  if (cache > 0 && table_bytes < 8 * cache)
    fmt::print("  note: the table is smaller than 8 x cache: numbers measure cache, not memory\n");
  mb::add_context({{"embbag_rows", std::to_string(c.rows)},
                   {"embbag_table_bytes", fmt::format("{:.0f}", table_bytes)},
                   {"embbag_batch", std::to_string(c.batch)},
                   {"embbag_k", std::to_string(c.k)},
                   {"embbag_dim", std::to_string(c.dim)},
                   {"embbag_dtype", c.dtype},
                   {"embbag_index", c.index},
                   {"embbag_dist", c.dist == "zipf" ? fmt::format("zipf:{}", c.zipf_s) : c.dist}});
  mb::add_machine_context(host_llc, l2, mb::host_threads(), c.peak_gbs);

  // ---- inputs ----
  std::unique_ptr<void, void (*)(void*)> host_table(host_memory().alloc(std::size_t(table_bytes)),
                                                    host_memory().release);
  mb::fill_uniform(host_table.get(), c.rows * c.dim, c.values_dtype(), uint64_t(c.seed));
  const std::vector<InputSet> sets = make_inputs(c);

  // Workspaces and ceilings must outlive RunSpecifiedBenchmarks: the rows hold references.
  std::vector<std::unique_ptr<mb::Ceiling>> ceilings;
  mb::Ceiling* host_ceiling = nullptr;
  mb::Ceiling* cuda_ceiling = nullptr;
  mb::Ceiling* host_gather = nullptr;
  if (runnable.any_host) {
    ceilings.push_back(mb::host_stream_ceiling(host_table.get(), table_bytes, mb::host_threads()));
    host_ceiling = ceilings.back().get();
    host_ceiling->register_row(int(c.reps));
    // A plain gather of the forward's B*k random rows: what the memory system gives rows of
    // this size (the counter pct_gather); the streaming read stays the roof (pct_ceiling).
    ceilings.push_back(mb::host_gather_ceiling(host_table.get(), c.rows, c.dim * s_v, c.batch * c.k,
                                               mb::host_threads()));
    host_gather = ceilings.back().get();
    host_gather->register_row(int(c.reps));
  }
  std::unique_ptr<Workspace> host_space, cuda_space, simt_space;
  Buffer copy_dst;
  if (runnable.any_host)
    host_space = std::make_unique<Workspace>(Backend::cpu, c, host_table.get(),
                                             std::size_t(table_bytes), sets);
  if (std::ranges::count(runnable.backends, Backend::simt))
    simt_space = std::make_unique<Workspace>(Backend::simt, c, host_table.get(),
                                             std::size_t(table_bytes), sets);
  if (runnable.has_cuda) {
    cuda_space = std::make_unique<Workspace>(Backend::cuda, c, host_table.get(),
                                             std::size_t(table_bytes), sets);
    // Half the table copied into a separate buffer: read + write bytes, still far above L2.
    const std::size_t half = std::size_t(table_bytes) / 2 / 256 * 256;
    copy_dst = Buffer(*cuda_space->mem, half);
    ceilings.push_back(mb::cuda_copy_ceiling(cuda_space->table, copy_dst.get(), half));
    cuda_ceiling = ceilings.back().get();
    cuda_ceiling->register_row(int(c.reps));
  }
  for (Backend b : runnable.backends) {
    Workspace& w = b == Backend::cuda   ? *cuda_space
                   : b == Backend::simt ? *simt_space
                                        : *host_space;
    mb::Ceiling& ceiling = b == Backend::cuda ? *cuda_ceiling : *host_ceiling;
    mb::Ceiling* gather = b == Backend::cuda ? nullptr : host_gather;
    if (c.fwd()) register_fwd(c, b, w, ceiling, gather);
    if (c.bwd()) register_bwd(c, b, sets, w, ceiling, gather);
  }

  MEMLAYERS_CHECK(g_rows_registered > 0,
                  "nothing to time: no variant of the selected direction runs on backends {} here "
                  "(see the skip lines above)",
                  c.backend);
  return mb::run_registered(&argc, argv, "bench_embbag", g_failures);
}

}  // namespace

int main(int argc, char** argv) { return mb::main_guarded("bench_embbag", argc, argv, run); }
