// bench_sharded_embbag: the EmbeddingBag sharded along the embedding dimension
// (dist/sharded_embbag.h), forward and backward, on P CPU ranks of one machine.
//
// Build: cmake -S . -B build -G Ninja && cmake --build build --target bench_sharded_embbag
// Run:   mpirun -np 4 build/bench/sharded_embbag/bench_sharded_embbag --dim 1024 --k 32
//        (as root in a container: OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1, and
//        --oversubscribe when P exceeds the cores; alone, without mpirun, it runs one rank)
//        ... --json sharded.json     (the record: every rank's medians and the machine)
//        ... --help                  (every flag and its default)
//
// Not Google Benchmark: its loop decides the iteration count on each process by itself, and here
// every iteration is a collective that all ranks must enter together. Instead each rank runs the
// same fixed --reps, one barrier before each (outside the timed region), and the table reports, per
// direction, the max over ranks of each rank's median — the step takes as long as its slowest rank.
//
// What each column means:
//   time        one call on the host clock (the cpu backend returns when its work is done);
//   ktok/s      the group's tokens (P·batch) over that time;
//   comm        the part spent inside the collectives, timed around each call by a counting
//               wrapper of the communicator (it includes waiting for slower ranks);
//   bag GB/s    the local bag work (time − comm) against embbag's declared bytes of the shard's
//               problem (Fwd::bytes_moved, Bwd::bytes_moved with U counted from the indices) —
//               per rank, the slowest rank; and summed over the group, against the streaming-read
//               ceiling that all ranks measure at once in the same run (bench/common);
//   comm B/token the declaration (comm_bytes_per_token) and the bytes the wrapper saw handed to
//               the data collectives for other ranks, summed over ranks, over the group's tokens;
//               the run fails when they differ. The control header (ShardedEmbBag::kHeaderValues
//               fp64 per rank per call) is counted apart.
// Every rank owns --batch tokens, so the declared averages are exact.
//
// Default shapes: dim 1024 and k 32 (the op's reference shape, DESIGN.md §5), 512 tokens per
// rank, a table of 512k rows — 2 GiB of fp32 in all, 8x the largest last-level cache this VM
// reports (sysconf 256 MiB; sysfs 32 MiB), so the gathered rows come from memory at every P,
// and with 4 ranks 512 MiB each plus ~70 MiB of buffers per rank: well inside 24 GiB.
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "bench/common/bench_common.h"
#include "common/error.h"
#include "dist/comm.h"
#include "dist/sharded_embbag.h"
#include "embbag/embbag.h"

namespace {

using namespace memlayers;
using namespace memlayers::dist;
namespace mb = memlayers::bench;
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// ---- a communicator that times and counts what passes through it ----

class CountingComm final : public Comm {
 public:
  struct Tally {
    double seconds = 0;                  // inside every collective, the header included
    std::map<std::string, double> sent;  // bytes handed over for other ranks, per collective
    double control = 0;                  // the header's bytes (all_reduce_sum_host)
  };
  explicit CountingComm(Comm& inner) : c_(inner) {}
  Tally tally;

