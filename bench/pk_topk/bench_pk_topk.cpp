// bench_pk_topk: every registered product-key top-k variant, forward and backward, timed against
// the floor that the same run measures: max(flops / compute ceiling, bytes / bandwidth ceiling)
// (DESIGN.md §5). Compute ceiling: an OpenBLAS sgemm (cuBLAS on the GPU) of the shape of one
// half's scores, or for bf16 on a CPU with AMX the same product on its AMX tiles; bandwidth
// ceiling: an all-core streaming read (a device-to-device copy on the GPU).
//
// Build: cmake -S . -B build -G Ninja && cmake --build build --target bench_pk_topk
// Run:   build/bench/pk_topk/bench_pk_topk                       (the paper's shape, fp32)
//        build/bench/pk_topk/bench_pk_topk --dtype bf16 --qk-norm --direction fwd
//        build/bench/pk_topk/bench_pk_topk --benchmark_out=pk.json --benchmark_out_format=json
//        build/bench/pk_topk/bench_pk_topk --help   (every flag, its default, what is counted)
//   or:  tools/run bench_pk_topk [flags]
//
// Bytes and flops come from the op's declaration (pk_topk::Fwd / Bwd ::bytes_moved and ::flops);
// the bench never counts them itself. Times are the backend's own (CUDA events on the GPU, a steady
// clock on the host), reported as manual time; the record is the median of --reps repetitions.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <memory>
#include <optional>
#include <random>
#include <vector>

#include <cblas.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include "bench/common/bench_common.h"
#include "common/amx.h"
#include "pk_topk/pk_topk.h"

namespace {

using namespace memlayers;
using namespace memlayers::pk_topk;
namespace mb = memlayers::bench;
using mb::Buffer;
using mb::GradForm;

// ---- configuration ----

struct Config {
  int64_t batch = 4096, heads = 4, n_keys = 1024, k_dim = 512, k = 32;
  int64_t seed = 1, reps = 5, sets = 4, ceiling_bytes = 0;
  std::string dtype = "fp32", index = "int64", direction = "all", backend = "all", variant;
  std::string dk = "auto";
  bool qk_norm = false;
  double peak_gbs = 3350, peak_tflops = 67;

