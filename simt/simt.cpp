// simt runtime: the thread pool, block barriers, warp collectives and the deadlock detector.
// All synchronisation state of a block sits behind one mutex, so ThreadSanitizer sees exactly
// the happens-before edges a GPU would give, and no more.
#include "simt.h"

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <initializer_list>
#include <memory>
#include <mutex>
#include <semaphore>
#include <string>
#include <thread>
#include <utility>
#include <vector>

thread_local uint3 threadIdx;
thread_local uint3 blockIdx;
thread_local dim3 blockDim;
thread_local dim3 gridDim;

long long clock64() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

namespace simt::detail {
namespace {

constexpr unsigned kMaxThreads = 1024;
constexpr std::size_t kMaxSharedBytes = 227 * 1024;

constexpr int kYieldsBeforeSleep = 64;

// Unwinds a kernel thread after its block failed; never escapes the worker.
struct Abort {};

std::string where(uint3 t) {
  return "(" + std::to_string(t.x) + "," + std::to_string(t.y) + "," + std::to_string(t.z) + ")";
}
std::string where(Site s) {
  return s.line > 0 ? std::string(s.file) + ":" + std::to_string(s.line) : std::string(s.file);
}
bool same_site(Site a, Site b) { return a.line == b.line && std::strcmp(a.file, b.file) == 0; }

struct Group {
  unsigned mask = 0;
  unsigned arrived = 0;
  unsigned waiters = 0;
  bool done = false;
  Site site{};
  uint64_t value[32] = {};
  int pred[32] = {};
};

struct Warp {
  unsigned alive = 0;
  std::vector<std::shared_ptr<Group>> pending;
  std::condition_variable cv;
};

struct Block {
  std::mutex mu;
  std::condition_variable barrier_cv;
  const char* kernel = "";
  uint3 index{};
  unsigned nthreads = 0;
  unsigned alive = 0;
  unsigned blocked = 0;  // threads waiting in a barrier or a warp collective
  // __syncthreads
  unsigned arrived = 0;
  unsigned barrier_waiters = 0;
  uint64_t generation = 0;
  Site site{};
  uint3 first{};
  int acc = 0;
  int result = 0;
  std::vector<std::unique_ptr<Warp>> warps;
  std::string failure;

  void reset(unsigned n) {
    nthreads = alive = n;
    blocked = arrived = barrier_waiters = 0;
    failure.clear();
    unsigned nwarps = (n + 31) / 32;
    warps.clear();
    for (unsigned w = 0; w < nwarps; ++w) {
      warps.push_back(std::make_unique<Warp>());
      unsigned lanes = std::min(32u, n - w * 32);
      warps.back()->alive = lanes == 32 ? 0xffffffffu : ((1u << lanes) - 1u);
    }
  }

  // Marks the block failed and wakes every waiter; they unwind with Abort.
  void fail(std::string msg) {
    if (failure.empty()) failure = std::move(msg);
    barrier_cv.notify_all();
    for (auto& w : warps) w->cv.notify_all();
  }

  std::string header() const { return std::string("kernel ") + kernel + " block " + where(index); }

  void complete_barrier() {
    result = acc;
    arrived = 0;
    blocked -= barrier_waiters;
    barrier_waiters = 0;
    ++generation;
    barrier_cv.notify_all();
  }

  bool try_complete(Warp& w, Group& g) {
    unsigned required = g.mask & w.alive;
    if ((g.arrived & required) != required) return false;
    g.done = true;
    blocked -= g.waiters;
    std::erase_if(w.pending, [&](const auto& p) { return p.get() == &g; });
    w.cv.notify_all();
    return true;
  }