  int rank() const override { return c_.rank(); }
  int size() const override { return c_.size(); }
  std::string name() const override { return c_.name(); }
  void all_gather(const void* send, void* recv, const std::vector<int64_t>& bytes) override {
    const auto t0 = Clock::now();
    c_.all_gather(send, recv, bytes);
    tally.seconds += seconds_since(t0);
    tally.sent["all_gather"] += static_cast<double>(bytes.at(rank())) * (size() - 1);
  }
  void all_to_all(const void* send, const std::vector<int64_t>& send_bytes, void* recv,
                  const std::vector<int64_t>& recv_bytes) override {
    const auto t0 = Clock::now();
    c_.all_to_all(send, send_bytes, recv, recv_bytes);
    tally.seconds += seconds_since(t0);
    tally.sent["all_to_all"] += others(send_bytes, 1);
  }
  void reduce_scatter_sum(const float* send, float* recv,
                          const std::vector<int64_t>& counts) override {
    const auto t0 = Clock::now();
    c_.reduce_scatter_sum(send, recv, counts);
    tally.seconds += seconds_since(t0);
    tally.sent["reduce_scatter"] += others(counts, 4);
  }
  void all_reduce_sum(float* data, int64_t count) override {
    const auto t0 = Clock::now();
    c_.all_reduce_sum(data, count);
    tally.seconds += seconds_since(t0);
    tally.sent["all_reduce"] += static_cast<double>(count) * 4;
  }
  void all_reduce_sum_host(double* data, int64_t count) override {
    const auto t0 = Clock::now();
    c_.all_reduce_sum_host(data, count);
    tally.seconds += seconds_since(t0);
    tally.control += static_cast<double>(count) * 8;
  }
  void barrier() override { c_.barrier(); }
  [[noreturn]] void abort_group(const std::string& why, int code) override {
    c_.abort_group(why, code);
    std::_Exit(code);  // not reached: the wrapped communicator ends the process
  }