  DType data_dtype() const { return dtype == "bf16" ? DType::bf16 : DType::f32; }
  DType index_dtype() const { return index == "int32" ? DType::i32 : DType::i64; }
  bool fwd() const { return direction != "bwd"; }
  bool bwd() const { return direction != "fwd"; }
  int64_t half() const { return k_dim / 2; }
  std::size_t s() const { return dtype_size(data_dtype()); }
  std::size_t query_bytes() const { return std::size_t(batch * heads * k_dim) * s(); }
  std::size_t key_bytes() const { return std::size_t(heads * n_keys * half()) * s(); }
  std::size_t result_elems() const { return std::size_t(batch * heads * k); }
};

constexpr const char* kFormulas =
    R"(Counted (declared once in kernels/pk_topk/pk_topk.{h,cpp}, DESIGN.md section 5;
s = bytes per element of q and K, s_idx of an index, B = batch, h = heads, n = k_dim):
  fwd flops  2*B*h*n_keys*n (both halves' scores; the selection and the k x k step not counted)
  fwd bytes  B*h*n*s (queries) + 2*h*n_keys*(n/2)*s (sub-keys) + B*h*k*(4 + s_idx) (results)
  bwd flops  2*B*h*k*n per requested gradient (dq; the two key halves count as one)
  bwd bytes  B*h*n*s (queries) + B*h*k*(s_idx + 4) (indices, ds) + 2*h*n_keys*(n/2)*s (sub-keys)
             + B*h*n*4 (dq) + per key-gradient form: dense h*n_keys*(n/2)*4 per half, compact
             compact_capacity*((n/2)*4 + 8) per half, compact_capacity = h*min(B*k, n_keys).
The backward times dq plus both key gradients in the form --dk picks; the row's name ends in
_compact or _dense. Its indices are the ones a forward produced on the same queries (printed as
'indices from' below).
Variants that materialise the (B*h, n_keys) score matrices pay Fwd::score_matrix_bytes =
2*B*h*n_keys*4*2 more bytes (written and read back); that traffic is NOT in the floor nor in
GB/s: the floor is what the op must move, and such a variant's pct_floor shows its cost.
Counters: TFLOP/s and GB/s from the counted flops and bytes over the time;
  pct_compute = % of the compute ceiling measured in this run, pct_ceiling = % of the bandwidth
  ceiling, pct_floor = 100 * floor / time with floor = max(flops / compute ceiling,
  bytes / bandwidth ceiling) (100 = at the roofline), pct_peak = % of --peak-gbs,
  pct_peak_tflops = % of --peak-tflops, floor_ms, and the label says which ceiling bounds it.
Ceiling rows (measured in the same run, median of their repetitions):
  host: ceiling/host/sgemm_MxNxK = OpenBLAS cblas_sgemm C(B x n_keys) = Q(B x n/2) * K(n_keys x n/2)^T
        (one head, one half of the scores, fp32, MEMLAYERS_THREADS threads); --dtype bf16 on a
        CPU with AMX-BF16: ceiling/host/amx_bf16_MxNxK, the same product in bf16 with fp32 sums
        on the AMX tiles (shapes padded to the tiles' 32), as v3_amx_rescored scores; and
        ceiling/host/stream_read_SIZE = all-core streaming read of a buffer that no cache holds.
  cuda: ceiling/cuda/sgemm_MxNxK = cuBLAS sgemm of the same shape (default math: fp32, no TF32;
        --dtype bf16: cublasGemmEx bf16 x bf16 -> fp32 on the tensor cores), and
        ceiling/cuda/d2d_copy_SIZE = device-to-device copy, read + write bytes counted.
Rows: pk_topk_fwd|pk_topk_bwd/<backend>/<variant>/<shape>. With --reps > 1 only the aggregates
are reported; the median is the record.
Threads: the CPU variants, the host ceilings and OpenBLAS use MEMLAYERS_THREADS threads
(default: all).
Backends: 'all' runs cpu and cuda. reference and simt are correctness backends (exact fp64
loops, and the CUDA source on CPU threads): they run only when named, e.g. --backend cpu,reference
(the reference takes seconds per call at the default shape; simt wants tiny shapes).
Unsupported combinations are printed and reported as skipped rows with the reason.)";

std::string shape_name(const Config& c) {
  return fmt::format("{}_{}_b{}_h{}_nk{}_n{}_k{}{}", c.dtype, c.index, c.batch, c.heads, c.n_keys,
                     c.k_dim, c.k, c.qk_norm ? "_qknorm" : "");
}

// ---- inputs ----

// Queries and ds rotate between iterations (one set per iteration); the sub-keys are the layer's
// parameters, shared by every set. Indices are filled in later, by a forward.
struct HostInputs {
  std::vector<std::vector<unsigned char>> queries, indices;
  std::vector<std::vector<float>> grad_scores;
  std::vector<unsigned char> keys1, keys2;
};

HostInputs make_inputs(const Config& c) {
  HostInputs in;
  const uint64_t seed = uint64_t(c.seed) * 1000003;
  in.keys1.resize(c.key_bytes());
  in.keys2.resize(c.key_bytes());
  mb::fill_uniform(in.keys1.data(), c.heads * c.n_keys * c.half(), c.data_dtype(), seed + 101);
  mb::fill_uniform(in.keys2.data(), c.heads * c.n_keys * c.half(), c.data_dtype(), seed + 102);
  for (int64_t s = 0; s < c.sets; ++s) {
    in.queries.emplace_back(c.query_bytes());
    mb::fill_uniform(in.queries.back().data(), c.batch * c.heads * c.k_dim, c.data_dtype(),
                     seed + 2 * uint64_t(s));
    if (c.bwd()) {
      in.grad_scores.emplace_back(c.result_elems());
      mb::fill_uniform(in.grad_scores.back().data(), int64_t(c.result_elems()), DType::f32,
                       seed + 2 * uint64_t(s) + 1);
    }
  }
  return in;
}

// ---- buffers on a backend ----

// Everything one backend's variants read and write. reference and cpu share one; simt's kernels,
// like a GPU's, take device memory: a workspace of their own.
struct Workspace {
  const Memory* mem;
  Buffer keys1, keys2, scores, indices_out, dq, count[2], rows[2], compact[2], dense[2];
  std::vector<Buffer> queries, grad_scores, indices;
  int64_t capacity = 0;

  Workspace(Backend b, const Config& c, const HostInputs& in) : mem(backend_info(b).memory) {
    keys1 = Buffer::upload(*mem, in.keys1.data(), in.keys1.size());
    keys2 = Buffer::upload(*mem, in.keys2.data(), in.keys2.size());
    for (const auto& q : in.queries) queries.push_back(Buffer::upload(*mem, q.data(), q.size()));
    for (const auto& g : in.grad_scores)
      grad_scores.push_back(Buffer::upload(*mem, g.data(), g.size() * 4));
    const std::size_t r = c.result_elems();
    scores = Buffer(*mem, r * 4);
    indices_out = Buffer(*mem, r * dtype_size(c.index_dtype()));
    if (c.bwd()) {
      capacity = c.heads * std::min(c.batch * c.k, c.n_keys);  // as pk_topk::compact_capacity
      dq = Buffer(*mem, std::size_t(c.batch * c.heads * c.k_dim) * 4);
      for (int g = 0; g < 2; ++g) {
        count[g] = Buffer(*mem, 8);
        rows[g] = Buffer(*mem, std::size_t(capacity) * 8);
        compact[g] = Buffer(*mem, std::size_t(capacity * c.half()) * 4);
        dense[g] = Buffer(*mem, std::size_t(c.heads * c.n_keys * c.half()) * 4);
      }
    }
    mem->synchronize();
  }

  void set_indices(const HostInputs& in) {
    indices.clear();
    for (const auto& i : in.indices) indices.push_back(Buffer::upload(*mem, i.data(), i.size()));
    mem->synchronize();
  }
};

// The sizes and types that FwdParams and BwdParams share (no pointers).
template <class Params>
Params shape_params(const Config& c) {
  Params p;
  p.batch = c.batch;
  p.heads = c.heads;
  p.n_keys = c.n_keys;
  p.k_dim = c.k_dim;
  p.k = c.k;
  p.dtype = c.data_dtype();
  p.index_dtype = c.index_dtype();
  p.qk_norm = c.qk_norm;
  return p;
}

// shape_params with the inputs both directions read: set `set`'s queries and the sub-keys.
template <class Params>
Params shared_params(const Config& c, const Workspace& w, int64_t set) {
  auto p = shape_params<Params>(c);
  p.queries = w.queries[set].get();
  p.keys1 = w.keys1.get();
  p.keys2 = w.keys2.get();
  return p;
}

FwdParams fwd_params(const Config& c, const Workspace& w, int64_t set) {
  auto p = shared_params<FwdParams>(c, w, set);
  p.scores = w.scores.as<float>();
  p.indices = w.indices_out.get();
  return p;
}

BwdParams bwd_params(const Config& c, const Workspace& w, int64_t set, GradForm form) {
  auto p = shared_params<BwdParams>(c, w, set);
  p.indices = w.indices[set].get();
  p.grad_scores = w.grad_scores[set].as<const float>();
  p.grad_queries = w.dq.as<float>();
  BwdParams::KeyGrad* grads[2] = {&p.grad_keys1, &p.grad_keys2};
  for (int g = 0; g < 2; ++g) {
    if (form == GradForm::dense) {
      grads[g]->dense = w.dense[g].as<float>();
    } else {
      grads[g]->rows = w.rows[g].as<int64_t>();
      grads[g]->compact = w.compact[g].as<float>();
      grads[g]->num_rows = w.count[g].as<int64_t>();
    }
  }
  return p;
}

// The backward's indices: what a forward returns on each set's queries. The forward is the first
// supporting variant (name order) of the fastest backend run here: cuda, then cpu, then the
// reference. Returns "<backend>/<variant>".
std::string produce_indices(const Config& c, bool has_cuda,
                            std::vector<std::pair<Backend, Workspace*>> spaces, HostInputs& in) {
  for (Backend b : {Backend::cuda, Backend::cpu, Backend::reference}) {
    if (b == Backend::cuda && !has_cuda) continue;
    Workspace* w = nullptr;
    for (auto& [sb, sw] : spaces)
      if (sb == b || (sb == Backend::cpu && b == Backend::reference)) w = sw;
    if (!w) continue;
    for (const auto* v : Registry<Fwd>::of(b)) {
      if (!v->supports(fwd_params(c, *w, 0)).empty()) continue;
      in.indices.clear();
      for (int64_t s = 0; s < c.sets; ++s) {
        Registry<Fwd>::run(*v, fwd_params(c, *w, s));
        in.indices.emplace_back(w->indices_out.bytes());
        w->mem->synchronize();
        w->mem->to_host(in.indices.back().data(), w->indices_out.get(), w->indices_out.bytes());
      }
      for (auto& [sb, sw] : spaces) sw->set_indices(in);
      return fmt::format("{}/{}", to_string(b), v->name);
    }
  }
  fail(
      "the backward needs indices from a forward, and no forward variant on cuda, cpu or the "
      "reference supports this shape");
}

// ---- ceilings ----

// The backend's two ceilings: bandwidth (GB/s) and compute (GFLOP/s).
struct Ceilings {
  mb::Ceiling* bandwidth = nullptr;
  mb::Ceiling* compute = nullptr;
};

// One head, one half of the forward's scores: C(B x n_keys) = Q(B x n/2) * K(n_keys x n/2)^T.
struct GemmShape {
  int64_t m, n, k;
  double flops() const { return 2.0 * double(m) * double(n) * double(k); }
  std::string name() const { return fmt::format("sgemm_{}x{}x{}", m, n, k); }
};

// ---- timed rows ----

std::atomic<int> g_failures{0};
int g_rows_registered = 0;

// Times one variant's launches and sets the row's counters from the op's declared work.
void time_row(benchmark::State& state, const Config& c, Backend b, const Ceilings& ceil,
              const std::function<void(int64_t)>& launch, double bytes, double flops) {
  double seconds = 0;
  int64_t iterations = 0;
  if (!mb::time_rotating(state, b, c.sets, launch, nullptr, &seconds, &iterations)) {
    ++g_failures;
    return;
  }
  if (seconds <= 0 || iterations == 0) return;
  const double per_call = seconds / double(iterations);
  mb::set_bandwidth_counters(state, bytes * double(iterations), seconds, ceil.bandwidth->gbs(),
                             c.peak_gbs);
  const double tflops = flops / per_call / 1e12;
  state.counters["TFLOP/s"] = tflops;
  const double ceil_gflops = ceil.compute->gflops();
  if (ceil_gflops > 0) state.counters["pct_compute"] = 100 * tflops * 1e3 / ceil_gflops;
  if (c.peak_tflops > 0) state.counters["pct_peak_tflops"] = 100 * tflops / c.peak_tflops;
  const double compute_s = ceil_gflops > 0 ? flops / (ceil_gflops * 1e9) : 0;
  const double memory_s = bytes / (ceil.bandwidth->gbs() * 1e9);
  const double floor_s = std::max(compute_s, memory_s);
  state.counters["floor_ms"] = floor_s * 1e3;
  state.counters["pct_floor"] = 100 * floor_s / per_call;
  state.SetLabel(compute_s >= memory_s ? "floor: compute" : "floor: memory");
}

void register_fwd(const Config& c, Backend b, Workspace& w, const Ceilings& ceil) {
  mb::for_each_variant<Fwd>(b, c.variant, [&](const Variant<FwdParams>* v) {
    const std::string name = mb::row_name<Fwd>(b, *v, shape_name(c));
    if (std::string why = mb::why_not<Fwd>(*v, fwd_params(c, w, 0)); !why.empty()) {
      mb::register_skip(name, why);
      return;
    }
    mb::register_timed_row(name, int(c.reps), [&c, &w, &ceil, v, b](benchmark::State& state) {
      std::vector<FwdParams> params;
      for (int64_t s = 0; s < c.sets; ++s) params.push_back(fwd_params(c, w, s));
      time_row(state, c, b, ceil, mb::nvtx_launch<Fwd>(v, params), Fwd::bytes_moved(params[0]),
               Fwd::flops(params[0]));
    });
    ++g_rows_registered;
  });
}

void register_bwd(const Config& c, Backend b, Workspace& w, const Ceilings& ceil) {
  mb::for_each_variant<Bwd>(b, c.variant, [&](const Variant<BwdParams>* v) {
    const std::string base = mb::row_name<Bwd>(b, *v, shape_name(c));
    // The compact key gradient is the floor's form; a variant without it is measured dense.
    std::string reasons;
    const std::optional<GradForm> form = mb::pick_grad_form(
        c.dk, "dK", [&](GradForm f) { return mb::why_not<Bwd>(*v, bwd_params(c, w, 0, f)); },
        &reasons);
    if (!form) {
      mb::register_skip(base, reasons);
      return;
    }
    const std::string name = base + (form == GradForm::dense ? "_dense" : "_compact");
    mb::register_timed_row(name, int(c.reps),
                           [&c, &w, &ceil, v, b, f = *form](benchmark::State& state) {
                             std::vector<BwdParams> params;
                             for (int64_t s = 0; s < c.sets; ++s)
                               params.push_back(bwd_params(c, w, s, f));
                             time_row(state, c, b, ceil, mb::nvtx_launch<Bwd>(v, params),
                                      Bwd::bytes_moved(params[0]), Bwd::flops(params[0]));
                           });
    ++g_rows_registered;
  });
}

// ---- flags and main ----

int run(int argc, char** argv) {
  Config c;
  mb::Flags flags("bench_pk_topk",
                  "product-key top-k search forward and backward, every registered variant, "
                  "against the compute and memory floor measured in the same run");
  flags.add_int("batch", &c.batch, "tokens B", 1);
  flags.add_int("heads", &c.heads, "heads h", 1);
  flags.add_int("n-keys", &c.n_keys, "sub-keys per half (N = n_keys^2 full keys)", 1);
  flags.add_int("k-dim", &c.k_dim, "query width n (even: two halves of n/2)", 2);
  flags.add_int("k", &c.k, "top-k per head", 1);
  flags.add_choice("dtype", &c.dtype, {"fp32", "bf16"},
                   "element type of q, K1, K2 (products summed in fp32; scores, ds, dq, dK fp32)");
  flags.add_choice("index", &c.index, {"int32", "int64"}, "index type of the results");
  flags.add_switch("qk-norm", &c.qk_norm,
                   "RMS-normalise each query half and each sub-key before the dot products");
  flags.add_choice("direction", &c.direction, {"fwd", "bwd", "all"}, "which passes to time");
  flags.add_choice("dk", &c.dk, {"auto", "compact", "dense"},
                   "backward key-gradient form: auto = compact when the variant supports it,\n"
                   "else dense (dq is always computed)");
  mb::add_backend_flags(flags, &c.backend, &c.variant, "variant");
  const mb::RunFlags run{&c.peak_gbs,
                         &c.peak_tflops,
                         &c.ceiling_bytes,
                         &c.seed,
                         &c.reps,
                         &c.sets,
                         "the keys and the input sets",
                         "queries, ds"};
  mb::add_run_flags(flags, run);
  flags.set_epilog(kFormulas);
  if (!flags.parse(&argc, argv)) return 0;
  {
    // The op's own validation names a bad shape (odd k-dim, k > n_keys, int32 overflow, ...),
    // before anything is allocated; the pointers are a stand-in that passes the pointer checks.
    alignas(64) static unsigned char stand_in[64];
    FwdParams probe = shape_params<FwdParams>(c);
    probe.queries = probe.keys1 = probe.keys2 = stand_in;
    probe.scores = reinterpret_cast<float*>(stand_in);
    probe.indices = stand_in;
    if (std::string why = validate(probe); !why.empty()) fail("{}", why);
  }
  const mb::Runnable runnable = mb::runnable_backends(mb::parse_backends(c.backend));

  if (!c.variant.empty()) {
    bool found = false;
    std::vector<std::string> known;
    for (Backend b : runnable.backends) {
      found |= mb::list_variants<Fwd>(b, c.variant, " (fwd)", &known) && c.fwd();
      found |= mb::list_variants<Bwd>(b, c.variant, " (bwd)", &known) && c.bwd();
    }
    MEMLAYERS_CHECK(found,
                    "--variant {}: not registered for --direction {} on the backends run ({}); "
                    "registered there: {}",
                    c.variant, c.direction, c.backend, mb::join_or_none(known));
  }

  // Nothing is allocated or computed for a run that has nothing to time.
  bool any_fwd = false, any_bwd = false;
  for (Backend b : runnable.backends) {
    any_fwd |= c.fwd() && !mb::selected_variants<Fwd>(b, c.variant).empty();
    any_bwd |= c.bwd() && !mb::selected_variants<Bwd>(b, c.variant).empty();
  }
  if (!any_fwd && !any_bwd) {
    for (Backend b : runnable.backends)
      for (const char* op : {Fwd::name, Bwd::name})
        fmt::print("note: {} has no variant registered on backend {}\n", op, to_string(b));
    fail(
        "nothing to time: no variant of --direction {} is registered on backends {} here "
        "(--backend reference,cpu adds the reference)",
        c.direction, c.backend);
  }

  const int64_t host_llc = mb::host_last_level_cache_bytes();
  const int64_t l2 = runnable.has_cuda ? mb::gpu_l2_bytes() : 0;
  const std::string ceiling_why = mb::finish_run_flags(flags, run, std::max(host_llc, l2));
  const int threads = mb::host_threads();
  const GemmShape gemm{c.batch, c.n_keys, c.half()};
  // bf16 on a CPU with AMX: the tiles are the host's bf16 roof (its fp32 FMAs are not).
  const bool host_amx = c.data_dtype() == DType::bf16 && amx_unavailable().empty();

  fmt::print("bench_pk_topk configuration\n");
  fmt::print("  batch {}, heads {}, n_keys {} (N = {}), k_dim {}, k {}, dtype {}, index {}{}\n",
             c.batch, c.heads, c.n_keys, c.n_keys * c.n_keys, c.k_dim, c.k, c.dtype, c.index,
             c.qk_norm ? ", qk-norm" : "");
  fmt::print("  direction {}, dK {}, input sets {}, repetitions {}, seed {}\n", c.direction, c.dk,
             c.sets, c.reps, c.seed);
  mb::print_machine(host_llc, l2, threads);
  fmt::print(
      "  bandwidth ceiling over {} ({}); compute ceiling {}; nominal peaks {} GB/s, {} "
      "TFLOP/s\n",
      mb::human_bytes(double(c.ceiling_bytes)), ceiling_why,
      host_amx ? fmt::format("amx_bf16_{}x{}x{} on the host", gemm.m, gemm.n, gemm.k) : gemm.name(),
      c.peak_gbs, c.peak_tflops);
  {
    const FwdParams p = shape_params<FwdParams>(c);
    fmt::print("  fwd counts {:.3f} GFLOP, {} (a score-matrix variant moves {} more)\n",
               Fwd::flops(p) / 1e9, mb::human_bytes(Fwd::bytes_moved(p)),
               mb::human_bytes(Fwd::score_matrix_bytes(p)));
    benchmark::AddCustomContext("pk_topk_score_matrix_bytes",
                                fmt::format("{:.0f}", Fwd::score_matrix_bytes(p)));
  }
  mb::add_context({{"pk_topk_batch", std::to_string(c.batch)},
                   {"pk_topk_heads", std::to_string(c.heads)},
                   {"pk_topk_n_keys", std::to_string(c.n_keys)},
                   {"pk_topk_k_dim", std::to_string(c.k_dim)},
                   {"pk_topk_k", std::to_string(c.k)},
                   {"pk_topk_dtype", c.dtype},
                   {"pk_topk_index", c.index},
                   {"pk_topk_qk_norm", c.qk_norm ? "true" : "false"},
                   {"peak_tflops", fmt::format("{}", c.peak_tflops)}});
  mb::add_machine_context(host_llc, l2, threads, c.peak_gbs);

  // ---- inputs, workspaces, ceilings: all must outlive RunSpecifiedBenchmarks ----
  HostInputs in = make_inputs(c);
  std::unique_ptr<Workspace> host_space, cuda_space, simt_space;
  std::vector<std::pair<Backend, Workspace*>> spaces;
  if (runnable.any_host) {
    host_space = std::make_unique<Workspace>(Backend::cpu, c, in);
    spaces.emplace_back(Backend::cpu, host_space.get());
  }
  if (runnable.has_cuda) {
    cuda_space = std::make_unique<Workspace>(Backend::cuda, c, in);
    spaces.emplace_back(Backend::cuda, cuda_space.get());
  }
  if (std::ranges::count(runnable.backends, Backend::simt)) {
    simt_space = std::make_unique<Workspace>(Backend::simt, c, in);
    spaces.emplace_back(Backend::simt, simt_space.get());
  }
  if (any_bwd) {
    // Host workspaces are needed for a cpu or reference forward even when only cuda is timed.
    if (!host_space) {
      host_space = std::make_unique<Workspace>(Backend::cpu, c, in);
      spaces.emplace_back(Backend::cpu, host_space.get());
    }
    const std::string from = produce_indices(c, runnable.has_cuda, spaces, in);
    fmt::print("  backward indices from a forward by {}\n", from);
    benchmark::AddCustomContext("pk_topk_bwd_indices_from", from);
  }

  std::vector<std::unique_ptr<mb::Ceiling>> ceilings;
  std::unique_ptr<void, void (*)(void*)> stream_buf(nullptr, host_memory().release);
  Ceilings host_ceil, cuda_ceil;
  if (runnable.any_host) {
    stream_buf.reset(host_memory().alloc(std::size_t(c.ceiling_bytes)));
    mb::fill_uniform(stream_buf.get(), c.ceiling_bytes / 4, DType::f32, 11);
    ceilings.push_back(host_amx ? mb::host_amx_ceiling(gemm.m, gemm.n, gemm.k)
                                : mb::host_gemm_ceiling(gemm.m, gemm.n, gemm.k));
    host_ceil.compute = ceilings.back().get();
    ceilings.push_back(mb::host_stream_ceiling(stream_buf.get(), double(c.ceiling_bytes), threads));
    host_ceil.bandwidth = ceilings.back().get();
  }
  Buffer copy_src, copy_dst;
  if (runnable.has_cuda) {
    MEMLAYERS_CHECK(mb::have_cuda_gemm_ceiling(),
                    "backend cuda runs but this binary has no cuBLAS ceiling");
    ceilings.push_back(mb::cuda_gemm_ceiling(gemm.m, gemm.n, gemm.k, c.data_dtype()));
    cuda_ceil.compute = ceilings.back().get();
    // Half the ceiling buffer copied into the other half's worth: read + write bytes counted.
    const std::size_t half = std::size_t(c.ceiling_bytes) / 2 / 256 * 256;
    const Memory& mem = *backend_info(Backend::cuda).memory;
    copy_src = Buffer(mem, half);
    copy_dst = Buffer(mem, half);
    mem.fill_bytes(copy_src.get(), 0x3c, half);
    ceilings.push_back(mb::cuda_copy_ceiling(copy_src.get(), copy_dst.get(), half));
    cuda_ceil.bandwidth = ceilings.back().get();
  }
  for (auto& ceiling : ceilings) ceiling->register_row(int(c.reps));

  for (Backend b : runnable.backends) {
    Workspace& w = b == Backend::cuda   ? *cuda_space
                   : b == Backend::simt ? *simt_space
                                        : *host_space;
    const Ceilings& ceil = b == Backend::cuda ? cuda_ceil : host_ceil;
    if (c.fwd()) register_fwd(c, b, w, ceil);
    if (any_bwd) register_bwd(c, b, w, ceil);
  }

  MEMLAYERS_CHECK(g_rows_registered > 0,
                  "nothing to time: no variant of the selected direction runs on backends {} here "
                  "(see the notes and skip lines above; --backend reference,cpu adds the "
                  "reference)",
                  c.backend);
  return mb::run_registered(&argc, argv, "bench_pk_topk", g_failures);
}

}  // namespace

int main(int argc, char** argv) { return mb::main_guarded("bench_pk_topk", argc, argv, run); }