  void check_deadlock() {
    if (alive == 0 || blocked < alive) return;
    std::string msg = header() + ": deadlock: all " + std::to_string(alive) +
                      " live threads wait and none can go on (";
    if (arrived) msg += std::to_string(arrived) + " at __syncthreads " + where(site);
    for (std::size_t w = 0; w < warps.size(); ++w)
      for (auto& g : warps[w]->pending)
        msg += (msg.back() == '(' ? "" : "; ") + std::string("warp ") + std::to_string(w) + " in " +
               where(g->site) + " with mask " + std::to_string(g->mask);
    fail(msg + "); a barrier some threads never reach?");
  }
};

struct ThreadCtx {
  Block* block = nullptr;
  unsigned linear = 0;
};
thread_local ThreadCtx ctx;

// The calling thread's cp.async copies not yet waited for, in the order started; `group` is the
// number of groups committed before the copy, so committed groups are those below `committed`,
// and `group` never decreases along `copies`.
struct AsyncCopy {
  unsigned char* dst;
  unsigned char data[16];
  uint64_t group;
};
struct AsyncCopies {
  std::vector<AsyncCopy> copies;
  uint64_t committed = 0;
};
thread_local AsyncCopies async_copies;

std::string hex(const void* p) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%p", p);
  return buf;
}

void check_failed(Block& b) {
  if (!b.failure.empty()) throw Abort{};
}

// Waits on `cv` until `ready`, or the block fails.
template <class Ready>
void wait(Block& b, std::unique_lock<std::mutex>& lock, std::condition_variable& cv, Ready ready) {
  // The threads this one waits for are runnable, not blocked: handing them the CPU a few times is
  // far cheaper than a futex sleep and wake-up per thread when there are more threads than cores.
  for (int spin = 0; spin < kYieldsBeforeSleep && !ready() && b.failure.empty(); ++spin) {
    lock.unlock();
    std::this_thread::yield();
    lock.lock();
  }
  cv.wait(lock, [&] { return ready() || !b.failure.empty(); });
  if (!ready()) throw Abort{};
}

// ---- the pool ----
struct Job {
  const char* kernel;
  dim3 grid, block;
  unsigned nthreads;
  uint64_t nblocks;
  const KernelBody* body;
  std::vector<unsigned char> shared;  // dynamic shared memory of the running block
  bool has_shared;
};

class Pool {
 public:
  ~Pool() {
    {
      std::lock_guard lock(mu_);
      stop_ = true;
    }
    for (auto& w : workers_) w->start.release();
    for (auto& w : workers_) w->thread.join();
  }

  void run(Job& job) {
    grow(job.nthreads);
    {
      std::lock_guard lock(mu_);
      job_ = &job;
      active_ = job.nthreads;
      next_block_ = 0;
      finished_ = 0;
      grid_done_ = false;
      failure_.clear();
      setup_block(0);
    }
    for (unsigned i = 0; i < job.nthreads; ++i) workers_[i]->start.release();

    long timeout_s = watchdog_seconds();
    std::unique_lock lock(mu_);
    uint64_t seen = next_block_;
    // Returns only once every worker has left the grid, so none lingers into the next launch.
    auto done = [&] { return grid_done_ && active_ == 0; };
    while (!done()) {
      if (!done_cv_.wait_for(lock, std::chrono::seconds(timeout_s), done) && next_block_ == seen) {
        std::fprintf(stderr,
                     "simt watchdog: %s made no progress for %ld s (threads spinning outside "
                     "any barrier?); aborting\n",
                     block_.header().c_str(), timeout_s);
        std::abort();
      }
      seen = next_block_;
    }
    job_ = nullptr;
    if (!failure_.empty()) throw KernelError(failure_);
  }

  Block& block() { return block_; }
  Job& job() { return *job_; }

 private:
  struct Worker {
    std::binary_semaphore start{0};
    std::thread thread;
  };

  static long watchdog_seconds() {
    const char* s = std::getenv("SIMT_WATCHDOG_SECONDS");
    long v = s ? std::strtol(s, nullptr, 10) : 0;
    return v > 0 ? v : 120;
  }

  void grow(unsigned n) {
    while (workers_.size() < n) {
      auto w = std::make_unique<Worker>();
      unsigned id = static_cast<unsigned>(workers_.size());
      w->thread = std::thread([this, id, wp = w.get()] { loop(id, *wp); });
      workers_.push_back(std::move(w));
    }
  }

  // Called with mu_ held: prepares block number `b` of the running job.
  void setup_block(uint64_t b) {
    Job& j = *job_;
    block_.kernel = j.kernel;
    block_.index = {static_cast<unsigned>(b % j.grid.x),
                    static_cast<unsigned>((b / j.grid.x) % j.grid.y),
                    static_cast<unsigned>(b / (uint64_t(j.grid.x) * j.grid.y))};
    std::lock_guard block_lock(block_.mu);
    block_.reset(j.nthreads);
    // Shared memory starts as garbage on a GPU: all-ones bytes read back as NaN or -1.
    if (!j.shared.empty()) std::memset(j.shared.data(), 0xff, j.shared.size());
  }

