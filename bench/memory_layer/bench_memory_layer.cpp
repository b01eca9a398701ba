// bench_memory_layer: every registered memory-layer composition, forward (inference) and
// forward + backward (a training step), timed end to end and broken down by stage (projection,
// search, softmax, bag, gating and their backward) against floors the same run measures: each
// stage against max(bytes / bandwidth ceiling, flops / compute ceiling) of its own declared
// bytes and flops (kernels/memory_layer/stage_costs.h), the whole layer against
// memory_layer::Fwd / Bwd's declared totals. Bandwidth ceiling: an all-core streaming read (a
// device-to-device copy on the GPU); compute ceiling: a GEMM of the query projection's shape
// (B × h·n × d), OpenBLAS sgemm on the host, cuBLAS sgemm on the GPU.
//
// Build: cmake -S . -B build -G Ninja && cmake --build build --target bench_memory_layer
// Run:   build/bench/memory_layer/bench_memory_layer                 (memory+, the paper's shape)
//        build/bench/memory_layer/bench_memory_layer --shape small --kind memory --direction fwd
//        build/bench/memory_layer/bench_memory_layer --benchmark_out=ml.json
//            --benchmark_out_format=json
//        build/bench/memory_layer/bench_memory_layer --help   (every flag, what is counted)
//   or:  tools/run bench_memory_layer [flags]
//
// The stage breakdown comes from a StageClock (common/stages.h) installed during the timed calls:
// each StageScope of the composition records an event of the backend's Timing (CUDA events on
// the GPU, a steady clock on the host) on entry and exit; the clock sums a stage's intervals per
// call. Each stage is reported as a row of its own right after its layer row.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>

#include "bench/common/bench_common.h"
#include "common/stages.h"
#include "memory_layer/memory_layer.h"
#include "memory_layer/stage_costs.h"

namespace {

using namespace memlayers;
using namespace memlayers::memory_layer;
namespace mb = memlayers::bench;
using mb::Buffer;

// ---- configuration ----

struct Options {
  int64_t batch = 4096, d_model = 1024, heads = 4, n_keys = 1024, k_dim = 512, k = 32;
  int64_t value_dim = 0;  // 0: d_model
  int64_t seed = 1, reps = 3, sets = 2, ceiling_bytes = 0;
  std::string shape = "paper", kind = "memory_plus", dtype = "fp32", direction = "all";
  std::string backend = "all", variant;
  bool qk_norm = false, gate = false;
  double peak_gbs = 3350, peak_tflops = 67;

  bool fwd() const { return direction != "fwd_bwd"; }
  bool fwd_bwd() const { return direction != "fwd"; }
  Config config() const {
    Config c;
    c.kind = *parse_kind(kind);
    c.d_model = d_model, c.heads = heads, c.n_keys = n_keys, c.k_dim = k_dim, c.k = k;
    c.value_dim = value_dim > 0 ? value_dim : d_model;
    c.qk_norm = qk_norm, c.scalar_gate = gate;
    c.values_dtype = dtype == "bf16" ? DType::bf16 : DType::f32;
    return c;
  }
};

// --shape presets; flags given on the command line win.
struct Preset {
  const char* name;
  int64_t batch, d_model, heads, n_keys, k_dim, k;
};
constexpr Preset kPresets[] = {
    {"paper", 4096, 1024, 4, 1024, 512, 32},  // N = 1M values: 4 GiB fp32, 2 GiB bf16
    {"small", 512, 512, 4, 256, 128, 16},     // N = 64K values: a quick look on any machine
};

constexpr const char* kFormulas =
    R"(The layer (kernels/memory_layer/memory_layer.h): q = x*Wq + bq; the product-key search of k
of N = n_keys^2 values per head; softmax per head; one bag of h*k value rows per token;
memory: out = bag; memory_plus: out = (bag (.) silu(x*W1 + b1))*W2 + b2; peer: single-neuron
experts; --gate: out *= sigmoid(x*wg). The value table (N rows) is shared by the layers of a
model; all parameters but the values (--dtype) are fp32.
Rows: memory_layer_fwd|memory_layer_fwd_bwd/<backend>/<variant>/<shape>, then one row per stage,
<row>/stage:<name>, in the order the composition runs them, and <row>/stage:outside (the call's
time outside every stage: allocation, copies).
  fwd      an inference forward: nothing kept for a backward.
  fwd_bwd  a training step: the forward keeping what the backward needs, then the backward to
           dx, dWq, dbq, dK1 and dK2 (dense), dV compact (peer: dU too), dW1, db1, dW2, db2, dwg.
Counted (declared once: the layer's totals in memory_layer::Fwd / Bwd, memory_layer.cpp; the
stages' in stage_costs.cpp, DESIGN.md section 5):
  layer row  bytes = Fwd::bytes_moved (+ Bwd::bytes_moved): parameters once, x, out (dout,
             every gradient), the gathered value rows B*h*k*v*s_V; flops = Fwd::flops
             (+ Bwd::flops): GEMMs 2*m*n*k, search 2*B*h*n_keys*n, bag 2*B*h*k*v (backward:
             twice the GEMMs, 4*B*h*k*n, 4*B*h*k*v).
  stage row  the stage's own bytes and flops: projection and gating GEMMs (A, B read, C written,
             2*m*n*k), search = pk_topk::Fwd / Bwd, bag = embbag::Fwd / Bwd (compact dV with
             the expected distinct rows of B*h*k uniform draws), softmax and the elementwise
             gating passes their reads and writes (no flops); a stage also counts the
             intermediates that cross to the next stage (q, scores, weights, bag sums).
Counters of a layer row: us_per_token, tokens_per_s, GB/s and TFLOP/s of the declared totals,
  pct_ceiling / pct_compute (% of the bandwidth / compute ceiling measured in this run),
  floor_ms = max(bytes / bandwidth ceiling, flops / compute ceiling), pct_floor = 100 * floor /
  time, stage_floor_ms = the sum of the stages' floors (what a composition of separate stages
  cannot beat), pct_peak / pct_peak_tflops of --peak-gbs / --peak-tflops.