 private:
  double others(const std::vector<int64_t>& n, double scale) const {
    double s = 0;
    for (int r = 0; r < size(); ++r)
      if (r != rank()) s += static_cast<double>(n.at(r)) * scale;
    return s;
  }
  Comm& c_;
};

// ---- configuration ----

struct Config {
  int64_t dim = 1024, k = 32, batch = 512, rows = 524288, reps = 10, sets = 2, seed = 1;
  std::string dtype = "fp32", index = "int64", direction = "both", backend = "cpu", json;
};

// Each rank's tokens: `sets` rotating index sets, weights, dy — from (seed, rank, set), so any
// rank can rebuild any other's indices (the backward's U counts the whole group's rows).
std::vector<int64_t> indices_of(const Config& c, int rank, int64_t set) {
  std::mt19937_64 rng(static_cast<uint64_t>(c.seed) * 1000003 + 7919 * rank + set);
  std::uniform_int_distribution<int64_t> row(0, c.rows - 1);
  std::vector<int64_t> idx(static_cast<std::size_t>(c.batch * c.k));
  for (auto& i : idx) i = row(rng);
  return idx;
}

struct Row {  // one direction, this rank
  std::vector<double> total, comm;
  double bag_bytes = 0, sent_bytes = 0, control_bytes = 0;
  std::map<std::string, double> sent;
};

double max_over_ranks(Comm& comm, double mine) {
  std::vector<double> all(static_cast<std::size_t>(comm.size()), 0.0);
  all[comm.rank()] = mine;
  comm.all_reduce_sum_host(all.data(), comm.size());
  return *std::max_element(all.begin(), all.end());
}
double min_over_ranks(Comm& comm, double mine) { return -max_over_ranks(comm, -mine); }
double sum_over_ranks(Comm& comm, double mine) {
  comm.all_reduce_sum_host(&mine, 1);
  return mine;
}

int run(const Config& c, Comm& world) {
  const int P = world.size(), me = world.rank();
  const Backend backend = *parse_backend(c.backend);
  const DType vdt = *parse_dtype(c.dtype), idt = *parse_dtype(c.index);
  const Memory& mem = *backend_info(backend).memory;
  const ColumnSplit cs{c.dim, P};
  const int64_t width = cs.width(me);
  const std::size_t sv = dtype_size(vdt), si = dtype_size(idt);
  const int64_t B = c.batch, total = c.batch * P;

  // ---- buffers: the shard, the tokens, the outputs ----
  mb::Buffer shard(mem, static_cast<std::size_t>(c.rows * std::max<int64_t>(width, 1)) * sv);
  mb::fill_uniform(shard.get(), c.rows * width, vdt, static_cast<uint64_t>(c.seed) + 101 * me);
  std::vector<mb::Buffer> idx, w;
  std::vector<int64_t> group_rows;  // every rank's indices of set 0 (U of the backward)
  for (int64_t s = 0; s < c.sets; ++s) {
    const auto mine = indices_of(c, me, s);
    std::vector<unsigned char> bytes(mine.size() * si);
    for (std::size_t i = 0; i < mine.size(); ++i) {
      if (idt == DType::i64)
        std::memcpy(bytes.data() + i * 8, &mine[i], 8);
      else
        reinterpret_cast<int32_t*>(bytes.data())[i] = static_cast<int32_t>(mine[i]);
    }
    idx.push_back(mb::Buffer::upload(mem, bytes.data(), bytes.size()));
    w.emplace_back(mem, static_cast<std::size_t>(B * c.k) * 4);
    mb::fill_uniform(w.back().get(), B * c.k, DType::f32, 7 + 31 * s + 1000 * me);
  }
  std::vector<double> unique_per_set;
  for (int64_t s = 0; s < c.sets; ++s) {
    std::vector<int64_t> all;
    for (int r = 0; r < P; ++r) {
      const auto ir = indices_of(c, r, s);
      all.insert(all.end(), ir.begin(), ir.end());
    }
    std::sort(all.begin(), all.end());
    unique_per_set.push_back(
        static_cast<double>(std::unique(all.begin(), all.end()) - all.begin()));
  }
  mb::Buffer out(mem, static_cast<std::size_t>(B * c.dim) * 4);
  mb::Buffer dy(mem, static_cast<std::size_t>(B * c.dim) * 4);
  mb::fill_uniform(dy.get(), B * c.dim, DType::f32, 99 + me);
  mb::Buffer dw(mem, static_cast<std::size_t>(B * c.k) * 4);
  const int64_t cap = total * c.k;
  mb::Buffer ids(mem, static_cast<std::size_t>(cap) * 8), nu(mem, 8);
  mb::Buffer dvc(mem, static_cast<std::size_t>(cap * std::max<int64_t>(width, 1)) * 4);

  auto fwd_params = [&](int64_t s) {
    embbag::FwdParams p;
    p.values = shard.get(), p.indices = idx[s].get(), p.weights = w[s].as<float>();
    p.out = out.get(), p.batch = B, p.k = c.k, p.dim = c.dim, p.num_rows = c.rows;
    p.values_stride = std::max<int64_t>(width, 1), p.values_dtype = vdt, p.index_dtype = idt;
    return p;
  };
  auto bwd_params = [&](int64_t s) {
    embbag::BwdParams p;
    p.values = shard.get(), p.indices = idx[s].get(), p.weights = w[s].as<float>();
    p.grad_out = dy.as<float>(), p.batch = B, p.k = c.k, p.dim = c.dim, p.num_rows = c.rows;
    p.values_stride = std::max<int64_t>(width, 1), p.values_dtype = vdt, p.index_dtype = idt;
    p.grad_weights = dw.as<float>(), p.unique_rows = ids.as<int64_t>();
    p.grad_values_compact = dvc.as<float>(), p.num_unique = nu.as<int64_t>();
    return p;
  };
  // The local problem's declared bytes: the shard's columns of all the group's bags.
  auto local_fwd = [&](int64_t s) {
    auto p = fwd_params(s);
    p.batch = total, p.dim = std::max<int64_t>(width, 1);
    return width > 0 ? embbag::Fwd::bytes_moved(p) : 0.0;
  };
  auto local_bwd = [&](int64_t s) {
    auto p = bwd_params(s);
    p.batch = total, p.dim = std::max<int64_t>(width, 1);
    return width > 0 ? embbag::Bwd::bytes_moved(p, unique_per_set[s]) : 0.0;
  };

  // ---- the ceiling: a streaming read of each rank's shard, all ranks at once ----
  const auto shard_bytes = static_cast<std::size_t>(c.rows * width) * sv;
  std::vector<double> ceiling_s;
  for (int i = 0; i < 3; ++i) {
    world.barrier();
    ceiling_s.push_back(
        shard_bytes ? mb::host_stream_read_seconds(shard.get(), shard_bytes, mb::host_threads())
                    : 0.0);
  }
  const double my_gbs =
      shard_bytes ? static_cast<double>(shard_bytes) / mb::median(ceiling_s) / 1e9 : 0.0;
  const double ceiling_gbs = sum_over_ranks(world, my_gbs);

  // ---- timing ----
  CountingComm comm(world);
  ShardedEmbBag op(comm, backend);
  const bool do_fwd = c.direction != "bwd", do_bwd = c.direction != "fwd";
  Row rows[2];
  for (int dir = 0; dir < 2; ++dir) {
    if ((dir == 0 && !do_fwd) || (dir == 1 && !do_bwd)) continue;
    Row& r = rows[dir];
    // One untimed call per set warms the pages and the workspace.
    for (int64_t s = 0; s < c.sets; ++s) {
      if (dir == 0) op.forward(fwd_params(s));
      if (dir == 1) op.backward(bwd_params(s));
    }
    for (int64_t rep = 0; rep < c.reps; ++rep) {
      const int64_t s = rep % c.sets;
      world.barrier();
      comm.tally = {};
      const auto t0 = Clock::now();
      if (dir == 0)
        op.forward(fwd_params(s));
      else
        op.backward(bwd_params(s));
      r.total.push_back(seconds_since(t0));
      r.comm.push_back(comm.tally.seconds);
      r.bag_bytes = dir == 0 ? local_fwd(s) : local_bwd(s);
      r.sent = comm.tally.sent;
      r.sent_bytes = 0;
      for (const auto& [name, b] : r.sent) r.sent_bytes += b;
      r.control_bytes = comm.tally.control;
    }
  }

  // ---- the table (rank 0) ----
  const CommBytes declared = comm_bytes_per_token(c.dim, c.k, idt, P);
  nlohmann::json record;
  record["config"] = {{"ranks", P},
                      {"dim", c.dim},
                      {"k", c.k},
                      {"batch_per_rank", B},
                      {"rows", c.rows},
                      {"dtype", c.dtype},
                      {"index", c.index},
                      {"backend", c.backend},
                      {"reps", c.reps},
                      {"sets", c.sets},
                      {"threads_per_rank", mb::host_threads()},
                      {"variants", op.variants()}};
  record["machine"] = {{"load_average_1m", mb::host_load_average()},
                       {"host_llc_bytes", mb::host_last_level_cache_bytes()},
                       {"read_ceiling_gbs_all_ranks", ceiling_gbs}};
  if (me == 0) {
    fmt::print(
        "bench_sharded_embbag: P {} ranks ({} comm), dim {}, k {}, batch {} per rank ({} "
        "in all), table {} rows x {} {} ({} in all, {} per rank at most), indices {}\n",
        P, world.name(), c.dim, c.k, B, total, c.rows, c.dim, c.dtype,
        mb::human_bytes(static_cast<double>(c.rows * c.dim * sv)),
        mb::human_bytes(static_cast<double>(c.rows * cs.width(0) * sv)), c.index);
    fmt::print(
        "  backend {}, {} thread(s) per rank, {} reps over {} index sets; load average "
        "{}; streaming read, all ranks at once: {:.1f} GB/s\n",
        c.backend, mb::host_threads(), c.reps, c.sets, mb::host_load_average(), ceiling_gbs);
    fmt::print("  variants (rank 0): {}\n", op.variants());
    fmt::print("{:>2} {:>4} {:>10} {:>10} {:>6} {:>9} {:>12} {:>12} {:>7} {:>14} {:>14}\n", "P",
               "dir", "time ms", "comm ms", "comm%", "ktok/s", "bag GB/s/rk", "bag GB/s all",
               "%ceil", "B/token decl", "B/token seen");
  }
  bool mismatch = false;
  for (int dir = 0; dir < 2; ++dir) {
    if ((dir == 0 && !do_fwd) || (dir == 1 && !do_bwd)) continue;
    const Row& r = rows[dir];
    const double t = mb::median(r.total), cm = mb::median(r.comm);
    std::vector<double> local;
    for (std::size_t i = 0; i < r.total.size(); ++i) local.push_back(r.total[i] - r.comm[i]);
    const double loc = mb::median(local);
    const double t_max = max_over_ranks(world, t), comm_max = max_over_ranks(world, cm);
    const double gbs_rank = min_over_ranks(world, loc > 0 ? r.bag_bytes / loc / 1e9 : 0.0);
    const double bytes_all = sum_over_ranks(world, r.bag_bytes);
    const double loc_max = max_over_ranks(world, loc);
    const double gbs_all = loc_max > 0 ? bytes_all / loc_max / 1e9 : 0.0;
    const double seen = sum_over_ranks(world, r.sent_bytes) / static_cast<double>(total);
    const double decl = dir == 0 ? declared.fwd() : declared.bwd();
    std::map<std::string, double> seen_by;
    for (const char* name : {"all_gather", "all_to_all", "reduce_scatter", "all_reduce"}) {
      const auto it = r.sent.find(name);
      seen_by[name] =
          sum_over_ranks(world, it == r.sent.end() ? 0.0 : it->second) / static_cast<double>(total);
    }
    const double control = sum_over_ranks(world, r.control_bytes);
    const bool agree =
        std::abs(seen - decl) <= 1e-9 * std::max(1.0, decl) && seen_by["all_reduce"] == 0.0;
    mismatch = mismatch || !agree;
    const char* name = dir == 0 ? "fwd" : "bwd";
    if (me == 0) {
      fmt::print(
          "{:>2} {:>4} {:>10.3f} {:>10.3f} {:>5.1f}% {:>9.1f} {:>12.2f} {:>12.2f} {:>6.1f}% "
          "{:>14.1f} {:>14.1f}{}\n",
          P, name, t_max * 1e3, comm_max * 1e3, t_max > 0 ? 100 * comm_max / t_max : 0.0,
          t_max > 0 ? static_cast<double>(total) / t_max / 1e3 : 0.0, gbs_rank, gbs_all,
          ceiling_gbs > 0 ? 100 * gbs_all / ceiling_gbs : 0.0, decl, seen,
          agree ? "" : "  MISMATCH");
      if (dir == 0)
        fmt::print(
            "       declared: all-gather {:.1f} + all-to-all {:.1f}; seen {:.1f} + {:.1f}"
            "; control header {:.0f} bytes per call over the group\n",
            declared.fwd_all_gather, declared.fwd_all_to_all, seen_by["all_gather"],
            seen_by["all_to_all"], control);
      else
        fmt::print(
            "       declared: all-gather {:.1f} + all-to-all {:.1f} + reduce-scatter "
            "{:.1f}; seen {:.1f} + {:.1f} + {:.1f}; control header {:.0f} bytes per call "
            "over the group\n",
            declared.bwd_all_gather, declared.bwd_all_to_all, declared.bwd_reduce_scatter,
            seen_by["all_gather"], seen_by["all_to_all"], seen_by["reduce_scatter"], control);
    }
    record[name] = {{"time_ms_max_over_ranks", t_max * 1e3},
                    {"comm_ms_max_over_ranks", comm_max * 1e3},
                    {"group_tokens_per_s", t_max > 0 ? static_cast<double>(total) / t_max : 0.0},
                    {"bag_bytes_group", bytes_all},
                    {"bag_gbs_slowest_rank", gbs_rank},
                    {"bag_gbs_group", gbs_all},
                    {"comm_bytes_per_token_declared", decl},
                    {"comm_bytes_per_token_seen", seen},
                    {"control_bytes_per_call_group", control},
                    {"this_rank_median_ms", t * 1e3},
                    {"this_rank_comm_median_ms", cm * 1e3}};
    record[name]["declared_by_collective"] =
        dir == 0 ? nlohmann::json{{"all_gather", declared.fwd_all_gather},
                                  {"all_to_all", declared.fwd_all_to_all}}
                 : nlohmann::json{{"all_gather", declared.bwd_all_gather},
                                  {"all_to_all", declared.bwd_all_to_all},
                                  {"reduce_scatter", declared.bwd_reduce_scatter}};
    record[name]["seen_by_collective"] = seen_by;
  }
  if (me == 0 && !c.json.empty()) {
    std::ofstream f(c.json);
    if (!f) fail("--json {}: cannot open it for writing", c.json);
    f << record.dump(2) << "\n";
  }
  if (mismatch) {
    if (me == 0)
      fmt::print(stderr,
                 "bench_sharded_embbag: the bytes handed to the collectives differ from "
                 "comm_bytes_per_token's declaration\n");
    return 1;
  }
  return 0;
}

bool is_rank0_by_env() {
  for (const char* v : {"OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK"})
    if (const char* s = std::getenv(v)) return std::string(s) == "0";
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  Config c;
  CLI::App app{
      "bench_sharded_embbag: the EmbeddingBag sharded along the embedding dimension, forward and "
      "backward (dw + compact dV), timed on every rank of `mpirun -np P` (one rank when started "
      "alone). Prints rank 0's table: the max over ranks of each rank's median time, the part in "
      "the collectives, the local bag work's GB/s and the communication bytes per token, declared "
      "and counted."};
  app.add_option("--dim", c.dim, "embedding dim (full; split over the ranks)")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, embbag::kMaxDim));
  app.add_option("--k", c.k, "bag size")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, embbag::kMaxK));
  app.add_option("--batch", c.batch, "bags (tokens) per rank")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 24));
  app.add_option("--rows", c.rows, "rows of the full table")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 40));
  app.add_option("--dtype", c.dtype, "values dtype")
      ->capture_default_str()
      ->check(CLI::IsMember({"fp32", "bf16"}));
  app.add_option("--index", c.index, "index dtype")
      ->capture_default_str()
      ->check(CLI::IsMember({"int32", "int64"}));
  app.add_option("--direction", c.direction, "what to time")
      ->capture_default_str()
      ->check(CLI::IsMember({"fwd", "bwd", "both"}));
  app.add_option("--backend", c.backend, "backend of the local bag work (host memory)")
      ->capture_default_str()
      ->check(CLI::IsMember({"cpu", "simt", "reference"}));
  app.add_option("--reps", c.reps, "timed calls per direction (the median is reported)")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{100000}));
  app.add_option("--sets", c.sets, "rotating index sets")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{64}));
  app.add_option("--seed", c.seed, "seed of the table, indices, weights and dy")
      ->capture_default_str();
  app.add_option("--json", c.json, "write rank 0's record (JSON) to this file");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // Every rank parses the same flags and exits alike; one of them prints.
    if (is_rank0_by_env()) return app.exit(e);
    return e.get_exit_code();
  }
  if (c.rows > (int64_t{1} << 31) - 1 && c.index == "int32") {
    if (is_rank0_by_env())
      fmt::print(stderr,
                 "bench_sharded_embbag: --rows {} with --index int32: accepted rows < 2^31 "
                 "for int32 indices\n",
                 c.rows);
    return 2;
  }

  std::unique_ptr<Comm> world;
  try {
    world = launched_by_mpi() ? make_mpi_comm() : make_single_comm();
  } catch (const std::exception& e) {
    fmt::print(stderr, "bench_sharded_embbag: {}\n", e.what());
    return 2;
  }
  try {
    return run(c, *world);
  } catch (const std::exception& e) {
    // A rank that fails must not leave the others waiting in a collective.
    world->abort_group(fmt::format("bench_sharded_embbag: {}", e.what()), 2);
  }
}