  void loop(unsigned id, Worker& self) {
    for (;;) {
      self.start.acquire();
      {
        std::lock_guard lock(mu_);
        if (stop_) return;
      }
      run_blocks(id);
    }
  }

  void run_blocks(unsigned id) {
    Job& j = *job_;
    for (;;) {
      uint64_t b;
      {
        // Every thread of the block passes this gate before any starts the kernel, so no thread's
        // whole run is ordered before another's: ThreadSanitizer then sees the kernel's own races
        // instead of a happens-before chain through the pool's locks. The gate has its own mutex:
        // the end of a block locks mu_ after the kernel body, and a slow thread that re-took mu_
        // on leaving the gate would be ordered after every faster thread's whole body (on a loaded
        // machine the threads run one after another, and the race went unreported).
        std::unique_lock lock(gate_mu_);
        b = next_block_;
        if (++gate_ == j.nthreads) {
          gate_ = 0;
          ++gate_generation_;
          gate_cv_.notify_all();
        } else {
          uint64_t g = gate_generation_;
          gate_cv_.wait(lock, [&] { return gate_generation_ != g; });
        }
      }
      threadIdx = {id % j.block.x, (id / j.block.x) % j.block.y, id / (j.block.x * j.block.y)};
      blockIdx = block_.index;
      blockDim = j.block;
      gridDim = j.grid;
      ctx = {&block_, id};
      async_copies = {};
      try {
        (*j.body)();
        if (!async_copies.copies.empty())
          throw KernelError("ended with " + std::to_string(async_copies.copies.size()) +
                            " cp.async copies it never waited for (their data never lands); "
                            "cp_async_wait<0>() before the thread ends");
      } catch (const Abort&) {
      } catch (const std::exception& e) {
        std::lock_guard lock(block_.mu);
        block_.fail(block_.header() + " thread " + where(threadIdx) + ": " + e.what());
      }
      exit_thread();
      ctx = {};
      // End of block: the last thread out prepares the next one (or ends the grid).
      std::unique_lock lock(mu_);
      if (++finished_ == j.nthreads) {
        finished_ = 0;
        {
          std::lock_guard block_lock(block_.mu);
          if (!block_.failure.empty()) failure_ = block_.failure;
        }
        if (failure_.empty() && b + 1 < j.nblocks) {
          setup_block(b + 1);
          ++next_block_;
        } else {
          grid_done_ = true;
          ++next_block_;
        }
        block_cv_.notify_all();
      } else {
        block_cv_.wait(lock, [&] { return next_block_ != b; });
      }
      if (grid_done_) {
        if (--active_ == 0) done_cv_.notify_all();
        return;
      }
    }
  }

  // A thread leaving the kernel drops out of every barrier it has not reached.
  void exit_thread() {
    Block& b = block_;
    std::lock_guard lock(b.mu);
    --b.alive;
    Warp& w = *b.warps[ctx.linear / 32];
    w.alive &= ~(1u << (ctx.linear % 32));
    if (b.arrived > 0 && b.arrived == b.alive) b.complete_barrier();
    for (auto pending = w.pending; auto& g : pending) b.try_complete(w, *g);
    if (b.failure.empty()) b.check_deadlock();
  }

  std::mutex mu_;       // the block hand-over and the end of the grid
  std::mutex gate_mu_;  // only the gate before a block's kernel body: gate_, gate_generation_
  std::condition_variable block_cv_, done_cv_, gate_cv_;
  unsigned gate_ = 0;
  uint64_t gate_generation_ = 0;
  std::vector<std::unique_ptr<Worker>> workers_;
  Job* job_ = nullptr;
  Block block_;
  uint64_t next_block_ = 0;
  unsigned finished_ = 0;
  unsigned active_ = 0;  // workers still inside run_blocks
  bool grid_done_ = false;
  bool stop_ = false;
  std::string failure_;
};

Pool& pool() {
  static Pool p;
  return p;
}

std::mutex& launch_mutex() {
  static std::mutex m;
  return m;
}

}  // namespace