Counters of a stage row (time: the stage's milliseconds per call, median over the repetitions):
  pct_time (its share of the layer row's median time), GB/s, GFLOP/s, floor_ms and pct_floor
  against the stage's own floor, bytes and flops per call; the label says which ceiling bounds
  the floor.
The stage clock is on during the timed calls: two events (host: two steady-clock reads) per
stage entered, part of the layer row's time.
Ceiling rows (measured in the same run, median of their repetitions):
  host: ceiling/host/sgemm_MxNxK = OpenBLAS cblas_sgemm of the projection's shape, fp32
        (MEMLAYERS_THREADS threads), and ceiling/host/stream_read_SIZE = an all-core streaming
        read of a buffer no cache holds;
  cuda: ceiling/cuda/sgemm_MxNxK = cuBLAS sgemm of the same shape (default math: fp32, no
        TF32), and ceiling/cuda/d2d_copy_SIZE (read + write bytes).
Backends: 'all' runs cpu and cuda. reference and simt are correctness backends (fp64 loops, and
the CUDA source on CPU threads): they run only when named (they want tiny shapes).
Unsupported combinations are printed and reported as skipped rows with the reason.)";

std::string shape_name(const Options& o, const Config& c) {
  return fmt::format("{}_{}_b{}_d{}_h{}_nk{}_n{}_k{}_v{}{}{}", o.kind, o.dtype, o.batch, c.d_model,
                     c.heads, c.n_keys, c.k_dim, c.k, c.value_width(), c.qk_norm ? "_qknorm" : "",
                     c.scalar_gate ? "_gate" : "");
}

// ---- buffers on a backend ----

// `elems` elements of `dtype` uniform in [-1, 1) times `scale`, filled in host memory and copied
// to the backend in slices (the value table can be several GiB).
Buffer make_filled(const Memory& mem, int64_t elems, DType dtype, uint64_t seed, float scale = 1) {
  const std::size_t size = dtype_size(dtype);
  Buffer b(mem, std::size_t(elems) * size);
  constexpr int64_t kSlice = int64_t{1} << 24;
  std::vector<unsigned char> host(std::size_t(std::min(elems, kSlice)) * size);
  for (int64_t at = 0; at < elems; at += kSlice) {
    const int64_t n = std::min(kSlice, elems - at);
    mb::fill_uniform(host.data(), n, dtype, seed + uint64_t(at / kSlice) * 7919);
    if (scale != 1 && dtype == DType::f32) {
      float* f = reinterpret_cast<float*>(host.data());
      for (int64_t i = 0; i < n; ++i) f[i] *= scale;
    }
    mem.to_device(b.as<unsigned char>() + std::size_t(at) * size, host.data(),
                  std::size_t(n) * size);
  }
  return b;
}

// Everything the rows of one backend read and write; reference and cpu share one.
struct Workspace {
  const Memory* mem;
  Buffer wq, bq, keys1, keys2, values, down, w1, b1, w2, b2, wg;
  std::vector<Buffer> x, dout;
  Buffer out, q, scores, indices, weights, y, hidden, peer_pre, gate;
  Buffer gx, gwq, gbq, gk1, gk2, vrows, vcompact, vcount, drows, dcompact, dcount, gw1, gb1, gw2,
      gb2, gwg;

  Workspace(Backend backend, const Options& o, const Config& c)
      : mem(backend_info(backend).memory) {
    const int64_t B = o.batch, d = c.d_model, hn = c.heads * c.k_dim, hk = c.heads * c.k,
                  v = c.value_dim, half = c.k_dim / 2, N = c.num_values();
    const uint64_t s = uint64_t(o.seed) * 1000003;
    auto f32 = [&](int64_t n) { return Buffer(*mem, std::size_t(n) * 4); };
    // Weights scaled by 1/sqrt(fan-in): scores and activations of ordinary size (no overflow, no
    // denormals in the softmax).
    const float in_d = 1.0f / std::sqrt(float(d)), in_v = 1.0f / std::sqrt(float(v));
    wq = make_filled(*mem, d * hn, DType::f32, s + 1, in_d);
    bq = make_filled(*mem, hn, DType::f32, s + 2, 0.1f);
    keys1 = make_filled(*mem, c.heads * c.n_keys * half, DType::f32, s + 3);
    keys2 = make_filled(*mem, c.heads * c.n_keys * half, DType::f32, s + 4);
    values = make_filled(*mem, N * c.value_width(), c.values_dtype, s + 5);
    if (c.kind == Kind::peer) down = make_filled(*mem, N * d, c.values_dtype, s + 6, in_d);
    if (c.kind == Kind::memory_plus) {
      w1 = make_filled(*mem, d * v, DType::f32, s + 7, in_d);
      b1 = make_filled(*mem, v, DType::f32, s + 8, 0.1f);
      w2 = make_filled(*mem, v * d, DType::f32, s + 9, in_v);
      b2 = make_filled(*mem, d, DType::f32, s + 10, 0.1f);
    }
    if (c.scalar_gate) wg = make_filled(*mem, d, DType::f32, s + 11, in_d);
    for (int64_t set = 0; set < o.sets; ++set) {
      x.push_back(make_filled(*mem, B * d, DType::f32, s + 100 + 2 * uint64_t(set)));
      if (o.fwd_bwd())
        dout.push_back(make_filled(*mem, B * d, DType::f32, s + 101 + 2 * uint64_t(set)));
    }
    out = f32(B * d);
    if (o.fwd_bwd()) {
      q = f32(B * hn), scores = f32(B * hk), indices = f32(2 * B * hk), weights = f32(B * hk);
      if (c.kind == Kind::memory_plus) y = f32(B * v), hidden = f32(B * v);
      if (c.kind != Kind::memory_plus && c.scalar_gate) y = f32(B * d);
      if (c.kind == Kind::peer) peer_pre = f32(B * hk);
      if (c.scalar_gate) gate = f32(B);
      const int64_t cap = compact_capacity(c, B);
      gx = f32(B * d), gwq = f32(d * hn), gbq = f32(hn);
      gk1 = f32(c.heads * c.n_keys * half), gk2 = f32(c.heads * c.n_keys * half);
      vrows = Buffer(*mem, std::size_t(cap) * 8), vcount = Buffer(*mem, 8);
      vcompact = f32(cap * c.value_width());
      if (c.kind == Kind::peer)
        drows = Buffer(*mem, std::size_t(cap) * 8), dcount = Buffer(*mem, 8),
        dcompact = f32(cap * d);
      if (c.kind == Kind::memory_plus)
        gw1 = f32(d * v), gb1 = f32(v), gw2 = f32(v * d), gb2 = f32(d);
      if (c.scalar_gate) gwg = f32(d);
    }
    mem->synchronize();
  }

  Weights weights_of() const {
    Weights w;
    w.wq = wq.as<float>(), w.bq = bq.as<float>();
    w.keys1 = keys1.as<float>(), w.keys2 = keys2.as<float>();
    w.values = values.get(), w.down = down.get();
    w.w1 = w1.as<float>(), w.b1 = b1.as<float>(), w.w2 = w2.as<float>(), w.b2 = b2.as<float>();
    w.wg = wg.as<float>();
    return w;
  }

  // The forward of set `set`: nothing kept (inference), or what the backward needs.
  FwdParams fwd(const Config& c, int64_t batch, int64_t set, bool keep) const {
    FwdParams p;
    p.config = c, p.weights = weights_of(), p.batch = batch;
    p.x = x[set].as<float>(), p.out = out.as<float>();
    if (keep) p.saved = saved();
    return p;
  }

  Saved saved() const {
    Saved s;
    s.q = q.as<float>(), s.scores = scores.as<float>(), s.indices = indices.as<int64_t>();
    s.weights = weights.as<float>(), s.y = y.as<float>(), s.hidden = hidden.as<float>();
    s.peer_pre = peer_pre.as<float>(), s.gate = gate.as<float>();
    return s;
  }

  BwdParams bwd(const Config& c, int64_t batch, int64_t set) const {
    BwdParams p;
    p.config = c, p.weights = weights_of(), p.batch = batch;
    p.x = x[set].as<float>(), p.grad_out = dout[set].as<float>(), p.saved = saved();
    Grads& g = p.grads;
    g.x = gx.as<float>(), g.wq = gwq.as<float>(), g.bq = gbq.as<float>();
    g.keys1 = gk1.as<float>(), g.keys2 = gk2.as<float>();
    g.value_rows = vrows.as<int64_t>(), g.values_compact = vcompact.as<float>();
    g.num_value_rows = vcount.as<int64_t>();
    g.down_rows = drows.as<int64_t>(), g.down_compact = dcompact.as<float>();
    g.num_down_rows = dcount.as<int64_t>();
    g.w1 = gw1.as<float>(), g.b1 = gb1.as<float>(), g.w2 = gw2.as<float>(), g.b2 = gb2.as<float>();
    g.wg = gwg.as<float>();
    return p;
  }
};

// ---- the stage clock ----

// Records an event of the backend's Timing at every stage entry and exit; settle() sums each
// stage's intervals of the call just timed. Events come from a pool, so a timed call creates none.
class EventStageClock final : public StageClock {
 public:
  explicit EventStageClock(const Timing& t) : t_(t) {}
  ~EventStageClock() override {
    drop();
    for (void* e : pool_) t_.event_destroy(e);
  }
  EventStageClock(const EventStageClock&) = delete;
  EventStageClock& operator=(const EventStageClock&) = delete;

  void enter(std::string_view stage, Stream stream) override {
    open_.push_back({stage, take(), nullptr});
    t_.event_record(open_.back().start, stream);
  }
  void leave(std::string_view stage, Stream stream) override {
    auto it = std::find_if(open_.rbegin(), open_.rend(),
                           [&](const Interval& i) { return i.stage == stage; });
    if (it == open_.rend()) return;  // a scope opened before the clock was installed
    Interval done = *it;
    open_.erase(std::next(it).base());
    done.end = take();
    t_.event_record(done.end, stream);
    closed_.push_back(done);
  }
  // Forgets what was recorded (the warm-up call).
  void drop() {
    for (auto* list : {&closed_, &open_})
      for (const Interval& i : *list) give(i);
    closed_.clear();
    open_.clear();
  }
  // Adds each stage's milliseconds of the intervals recorded since the last call to `ms`.
  void settle(std::map<std::string, double, std::less<>>& ms) {
    for (const Interval& i : closed_) ms[std::string(i.stage)] += t_.elapsed_ms(i.start, i.end);
    drop();
  }

 private:
  struct Interval {
    std::string_view stage;  // the composition's kFwdStages / kBwdStages literals
    void* start;
    void* end;
  };
  void* take() {
    if (pool_.empty()) return t_.event_create();
    void* e = pool_.back();
    pool_.pop_back();
    return e;
  }
  void give(const Interval& i) {
    for (void* e : {i.start, i.end})
      if (e) pool_.push_back(e);
  }
  const Timing& t_;
  std::vector<void*> pool_;
  std::vector<Interval> open_, closed_;
};

struct Ceilings {
  mb::Ceiling* bandwidth = nullptr;
  mb::Ceiling* compute = nullptr;  // null: not measured on this device
  double gbs() const { return bandwidth->gbs(); }
  double gflops() const { return compute ? compute->gflops() : 0; }
  // max(bytes / bandwidth, flops / compute) in seconds, and whether compute bounds it.
  std::pair<double, bool> floor(double bytes, double flops) const {
    const double mem_s = bytes / (gbs() * 1e9);
    const double comp_s = gflops() > 0 ? flops / (gflops() * 1e9) : 0;
    return {std::max(mem_s, comp_s), comp_s > mem_s};
  }
};

// ---- rows ----

std::atomic<int> g_failures{0};
int g_rows_registered = 0;

// What a layer row measured, per repetition, for its stage rows to report.
struct Measured {
  std::vector<double> call_ms;                                       // per repetition
  std::map<std::string, std::vector<double>, std::less<>> stage_ms;  // per stage, per repetition
  std::vector<double> outside_ms;
};

struct Row {
  std::string name;
  Backend backend;
  std::function<void(int64_t)> launch;  // one call on input set `set`
  double bytes = 0, flops = 0;          // the layer's declared totals
  std::vector<StageCost> stages;
  Measured measured;
};

void time_layer(benchmark::State& state, const Options& o, const Ceilings& ceil, Row& row) {
  EventStageClock clock(*backend_info(row.backend).timing);
  std::map<std::string, double, std::less<>> ms;
  double seconds = 0;
  int64_t iterations = 0;
  set_stage_clock(&clock);
  const bool ok = mb::time_rotating(
      state, row.backend, o.sets,
      [&](int64_t set) {
        clock.drop();  // what the warm-up call recorded
        row.launch(set);
      },
      [&](int64_t) { clock.settle(ms); }, &seconds, &iterations);
  set_stage_clock(nullptr);
  if (!ok) {
    ++g_failures;
    return;
  }
  if (seconds <= 0 || iterations == 0) return;
  const double per_call = seconds / double(iterations);
  const double B = double(o.batch);
  state.counters["us_per_token"] = per_call / B * 1e6;
  state.counters["tokens_per_s"] = B / per_call;
  mb::set_bandwidth_counters(state, row.bytes * double(iterations), seconds, ceil.gbs(),
                             o.peak_gbs);
  const double tflops = row.flops / per_call / 1e12;
  state.counters["TFLOP/s"] = tflops;
  if (ceil.gflops() > 0) state.counters["pct_compute"] = 100 * tflops * 1e3 / ceil.gflops();
  state.counters["pct_peak_tflops"] = 100 * tflops / o.peak_tflops;
  const auto [floor_s, compute_bound] = ceil.floor(row.bytes, row.flops);
  state.counters["floor_ms"] = floor_s * 1e3;
  state.counters["pct_floor"] = 100 * floor_s / per_call;
  double stage_floor_s = 0;
  for (const StageCost& s : row.stages) stage_floor_s += ceil.floor(s.bytes, s.flops).first;
  state.counters["stage_floor_ms"] = stage_floor_s * 1e3;
  state.SetLabel(compute_bound ? "floor: compute" : "floor: memory");

  Measured& m = row.measured;
  m.call_ms.push_back(per_call * 1e3);
  double inside = 0;
  for (const StageCost& s : row.stages) {
    auto it = ms.find(s.name);
    const double stage = it == ms.end() ? 0 : it->second / double(iterations);
    m.stage_ms[s.name].push_back(stage);
    inside += stage;
  }
  m.outside_ms.push_back(per_call * 1e3 - inside);
}

// A stage row: its milliseconds per call (median over the layer row's repetitions) as manual
// time, judged against the stage's own floor.
void report_stage(benchmark::State& state, const Ceilings& ceil, const Row& row,
                  const StageCost* stage) {
  const Measured& m = row.measured;
  if (m.call_ms.empty()) {
    for (auto _ : state) state.SetIterationTime(0);
    state.SkipWithError(("its layer row " + row.name + " did not run").c_str());
    return;
  }
  const double ms = stage ? mb::median(m.stage_ms.at(stage->name)) : mb::median(m.outside_ms);
  for (auto _ : state) state.SetIterationTime(std::max(ms, 0.0) / 1e3);
  state.counters["pct_time"] = 100 * ms / mb::median(m.call_ms);
  if (!stage) return;
  const double s = ms / 1e3;
  state.counters["bytes"] = stage->bytes;
  state.counters["flops"] = stage->flops;
  if (s <= 0) return;
  state.counters["GB/s"] = stage->bytes / s / 1e9;
  if (stage->flops > 0) state.counters["GFLOP/s"] = stage->flops / s / 1e9;
  const auto [floor_s, compute_bound] = ceil.floor(stage->bytes, stage->flops);
  state.counters["floor_ms"] = floor_s * 1e3;
  state.counters["pct_floor"] = 100 * floor_s / s;
  state.SetLabel(compute_bound ? "floor: compute" : "floor: memory");
}

void register_row(const Options& o, const Ceilings& ceil, std::unique_ptr<Row>& owned) {
  Row* row = owned.get();
  mb::register_timed_row(row->name, int(o.reps), [&o, &ceil, row](benchmark::State& state) {
    time_layer(state, o, ceil, *row);
  });
  for (std::size_t i = 0; i <= row->stages.size(); ++i) {
    const StageCost* stage = i < row->stages.size() ? &row->stages[i] : nullptr;
    const std::string name = row->name + "/stage:" + (stage ? stage->name : "outside");
    benchmark::RegisterBenchmark(
        name.c_str(),
        [&ceil, row, stage](benchmark::State& state) { report_stage(state, ceil, *row, stage); })
        ->UseManualTime()
        ->Unit(benchmark::kMillisecond)
        ->Iterations(1);
  }
  ++g_rows_registered;
}

// The rows of backend `b`: a forward row per forward variant, a forward + backward row per
// variant registered in both directions.
void register_rows(const Options& o, const Config& c, Backend b, const Workspace& w,
                   const Ceilings& ceil, std::vector<std::unique_ptr<Row>>& rows) {
  const std::string shape = shape_name(o, c);
  const int64_t B = o.batch;
  std::vector<FwdParams> fwd_plain, fwd_keep;
  std::vector<BwdParams> bwd;
  for (int64_t set = 0; set < o.sets; ++set) {
    fwd_plain.push_back(w.fwd(c, B, set, false));
    if (o.fwd_bwd()) {
      fwd_keep.push_back(w.fwd(c, B, set, true));
      bwd.push_back(w.bwd(c, B, set));
    }
  }
  const double fwd_bytes = Fwd::bytes_moved(fwd_plain[0]), fwd_flops = Fwd::flops(fwd_plain[0]);
  std::vector<StageCost> fwd_stages = stage_costs(c, B, false);
  mb::for_each_variant<Fwd>(b, o.variant, [&](const Variant<FwdParams>* v) {
    const std::string base = mb::row_name<Fwd>(b, *v, shape);
    if (o.fwd()) {
      if (std::string why = mb::why_not<Fwd>(*v, fwd_plain[0]); !why.empty()) {
        mb::register_skip(base, why);
      } else {
        auto row = std::make_unique<Row>();
        row->name = base, row->backend = b, row->stages = fwd_stages;
        row->bytes = fwd_bytes, row->flops = fwd_flops;
        row->launch = [v, params = fwd_plain](int64_t set) {
          NvtxRange r(std::string(Fwd::name) + "/" + v->name);
          v->launch(params[set], nullptr);
        };
        register_row(o, ceil, row);
        rows.push_back(std::move(row));
      }
    }
    if (!o.fwd_bwd()) return;
    const std::string name =
        fmt::format("memory_layer_fwd_bwd/{}/{}/{}", to_string(b), v->name, shape);
    const Variant<BwdParams>* back = nullptr;
    for (const auto* candidate : Registry<Bwd>::of(b))
      if (candidate->name == v->name) back = candidate;
    std::string why = back ? mb::why_not<Fwd>(*v, fwd_keep[0]) : "no backward of this name";
    if (why.empty()) why = mb::why_not<Bwd>(*back, bwd[0]);
    if (!why.empty()) {
      mb::register_skip(name, why);
      return;
    }
    auto row = std::make_unique<Row>();
    row->name = name, row->backend = b, row->stages = fwd_stages;
    for (StageCost& s : stage_costs(c, B, true)) row->stages.push_back(std::move(s));
    row->bytes = fwd_bytes + Bwd::bytes_moved(bwd[0]);
    row->flops = fwd_flops + Bwd::flops(bwd[0]);
    row->launch = [v, back, fp = fwd_keep, bp = bwd](int64_t set) {
      {
        NvtxRange r(std::string(Fwd::name) + "/" + v->name);
        v->launch(fp[set], nullptr);
      }
      NvtxRange r(std::string(Bwd::name) + "/" + back->name);
      back->launch(bp[set], nullptr);
    };
    register_row(o, ceil, row);
    rows.push_back(std::move(row));
  });
}

// ---- flags and main ----

int run(int argc, char** argv) {
  Options o;
  mb::Flags flags("bench_memory_layer",
                  "the memory layer (projection, product-key search, softmax, bag, gating), "
                  "forward and forward + backward, every registered composition, with the time "
                  "of each stage against its own floor");
  flags.add_choice("shape", &o.shape, {"paper", "small"},
                   "preset: paper = B 4096, d 1024, h 4, n_keys 1024 (N = 1M values, 4 GiB\n"
                   "fp32), n 512, k 32; small = B 512, d 512, h 4, n_keys 256, n 128, k 16.\n"
                   "Size flags given beside it win");
  flags.add_int("batch", &o.batch, "tokens B", 1);
  flags.add_int("d-model", &o.d_model, "model width d", 1);
  flags.add_int("heads", &o.heads, "heads h", 1);
  flags.add_int("n-keys", &o.n_keys, "sub-keys per half (N = n_keys^2 values)", 1);
  flags.add_int("k-dim", &o.k_dim, "query width n (even: two halves of n/2)", 2);
  flags.add_int("k", &o.k, "top-k per head (a token's bag holds h*k rows)", 1);
  flags.add_int("value-dim", &o.value_dim,
                "value width v; 0 = d_model (memory and peer need v = d)", 0);
  flags.add_choice("kind", &o.kind, {"memory", "memory_plus", "peer"},
                   "plain memory, Memory+ (SiLU-gated value read, W1 and W2), or PEER");
  flags.add_switch("qk-norm", &o.qk_norm,
                   "RMS-normalise each query half and each sub-key before the dot products");
  flags.add_switch("gate", &o.gate, "the scalar output gate sigmoid(x*wg)");
  flags.add_choice("dtype", &o.dtype, {"fp32", "bf16"},
                   "element type of the value table (and PEER's down experts); the rest is fp32");
  flags.add_choice("direction", &o.direction, {"fwd", "fwd_bwd", "all"},
                   "fwd = an inference forward, fwd_bwd = a training step's forward and\n"
                   "backward, all = both rows");
  mb::add_backend_flags(flags, &o.backend, &o.variant, "composition");
  const mb::RunFlags run{&o.peak_gbs,
                         &o.peak_tflops,
                         &o.ceiling_bytes,
                         &o.seed,
                         &o.reps,
                         &o.sets,
                         "the parameters and the input sets",
                         "x, dout"};
  mb::add_run_flags(flags, run);
  flags.set_epilog(kFormulas);
  if (!flags.parse(&argc, argv)) return 0;
  for (const Preset& p : kPresets) {
    if (o.shape != p.name) continue;
    const std::pair<const char*, std::pair<int64_t*, int64_t>> sizes[] = {
        {"batch", {&o.batch, p.batch}}, {"d-model", {&o.d_model, p.d_model}},
        {"heads", {&o.heads, p.heads}}, {"n-keys", {&o.n_keys, p.n_keys}},
        {"k-dim", {&o.k_dim, p.k_dim}}, {"k", {&o.k, p.k}}};
    for (const auto& [flag, target] : sizes)
      if (!flags.given(flag)) *target.first = target.second;
  }
  const Config c = o.config();
  if (std::string why = validate(c); !why.empty()) fail("{}", why);
  const mb::Runnable runnable = mb::runnable_backends(mb::parse_backends(o.backend));

  if (!o.variant.empty()) {
    bool found = false;
    std::vector<std::string> known;
    for (Backend b : runnable.backends) {
      found |= mb::list_variants<Fwd>(b, o.variant, " (fwd)", &known);
      found |= mb::list_variants<Bwd>(b, o.variant, " (bwd)", &known) && o.fwd_bwd();
    }
    MEMLAYERS_CHECK(found,
                    "--variant {}: not registered on the backends run ({}); registered there: {}",
                    o.variant, o.backend, mb::join_or_none(known));
  }
  bool any = false;
  for (Backend b : runnable.backends) any |= !mb::selected_variants<Fwd>(b, o.variant).empty();
  if (!any) {
    for (Backend b : runnable.backends)
      fmt::print("note: {} has no variant registered on backend {}\n", Fwd::name, to_string(b));
    fail(
        "nothing to time: no memory-layer composition is registered on backends {} here "
        "(--backend cpu,reference adds the reference)",
        o.backend);
  }

  const int64_t host_llc = mb::host_last_level_cache_bytes();
  const int64_t l2 = runnable.has_cuda ? mb::gpu_l2_bytes() : 0;
  const std::string ceiling_why = mb::finish_run_flags(flags, run, std::max(host_llc, l2));
  const int threads = mb::host_threads();
  const std::string shape = shape_name(o, c);
  const double table_bytes = double(c.num_values()) * double(c.value_width()) *
                             double(dtype_size(c.values_dtype)) * (c.kind == Kind::peer ? 2 : 1);

  fmt::print("bench_memory_layer configuration\n");
  fmt::print(
      "  kind {}, batch {}, d_model {}, heads {}, n_keys {} (N = {}), k_dim {}, k {}, "
      "value_dim {}, values {}{}{}\n",
      o.kind, o.batch, c.d_model, c.heads, c.n_keys, c.num_values(), c.k_dim, c.k, c.value_width(),
      o.dtype, c.qk_norm ? ", qk-norm" : "", c.scalar_gate ? ", scalar gate" : "");
  fmt::print("  value table {}; direction {}, input sets {}, repetitions {}, seed {}\n",
             mb::human_bytes(table_bytes), o.direction, o.sets, o.reps, o.seed);
  mb::print_machine(host_llc, l2, threads);
  // The projection's GEMM, C (B × h·n) from X (B × d) and Wq: the compute ceilings' shape.
  const int64_t gm = o.batch, gn = c.heads * c.k_dim, gk = c.d_model;
  fmt::print(
      "  bandwidth ceiling over {} ({}); compute ceiling sgemm_{}x{}x{}; nominal peaks {} GB/s, {} "
      "TFLOP/s\n",
      mb::human_bytes(double(o.ceiling_bytes)), ceiling_why, gm, gn, gk, o.peak_gbs, o.peak_tflops);
  for (bool backward : {false, true}) {
    if (backward && !o.fwd_bwd()) continue;
    std::string line;
    for (const StageCost& s : stage_costs(c, o.batch, backward))
      line += fmt::format("{}{} {} {:.3f} GFLOP", line.empty() ? "" : "; ", s.name,
                          mb::human_bytes(s.bytes), s.flops / 1e9);
    fmt::print("  {} stages: {}\n", backward ? "backward" : "forward", line);
  }
  mb::add_context({{"memory_layer_kind", o.kind},
                   {"memory_layer_batch", std::to_string(o.batch)},
                   {"memory_layer_d_model", std::to_string(c.d_model)},
                   {"memory_layer_heads", std::to_string(c.heads)},
                   {"memory_layer_n_keys", std::to_string(c.n_keys)},
                   {"memory_layer_k_dim", std::to_string(c.k_dim)},
                   {"memory_layer_k", std::to_string(c.k)},
                   {"memory_layer_value_dim", std::to_string(c.value_width())},
                   {"memory_layer_dtype", o.dtype},
                   {"memory_layer_qk_norm", c.qk_norm ? "true" : "false"},
                   {"memory_layer_gate", c.scalar_gate ? "true" : "false"},
                   {"peak_tflops", fmt::format("{}", o.peak_tflops)}});
  mb::add_machine_context(host_llc, l2, threads, o.peak_gbs);

  // ---- workspaces and ceilings: all must outlive RunSpecifiedBenchmarks ----
  // simt's kernels, like a GPU's, take device memory: a workspace of their own.
  std::unique_ptr<Workspace> host_space, cuda_space, simt_space;
  if (runnable.any_host) host_space = std::make_unique<Workspace>(Backend::cpu, o, c);
  if (runnable.has_cuda) cuda_space = std::make_unique<Workspace>(Backend::cuda, o, c);
  if (std::ranges::count(runnable.backends, Backend::simt))
    simt_space = std::make_unique<Workspace>(Backend::simt, o, c);

  std::vector<std::unique_ptr<mb::Ceiling>> ceilings;
  std::unique_ptr<void, void (*)(void*)> stream_buf(nullptr, host_memory().release);
  Ceilings host_ceil, cuda_ceil;
  if (runnable.any_host) {
    stream_buf.reset(host_memory().alloc(std::size_t(o.ceiling_bytes)));
    mb::fill_uniform(stream_buf.get(), o.ceiling_bytes / 4, DType::f32, 11);
    ceilings.push_back(mb::host_gemm_ceiling(gm, gn, gk));
    host_ceil.compute = ceilings.back().get();
    ceilings.push_back(mb::host_stream_ceiling(stream_buf.get(), double(o.ceiling_bytes), threads));
    host_ceil.bandwidth = ceilings.back().get();
  }
  Buffer copy_src, copy_dst;
  if (runnable.has_cuda) {
    if (mb::have_cuda_gemm_ceiling()) {
      ceilings.push_back(mb::cuda_gemm_ceiling(gm, gn, gk, DType::f32));
      cuda_ceil.compute = ceilings.back().get();
    }
    const std::size_t half = std::size_t(o.ceiling_bytes) / 2 / 256 * 256;
    const Memory& mem = *backend_info(Backend::cuda).memory;
    copy_src = Buffer(mem, half);
    copy_dst = Buffer(mem, half);
    mem.fill_bytes(copy_src.get(), 0x3c, half);
    ceilings.push_back(mb::cuda_copy_ceiling(copy_src.get(), copy_dst.get(), half));
    cuda_ceil.bandwidth = ceilings.back().get();
  }
  for (auto& ceiling : ceilings) ceiling->register_row(int(o.reps));

  std::vector<std::unique_ptr<Row>> rows;
  for (Backend b : runnable.backends) {
    const bool cuda = b == Backend::cuda;
    Workspace& w = cuda ? *cuda_space : b == Backend::simt ? *simt_space : *host_space;
    register_rows(o, c, b, w, cuda ? cuda_ceil : host_ceil, rows);
  }
  MEMLAYERS_CHECK(g_rows_registered > 0,
                  "nothing to time: no composition runs shape {} on backends {} here (see the "
                  "skip lines above)",
                  shape, o.backend);
  return mb::run_registered(&argc, argv, "bench_memory_layer", g_failures);
}

}  // namespace

int main(int argc, char** argv) { return mb::main_guarded("bench_memory_layer", argc, argv, run); }