int block_barrier(Site site, int pred, int mode) {
  Block& b = *ctx.block;
  std::unique_lock lock(b.mu);
  check_failed(b);
  if (b.arrived == 0) {
    b.site = site;
    b.first = threadIdx;
    b.acc = mode == kBarrierAnd ? 1 : 0;
  } else if (!same_site(site, b.site)) {
    b.fail(b.header() + ": divergent __syncthreads: thread " + where(threadIdx) + " waits at " +
           where(site) + " while thread " + where(b.first) + " waits at " + where(b.site));
    throw Abort{};
  }
  switch (mode) {
    case kBarrierCount:
      b.acc += pred;
      break;
    case kBarrierAnd:
      b.acc = b.acc && pred;
      break;
    case kBarrierOr:
      b.acc = b.acc || pred;
      break;
    default:
      break;
  }
  if (++b.arrived == b.alive) {
    b.complete_barrier();
    return b.result;
  }
  uint64_t gen = b.generation;
  ++b.barrier_waiters;
  ++b.blocked;
  b.check_deadlock();
  wait(b, lock, b.barrier_cv, [&] { return b.generation != gen; });
  return b.result;
}

void warp_collective(unsigned mask, uint64_t value, int pred, Site site, WarpView& out) {
  Block& b = *ctx.block;
  unsigned lane = ctx.linear % 32;
  Warp& w = *b.warps[ctx.linear / 32];
  std::unique_lock lock(b.mu);
  check_failed(b);
  if (!((mask >> lane) & 1u)) {
    b.fail(b.header() + ": thread " + where(threadIdx) + " (lane " + std::to_string(lane) +
           ") called " + where(site) + " with mask " + std::to_string(mask) +
           " that excludes itself; the mask must include the calling lane");
    throw Abort{};
  }
  std::shared_ptr<Group> g;
  for (auto& p : w.pending)
    if (p->mask == mask) g = p;
  if (!g) {
    g = std::make_shared<Group>();
    g->mask = mask;
    g->site = site;
    w.pending.push_back(g);
  }
  g->value[lane] = value;
  g->pred[lane] = pred;
  g->arrived |= 1u << lane;
  if (!b.try_complete(w, *g)) {
    ++g->waiters;
    ++b.blocked;
    b.check_deadlock();
    wait(b, lock, w.cv, [&] { return g->done; });
  }
  std::memcpy(out.value, g->value, sizeof out.value);
  std::memcpy(out.pred, g->pred, sizeof out.pred);
  out.arrived = g->arrived;
  out.lane = lane;
}

namespace {

// One lane's operand fragments of an m16n8 mma.sync, published to the warp (the accumulators
// stay with their lane): set 0, and for the 3xTF32 sequence the lo halves in set 1.
struct MmaFragments {
  uint32_t a[2][4], b[2][2];
};

// The whole-warp part of an mma.sync: every lane publishes its fragments and gets every lane's
// (view.value[l] points at lane l's); a partial warp is a KernelError naming the missing lanes.
// The caller reads what it needs, then calls mma_release so that no lane's fragments go out of
// scope while another lane still reads them.
void mma_gather(const MmaFragments& mine, Site site, WarpView& view) {
  warp_collective(0xffffffffu, to_bits(&mine), 0, site, view);
  if (view.arrived == 0xffffffffu) return;
  Block& blk = *ctx.block;
  std::lock_guard lock(blk.mu);
  std::string missing;
  for (unsigned l = 0; l < 32; ++l)
    if (!((view.arrived >> l) & 1u)) missing += (missing.empty() ? "" : ",") + std::to_string(l);
  blk.fail(blk.header() + ": " + where(site) + " called by thread " + where(threadIdx) +
           " while lanes " + missing +
           " of its warp have returned or do not exist; mma.sync needs all 32 lanes");
  throw Abort{};
}

void mma_release(Site site) {
  WarpView done;
  warp_collective(0xffffffffu, 0, 0, site, done);
}

const MmaFragments& lane_fragments(const WarpView& view, unsigned l) {
  return *from_bits<const MmaFragments*>(view.value[l]);
}

// The calling lane's four outputs, D[row][col] = C[row][col] + Σ_k A[row][k]·B[k][col] for
// row g + 8·(r / 2), col 2·t + r % 2, summed in fp32 in k order. C is the lane's own accumulator
// fragment; a(row, k) and b(k, col) read an operand element out of the lane that holds it, so a
// lane does its own 4·K products rather than rebuilding the warp's matrices.
template <int K, class A, class B>
void mma_outputs(float (&d)[4], unsigned lane, const A& a, const B& b) {
  const unsigned g = lane / 4, t = lane % 4;
  for (unsigned r = 0; r < 4; ++r) {
    const unsigned row = g + 8 * (r / 2), col = 2 * t + r % 2;
    float acc = d[r];
    for (unsigned k = 0; k < K; ++k) acc += a(row, k) * b(k, col);
    d[r] = acc;
  }
}

}  // namespace

// Fragment layouts (mma.cuh): bf16 A[row][k] is half k % 2 of word a[row / 8 + 2·(k / 8)] of lane
// 4·(row % 8) + (k / 2) % 4, and B[k][n] half k % 2 of word b[k / 8] of lane 4·n + (k / 2) % 4.
void mma_m16n8k16_bf16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], Site site) {
  const MmaFragments mine{{{a[0], a[1], a[2], a[3]}, {}}, {{b[0], b[1]}, {}}};
  WarpView view;
  mma_gather(mine, site, view);
  const auto half = [](uint32_t w, unsigned k) {
    return std::bit_cast<float>(k % 2 ? w & 0xffff0000u : w << 16);
  };
  const auto a_at = [&](unsigned row, unsigned k) {
    return half(lane_fragments(view, 4 * (row % 8) + (k / 2) % 4).a[0][row / 8 + 2 * (k / 8)], k);
  };
  const auto b_at = [&](unsigned k, unsigned n) {
    return half(lane_fragments(view, 4 * n + (k / 2) % 4).b[0][k / 8], k);
  };
  mma_outputs<16>(d, view.lane, a_at, b_at);
  mma_release(site);
}

namespace {

// The tf32 sequence: `sets` operand sets gathered (1: one mma; 2: hi in set 0, lo in set 1), and
// the products (A set, B set) in `order`, each an m16n8k8 mma accumulated into d in turn.
// tf32: A[row][k] is word a[row / 8 + 2·(k / 4)] of lane 4·(row % 8) + k % 4, and B[k][n] word
// b[k / 4] of lane 4·n + k % 4.
void tf32_sequence(float (&d)[4], const MmaFragments& mine, int sets,
                   std::initializer_list<std::pair<int, int>> order, Site site) {
  WarpView view;
  mma_gather(mine, site, view);
  // An operand with any of its low 13 bits set is not a tf32 value: what the hardware makes of
  // it is not specified, so a kernel must round first (tf32_round). Every lane scans the same
  // words, so all of them agree on the first such lane.
  unsigned bad_lane = 32;
  uint32_t bad_word = 0;
  for (unsigned l = 0; l < 32 && bad_lane == 32; ++l) {
    const auto& f = lane_fragments(view, l);
    for (int set = 0; set < sets; ++set)
      for (uint32_t w :
           {f.a[set][0], f.a[set][1], f.a[set][2], f.a[set][3], f.b[set][0], f.b[set][1]})
        if ((w & 0x1fffu) && bad_lane == 32) bad_lane = l, bad_word = w;
  }
  if (bad_lane == 32)
    for (const auto& [sa, sb] : order) {
      const auto a_at = [&](unsigned row, unsigned k) {
        return std::bit_cast<float>(
            lane_fragments(view, 4 * (row % 8) + k % 4).a[sa][row / 8 + 2 * (k / 4)]);
      };
      const auto b_at = [&](unsigned k, unsigned n) {
        return std::bit_cast<float>(lane_fragments(view, 4 * n + k % 4).b[sb][k / 4]);
      };
      mma_outputs<8>(d, view.lane, a_at, b_at);
    }
  mma_release(site);
  if (bad_lane < 32) {
    Block& blk = *ctx.block;
    std::lock_guard lock(blk.mu);
    char hex[16];
    std::snprintf(hex, sizeof hex, "0x%08x", bad_word);
    blk.fail(blk.header() + ": " + where(site) + ": lane " + std::to_string(bad_lane) +
             " passed the operand " + hex +
             ", which is not a tf32 value (its low 13 bits are set); round it with tf32_round");
    throw Abort{};
  }
}

}  // namespace

void mma_m16n8k8_tf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], Site site) {
  tf32_sequence(d, {{{a[0], a[1], a[2], a[3]}, {}}, {{b[0], b[1]}, {}}}, 1, {{0, 0}}, site);
}

void mma_m16n8k8_3xtf32(float (&d)[4], const uint32_t (&a_hi)[4], const uint32_t (&a_lo)[4],
                        const uint32_t (&b_hi)[2], const uint32_t (&b_lo)[2], Site site) {
  // A_lo·B_hi, A_hi·B_lo, A_hi·B_hi: the order of mma_3xtf32_m16n8k8's three instructions.
  tf32_sequence(d,
                {{{a_hi[0], a_hi[1], a_hi[2], a_hi[3]}, {a_lo[0], a_lo[1], a_lo[2], a_lo[3]}},
                 {{b_hi[0], b_hi[1]}, {b_lo[0], b_lo[1]}}},
                2, {{1, 0}, {0, 1}, {0, 0}}, site);
}

void async_copy(void* dst, const void* src, int src_bytes) {
  const auto misaligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 != 0; };
  if (src_bytes < 0 || src_bytes > 16)
    throw KernelError("cp.async of " + std::to_string(src_bytes) +
                      " source bytes; accepted 0..16 (the rest of the 16 are zeros)");
  if (misaligned(dst) || (src_bytes > 0 && misaligned(src)))
    throw KernelError("cp.async from " + hex(src) + " to " + hex(dst) +
                      ": both addresses must be 16-byte aligned");
  AsyncCopy c{static_cast<unsigned char*>(dst), {}, async_copies.committed};
  if (src_bytes > 0) std::memcpy(c.data, src, static_cast<std::size_t>(src_bytes));
  // Until the wait, the destination holds garbage: shared memory's all-ones bytes.
  std::memset(dst, 0xff, sizeof c.data);
  async_copies.copies.push_back(c);
}

void async_commit() { ++async_copies.committed; }

void async_wait(int pending) {
  const uint64_t n = static_cast<uint64_t>(pending);
  auto& a = async_copies;
  // Groups below `done` are complete: all but the `pending` most recent committed ones.
  // They are a prefix of the copies.
  const uint64_t done = a.committed > n ? a.committed - n : 0;
  auto end = a.copies.begin();
  for (; end != a.copies.end() && end->group < done; ++end)
    std::memcpy(end->dst, end->data, sizeof end->data);
  a.copies.erase(a.copies.begin(), end);
}

unsigned active_lanes() {
  Block& b = *ctx.block;
  std::lock_guard lock(b.mu);
  return b.warps[ctx.linear / 32]->alive;
}

unsigned char* dynamic_shared_memory() {
  Job& j = pool().job();
  return j.has_shared ? j.shared.data() : nullptr;
}

void trap(Site site) {
  throw KernelError("__trap() at " + where(site) + " in kernel " + ctx.block->kernel);
}

void run_grid(const char* kernel, dim3 grid, dim3 block, std::size_t shared_bytes,
              const KernelBody& body) {
  if (ctx.block)
    throw KernelError(std::string("kernel ") + kernel +
                      ": launched from inside a kernel; simt "
                      "does not run dynamic parallelism");
  uint64_t nthreads = uint64_t(block.x) * block.y * block.z;
  if (nthreads == 0 || nthreads > kMaxThreads || block.z > 64)
    throw KernelError(std::string("kernel ") + kernel + ": invalid launch: block " +
                      where(uint3{block.x, block.y, block.z}) + " has " + std::to_string(nthreads) +
                      " threads; accepted 1..1024 threads with z <= 64");
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 0x7fffffffu || grid.y > 65535 ||
      grid.z > 65535)
    throw KernelError(std::string("kernel ") + kernel + ": invalid launch: grid " +
                      where(uint3{grid.x, grid.y, grid.z}) +
                      "; accepted x in 1..2^31-1, y and z in 1..65535");
  if (shared_bytes > kMaxSharedBytes)
    throw KernelError(
        std::string("kernel ") + kernel + ": invalid launch: " + std::to_string(shared_bytes) +
        " bytes of dynamic shared memory; at most " + std::to_string(kMaxSharedBytes));
  std::lock_guard serial(launch_mutex());
  Job job{kernel,
          grid,
          block,
          static_cast<unsigned>(nthreads),
          uint64_t(grid.x) * grid.y * grid.z,
          &body,
          std::vector<unsigned char>(shared_bytes),
          shared_bytes > 0};
  pool().run(job);
}

}  // namespace simt::detail
