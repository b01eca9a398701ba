// simt runtime: a block's CUDA threads as fibers on a worker thread, block barriers, warp
// collectives, the deadlock detector and the watchdog.
//
// One persistent worker thread runs every kernel, one block at a time (two workers taking turns
// under ThreadSanitizer: kWorkers says why); each CUDA thread of the block is a fiber
// (Boost.Context's fcontext, its own stack) that runs until it waits in a barrier or a warp
// collective, or ends. A switch between fibers costs tens of nanoseconds where a
// rendezvous of OS threads cost a futex sleep and wake-up per thread.
//
// The sanitizers see each fiber as its own thread:
// - ThreadSanitizer: each fiber has a TSan fiber context, and a switch carries no
//   happens-before (__tsan_switch_to_fiber_no_sync). The only edges between the threads of a
//   block are the ones a GPU gives: each thread releases a barrier's (or a warp collective's) token
//   on arrival and acquires it on leaving, so a missing __syncthreads is a data race at the
//   kernel's own lines. A barrier generation's token alternates between two, so a thread that
//   has passed a barrier and arrives at the next cannot hand its later work to a thread still
//   leaving the first. A thread that returns releases into the barrier its block waits in next.
//   The blocks of a grid run on two workers in turn, and nothing ThreadSanitizer sees orders one
//   worker's blocks before the other's, so races between blocks are reported too. simt's own
//   bookkeeping, shared by the fibers, is not checked (Unchecked).
// - AddressSanitizer: every switch is announced (__sanitizer_start/finish_switch_fiber), so ASan
//   knows which stack runs and keeps the redzones of every fiber's frames (swapcontext is not
//   used: ASan's interceptor unpoisons the whole target stack at each switch).
#include "simt.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bit>

// Boost.Context's low-level interface (make_fcontext, jump_fcontext), on which its fiber and
// continuation classes are built: simt announces each switch to the sanitizers itself.
#include <boost/context/detail/fcontext.hpp>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <initializer_list>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

// SIMT_TSAN comes from simt.h.
#if defined(__SANITIZE_ADDRESS__)
#define SIMT_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SIMT_ASAN 1
#endif
#endif

#if defined(SIMT_TSAN)
#include <sanitizer/tsan_interface.h>
extern "C" {
void __tsan_ignore_thread_begin();
void __tsan_ignore_thread_end();
void AnnotateIgnoreSyncBegin(const char* file, int line);
void AnnotateIgnoreSyncEnd(const char* file, int line);
}
#endif
#if defined(SIMT_ASAN)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

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

namespace fctx = boost::context::detail;

constexpr unsigned kMaxThreads = 1024;
constexpr std::size_t kMaxSharedBytes = 227 * 1024;
// A fiber's stack, above a guard page: address space, touched only as used. A kernel thread's
// frames are small (its arrays are what a GPU keeps in registers); 1 MiB leaves room for a
// sanitizer build's larger frames, and an overflow faults on the guard page.
constexpr std::size_t kStackBytes = std::size_t(1) << 20;

// What the sanitizers are told; no-ops in a build without them.
namespace san {
#if defined(SIMT_TSAN)
void* current_fiber() { return __tsan_get_current_fiber(); }
void* create_fiber() { return __tsan_create_fiber(0); }
void destroy_fiber(void* f) { __tsan_destroy_fiber(f); }
void switch_fiber(void* f) { __tsan_switch_to_fiber(f, __tsan_switch_to_fiber_no_sync); }
void release(void* token) { __tsan_release(token); }
void acquire(void* token) { __tsan_acquire(token); }
void ignore_begin() { __tsan_ignore_thread_begin(); }
void ignore_end() { __tsan_ignore_thread_end(); }
void ignore_sync_begin() { AnnotateIgnoreSyncBegin(__FILE__, __LINE__); }
void ignore_sync_end() { AnnotateIgnoreSyncEnd(__FILE__, __LINE__); }
#else
void* current_fiber() { return nullptr; }
void* create_fiber() { return nullptr; }
void destroy_fiber(void*) {}
void switch_fiber(void*) {}
void release(void*) {}
void acquire(void*) {}
void ignore_begin() {}
void ignore_end() {}
void ignore_sync_begin() {}
void ignore_sync_end() {}
#endif
#if defined(SIMT_ASAN)
void start_switch(void** fake_stack, const void* bottom, std::size_t size) {
  __sanitizer_start_switch_fiber(fake_stack, bottom, size);
}
void finish_switch(void* fake_stack, const void** bottom, std::size_t* size) {
  __sanitizer_finish_switch_fiber(fake_stack, bottom, size);
}
#else
void start_switch(void**, const void*, std::size_t) {}
void finish_switch(void*, const void**, std::size_t*) {}
#endif
}  // namespace san

// simt's bookkeeping, shared by the fibers of a block, which one OS thread runs one at a time:
// ThreadSanitizer does not check it (the edges it must see are the tokens', not these).
struct Unchecked {
  Unchecked() { san::ignore_begin(); }
  ~Unchecked() { san::ignore_end(); }
  Unchecked(const Unchecked&) = delete;
  Unchecked& operator=(const Unchecked&) = delete;
};

// simt's hand-over between its workers, which ThreadSanitizer does not see as synchronisation.
struct IgnoreSync {
  IgnoreSync() { san::ignore_sync_begin(); }
  ~IgnoreSync() { san::ignore_sync_end(); }
  IgnoreSync(const IgnoreSync&) = delete;
  IgnoreSync& operator=(const IgnoreSync&) = delete;
};

// A sync token: an address ThreadSanitizer releases to and acquires from.
struct alignas(8) Token {
  char byte = 0;
};

// Unwinds a kernel thread after its block failed; never escapes the fiber.
struct Abort {};

std::string where(uint3 t) {
  return "(" + std::to_string(t.x) + "," + std::to_string(t.y) + "," + std::to_string(t.z) + ")";
}
std::string where(Site s) {
  return s.line > 0 ? std::string(s.file) + ":" + std::to_string(s.line) : std::string(s.file);
}
bool same_site(Site a, Site b) { return a.line == b.line && std::strcmp(a.file, b.file) == 0; }

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

// An access location in kernel source, as source_location gives it.
struct AccessAt {
  const char* file;
  unsigned line, column;
  auto operator<=>(const AccessAt&) const = default;
};

// One lane's counted access: the request it belongs to is (warp, epoch, at, nth, store).
struct AccessRecord {
  unsigned warp;
  uint64_t epoch;
  AccessAt at;
  uint64_t nth;
  bool store;
  uintptr_t address;
  std::size_t bytes;
};

struct Job {
  const char* kernel;
  dim3 grid, block;
  unsigned nthreads;
  uint64_t nblocks;
  const KernelBody* body;
  std::size_t shared_bytes;  // dynamic shared memory a block
};

// One CUDA thread: the fiber that runs it, kept for every later block and launch.
struct Fiber {
  enum State { kReady, kBlocked, kDone };
  unsigned linear = 0;
  uint3 tid{};
  State state = kDone;
  unsigned char* stack = nullptr;  // the usable stack, above a guard page
  fctx::fcontext_t context = nullptr;
  void* tsan = nullptr;
  void* asan_fake_stack = nullptr;
  AsyncCopies async;
  // For AccessCounter: the warp collectives and block barriers this thread has passed, and per
  // access location the epoch of its last access there and how many it made there in that epoch.
  uint64_t epoch = 0;
  std::map<AccessAt, std::pair<uint64_t, uint64_t>> accesses;
};

struct Group {
  unsigned mask = 0;
  unsigned arrived = 0;
  bool done = false;
  Site site{};
  uint64_t value[32] = {};
  int pred[32] = {};
  std::vector<Fiber*> waiters;
  Token token;
};

struct Warp {
  unsigned alive = 0;
  std::vector<std::shared_ptr<Group>> pending;
};

struct Block {
  Job* job = nullptr;
  uint3 index{};
  unsigned alive = 0;
  std::deque<Fiber>* fibers = nullptr;  // the worker's; thread t of the block runs on fiber t
  std::deque<Fiber*> ready;             // fibers that can run, in the order they became able to
  // __syncthreads
  unsigned arrived = 0;
  uint64_t generation = 0;
  Site site{};
  uint3 first{};
  int acc = 0;
  int result = 0;
  std::vector<Fiber*> barrier_waiters;
  Token barrier_token[2];  // generation g uses barrier_token[g % 2]
  std::vector<Warp> warps;
  std::string failure;

  void reset(Job& j, std::deque<Fiber>& f) {
    job = &j;
    alive = j.nthreads;
    fibers = &f;
    arrived = 0;
    barrier_waiters.clear();
    failure.clear();
    ready.clear();
    for (unsigned t = 0; t < j.nthreads; ++t) {
      Fiber& fiber = f[t];
      fiber.tid = {t % j.block.x, (t / j.block.x) % j.block.y, t / (j.block.x * j.block.y)};
      fiber.state = Fiber::kReady;
      ready.push_back(&fiber);
    }
    warps.assign((j.nthreads + 31) / 32, Warp{});
    for (unsigned w = 0; w < warps.size(); ++w) {
      unsigned lanes = std::min(32u, j.nthreads - w * 32);
      warps[w].alive = lanes == 32 ? 0xffffffffu : ((1u << lanes) - 1u);
    }
  }

  void wake(Fiber* f) {
    if (f->state != Fiber::kBlocked) return;
    f->state = Fiber::kReady;
    ready.push_back(f);
  }

  // Marks the block failed and wakes every waiter; they unwind with Abort.
  void fail(std::string msg) {
    if (failure.empty()) failure = std::move(msg);
    for (unsigned t = 0; t < job->nthreads; ++t) wake(&(*fibers)[t]);
  }

  std::string header() const {
    return std::string("kernel ") + job->kernel + " block " + where(index);
  }

  Token* barrier_token_now() { return &barrier_token[generation % 2]; }

  void complete_barrier() {
    result = acc;
    arrived = 0;
    ++generation;
    for (Fiber* f : barrier_waiters) wake(f);
    barrier_waiters.clear();
  }

  bool try_complete(Warp& w, Group& g) {
    unsigned required = g.mask & w.alive;
    if ((g.arrived & required) != required) return false;
    g.done = true;
    for (Fiber* f : g.waiters) wake(f);
    g.waiters.clear();
    std::erase_if(w.pending, [&](const auto& p) { return p.get() == &g; });
    return true;
  }

  // Called when no fiber can run but some have not ended: every one of them waits.
  void deadlock() {
    std::string msg = header() + ": deadlock: all " + std::to_string(alive) +
                      " live threads wait and none can go on (";
    if (arrived) msg += std::to_string(arrived) + " at __syncthreads " + where(site);
    for (std::size_t w = 0; w < warps.size(); ++w)
      for (auto& g : warps[w].pending)
        msg += (msg.back() == '(' ? "" : "; ") + std::string("warp ") + std::to_string(w) + " in " +
               where(g->site) + " with mask " + std::to_string(g->mask);
    fail(msg + "); a barrier some threads never reach?");
  }
};

// The fiber running on this thread (the worker), null outside a kernel.
thread_local Fiber* current = nullptr;

std::string hex(const void* p) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%p", p);
  return buf;
}

// ---- access counting (AccessCounter) ----

// What an AccessCounter has counted, one entry per (kernel, location, store).
struct AccessTotals {
  std::mutex mu;
  bool open = false;  // an AccessCounter lives
  std::map<std::tuple<std::string, std::string, unsigned, unsigned, bool>, AccessSite> sites;
};
AccessTotals& access_totals() {
  static AccessTotals t;
  return t;
}

// This worker's counted accesses of the block it runs.
thread_local std::vector<AccessRecord> access_records;

// Groups the block's records into warp-wide requests and adds their sectors and bytes to the
// totals of `kernel`.
void fold_accesses(const char* kernel) {
  Unchecked unchecked;
  auto& r = access_records;
  if (r.empty()) return;
  const auto request = [](const AccessRecord& x) {
    return std::tie(x.warp, x.epoch, x.at, x.nth, x.store);
  };
  std::sort(r.begin(), r.end(),
            [&](const AccessRecord& a, const AccessRecord& b) { return request(a) < request(b); });
  // A request's sectors (address / 32), each with the bytes of it the lanes asked for.
  std::map<uintptr_t, uint32_t> sectors;
  auto& totals = access_totals();
  std::lock_guard lock(totals.mu);
  for (std::size_t i = 0; i < r.size();) {
    std::size_t e = i;
    sectors.clear();
    for (; e < r.size() && request(r[e]) == request(r[i]); ++e)
      for (uintptr_t a = r[e].address; a < r[e].address + r[e].bytes; ++a)
        sectors[a / 32] |= 1u << (a % 32);
    const AccessRecord& x = r[i];
    AccessSite& site = totals.sites[{kernel, x.at.file, x.at.line, x.at.column, x.store}];
    if (site.requests == 0) {
      site.kernel = kernel;
      site.where = std::string(x.at.file) + ":" + std::to_string(x.at.line) + ":" +
                   std::to_string(x.at.column);
      site.store = x.store;
    }
    ++site.requests;
    site.sectors += sectors.size();
    for (const auto& [sector, used] : sectors) site.bytes += std::popcount(used);
    i = e;
  }
  r.clear();
}

// ---- the workers ----

// How many OS threads run a grid's blocks. Under ThreadSanitizer two, taking turns a block at a
// time in the blocks' order (Pool::await_turn), and nothing ThreadSanitizer sees orders one
// worker's blocks before the other's (the only edges are the launch's, before every block, and
// the grid's end, after every block), so a race between two blocks on different workers is
// reported as one between threads. Bit s of a block's index picks its worker, s turning with each
// launch (Pool::split_bit): two blocks' indices differ in some bit, so within as many launches
// as a block index of the grid has bits every two blocks have run on different workers (blocks
// b and b + 2 included, which a split by parity never separates). `__shared__` is then
// `thread_local` (simt.h): each worker's blocks have their own. Elsewhere one worker runs the
// blocks in order, and a `__shared__` array is a `static` one, with AddressSanitizer's redzones
// around it.
#if defined(SIMT_TSAN)
constexpr unsigned kWorkers = 2;
#else
constexpr unsigned kWorkers = 1;
#endif

class Pool;

// One OS thread that runs blocks: its fibers (thread t of every block it runs is fiber t), the
// scheduler's context, the block it runs and that block's dynamic shared memory, all its own.
class Worker {
 public:
  explicit Worker(Pool& pool) : pool_(pool) {}
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  // Runs this worker's blocks of `j` (those whose bit `split` is `index`) until a block fails,
  // here or on another worker.
  void run_job(Job& j, unsigned index, unsigned split);

  // Called by a fiber: hands this worker back to the scheduler until the fiber is resumed.
  void suspend(Fiber& f);

  // Forgets the fibers (for ThreadSanitizer, which would count them as threads running at exit).
  void forget_fibers() {
    for (Fiber& f : fibers_) san::destroy_fiber(f.tsan);
  }

  Block block;
  std::vector<unsigned char> shared;  // the running grid's dynamic shared memory, exact size

 private:
  void run_block(Job& j, uint64_t b);
  void resume(Fiber& f, const Job& j);
  void grow(unsigned n);
  static void fiber_main(fctx::transfer_t from);
  void run_thread(Fiber& f);
  void exit_thread(Fiber& f);

  Pool& pool_;
  std::deque<Fiber> fibers_;  // a deque: the block's queues hold pointers while it grows
  fctx::fcontext_t scheduler_ = nullptr;
  void* scheduler_tsan_ = nullptr;
  const void* scheduler_stack_ = nullptr;
  std::size_t scheduler_stack_size_ = 0;
  // Everything before a block on this worker (the launch, its blocks before) happens before its
  // threads; its threads happen before what the worker does after the block.
  Token start_token_, end_token_;
};

// The worker this OS thread is, null on other threads.
thread_local Worker* this_worker = nullptr;

class Pool {
 public:
  Pool() {
    for (unsigned i = 0; i < kWorkers; ++i) workers_.emplace_back(*this);
    for (unsigned i = 0; i < kWorkers; ++i) threads_.emplace_back([this, i] { serve(i); });
  }

  ~Pool() {
    {
      std::lock_guard lock(mu_);
      stop_ = true;
    }
    work_cv_.notify_all();
    for (std::thread& t : threads_) t.join();
    // The fibers stay suspended where they wait for a next block, and their stacks go with the
    // process; ThreadSanitizer forgets them (it would count them as threads still running at
    // exit, and wait a second for them).
    for (Worker& w : workers_) w.forget_fibers();
  }

  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;

  void run(Job& job) {
    std::unique_lock lock(mu_);
    job_ = &job;
    ++job_id_;
    done_ = 0;
    failure_.clear();
    failed_.store(false, std::memory_order_relaxed);
    {
      std::lock_guard turn(turn_mu_);
      turn_ = 0;
    }
    work_cv_.notify_all();
    const long timeout_s = watchdog_seconds();
    uint64_t seen = progress_.load(std::memory_order_relaxed);
    while (!done_cv_.wait_for(lock, std::chrono::seconds(timeout_s),
                              [&] { return done_ == workers_.size(); })) {
      const uint64_t now = progress_.load(std::memory_order_relaxed);
      if (now == seen) {
        std::fprintf(stderr,
                     "simt watchdog: kernel %s made no progress for %ld s (a thread spinning "
                     "outside any barrier?); aborting\n",
                     job.kernel, timeout_s);
        std::abort();
      }
      seen = now;
    }
    job_ = nullptr;
    if (!failure_.empty()) throw KernelError(failure_);
  }

  // A fiber resumed: the watchdog's sign of progress.
  void progressed() { progress_.fetch_add(1, std::memory_order_relaxed); }

  // Called by the worker whose block failed. Blocks run in order, one at a time, and none runs
  // after a failure: this is the first failed block's, and the only one.
  void fail(const std::string& why) {
    failure_ = why;
    failed_.store(true, std::memory_order_relaxed);
  }
  bool failed() const { return failed_.load(std::memory_order_relaxed); }

  // The workers take turns, a block each, in the order of the blocks: one runs at a time, so the
  // blocks run (and their atomics round) as they would on one worker, and a worker's OS thread
  // costs no more CPU than one. The hand-over is simt's, not an edge a GPU has between blocks:
  // ThreadSanitizer does not see it (ignore_sync). After a failure no block runs, and every turn
  // is passed at once (kAllPassed): a worker waiting for a later block of its own sees the
  // failure and stops.
  void await_turn(uint64_t b) {
    if (kWorkers == 1) return;
    IgnoreSync ignore;
    std::unique_lock lock(turn_mu_);
    turn_cv_.wait(lock, [&] { return turn_ == b || turn_ == kAllPassed; });
  }
  void pass_turn(uint64_t b) {
    if (kWorkers == 1) return;
    IgnoreSync ignore;
    {
      std::lock_guard lock(turn_mu_);
      turn_ = failed() ? kAllPassed : b + 1;
    }
    turn_cv_.notify_all();
  }

 private:
  // The bit of a block's index that picks its worker in launch `launch` of a grid of `nblocks`:
  // the bits an index of the grid has, one after another from launch to launch.
  static unsigned split_bit(uint64_t nblocks, uint64_t launch) {
    const unsigned bits = nblocks > 1 ? static_cast<unsigned>(std::bit_width(nblocks - 1)) : 1;
    return static_cast<unsigned>(launch % bits);
  }

  static long watchdog_seconds() {
    const char* s = std::getenv("SIMT_WATCHDOG_SECONDS");
    long v = s ? std::strtol(s, nullptr, 10) : 0;
    return v > 0 ? v : 120;
  }

  // Worker `i`'s OS thread. The mutex is taken only before and after a worker's blocks of a grid,
  // so it orders them after the launch and before its end, and never one worker's blocks after
  // the other's.
  void serve(unsigned i) {
    Worker& w = workers_[i];
    this_worker = &w;
    uint64_t seen = 0;
    std::unique_lock lock(mu_);
    for (;;) {
      work_cv_.wait(lock, [&] { return stop_ || job_id_ != seen; });
      if (stop_) return;
      seen = job_id_;
      Job& j = *job_;
      lock.unlock();
      w.run_job(j, i, split_bit(j.nblocks, seen));
      lock.lock();
      if (++done_ == workers_.size()) done_cv_.notify_all();
    }
  }

  std::mutex mu_;  // job_, job_id_, done_, stop_: the hand-over between launcher and workers
  std::condition_variable work_cv_, done_cv_;
  Job* job_ = nullptr;
  uint64_t job_id_ = 0;
  std::size_t done_ = 0;
  bool stop_ = false;
  std::string failure_;  // the grid's failure: written by a worker, read once the grid has ended
  // Relaxed atomics (no happens-before between the workers): fiber resumptions, for the
  // watchdog; whether a block has failed.
  std::atomic<uint64_t> progress_{0};
  std::atomic<bool> failed_{false};
  std::mutex turn_mu_;  // turn_: the block whose worker runs next
  std::condition_variable turn_cv_;
  uint64_t turn_ = 0;
  static constexpr uint64_t kAllPassed = ~uint64_t{0};

  std::deque<Worker> workers_;
  std::vector<std::thread> threads_;  // started once the workers exist
};

Pool& pool() {
  static Pool p;
  return p;
}

Worker& worker() { return *this_worker; }

void Worker::run_job(Job& j, unsigned index, unsigned split) {
  Unchecked unchecked;
  if (!scheduler_tsan_) scheduler_tsan_ = san::current_fiber();
  grow(j.nthreads);
  // An exact-size buffer: AddressSanitizer's redzone starts at its end.
  shared = std::vector<unsigned char>(j.shared_bytes);
  for (uint64_t b = 0; b < j.nblocks; ++b) {
    if (kWorkers > 1 && ((b >> split) & 1) != index) continue;
    pool_.await_turn(b);
    const bool run = !pool_.failed();
    if (run) run_block(j, b);
    if (run && !block.failure.empty()) pool_.fail(block.failure);
    pool_.pass_turn(b);
    if (pool_.failed()) break;
  }
  shared = {};
}

void Worker::run_block(Job& j, uint64_t b) {
  block.index = {static_cast<unsigned>(b % j.grid.x),
                 static_cast<unsigned>((b / j.grid.x) % j.grid.y),
                 static_cast<unsigned>(b / (uint64_t(j.grid.x) * j.grid.y))};
  block.reset(j, fibers_);
  // Shared memory starts as garbage on a GPU: all-ones bytes read back as NaN or -1.
  if (!shared.empty()) std::memset(shared.data(), kGarbageByte, shared.size());
  san::release(&start_token_);
  while (block.alive > 0 || !block.ready.empty()) {
    if (block.ready.empty()) {
      block.deadlock();
      continue;
    }
    Fiber* f = block.ready.front();
    block.ready.pop_front();
    resume(*f, j);
  }
  san::acquire(&end_token_);
  if (counting_accesses.load(std::memory_order_relaxed)) fold_accesses(j.kernel);
}

void Worker::suspend(Fiber& f) {
  fctx::fcontext_t to;
  const void* stack;
  std::size_t stack_size;
  void* tsan;
  {
    Unchecked unchecked;
    to = scheduler_;
    stack = scheduler_stack_;
    stack_size = scheduler_stack_size_;
    tsan = scheduler_tsan_;
  }
  san::start_switch(&f.asan_fake_stack, stack, stack_size);
  san::switch_fiber(tsan);
  const fctx::transfer_t back = fctx::jump_fcontext(to, nullptr);
  Unchecked unchecked;
  scheduler_ = back.fctx;
  san::finish_switch(f.asan_fake_stack, &scheduler_stack_, &scheduler_stack_size_);
}

void Worker::resume(Fiber& f, const Job& j) {
  current = &f;
  threadIdx = f.tid;
  blockIdx = block.index;
  blockDim = j.block;
  gridDim = j.grid;
  pool_.progressed();
  void* fake_stack = nullptr;
  san::start_switch(&fake_stack, f.stack, kStackBytes);
  san::switch_fiber(f.tsan);
  f.context = fctx::jump_fcontext(f.context, &f).fctx;
  san::finish_switch(fake_stack, nullptr, nullptr);
  current = nullptr;
}

// Makes fibers up to `n`; thread `t` of every block runs on fiber t.
void Worker::grow(unsigned n) {
  static const std::size_t page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
  while (fibers_.size() < n) {
    Fiber& f = fibers_.emplace_back();
    f.linear = static_cast<unsigned>(fibers_.size() - 1);
    void* mem = mmap(nullptr, kStackBytes + page, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (mem == MAP_FAILED || mprotect(mem, page, PROT_NONE) != 0) {
      std::fprintf(stderr, "simt: cannot map a %zu-byte fiber stack\n", kStackBytes);
      std::abort();
    }
    f.stack = static_cast<unsigned char*>(mem) + page;
    f.context = fctx::make_fcontext(f.stack + kStackBytes, kStackBytes, &fiber_main);
    f.tsan = san::create_fiber();
  }
}

// A fiber's whole life: one CUDA thread of a block, then a wait for the next block. It runs on
// the worker that made it, and only there.
void Worker::fiber_main(fctx::transfer_t from) {
  Worker& w = worker();
  Fiber& f = *static_cast<Fiber*>(from.data);
  {
    Unchecked unchecked;
    w.scheduler_ = from.fctx;
    san::finish_switch(nullptr, &w.scheduler_stack_, &w.scheduler_stack_size_);
  }
  for (;;) {
    w.run_thread(f);
    w.suspend(f);
  }
}

std::mutex& launch_mutex() {
  static std::mutex m;
  return m;
}

void check_failed(Block& b) {
  if (!b.failure.empty()) throw Abort{};
}

// Suspends the calling fiber until `done()`, or until the block fails (then unwinds with Abort).
template <class Done>
void wait(Block& b, Fiber& self, Done done) {
  while (!done() && b.failure.empty()) {
    self.state = Fiber::kBlocked;
    worker().suspend(self);
  }
  if (!done()) throw Abort{};
}

void Worker::run_thread(Fiber& f) {
  san::acquire(&start_token_);
  f.async = {};
  f.epoch = 0;
  f.accesses.clear();
  const Job* j;
  {
    Unchecked unchecked;
    j = block.job;
  }
  try {
    (*j->body)();
    if (!f.async.copies.empty())
      throw KernelError("ended with " + std::to_string(f.async.copies.size()) +
                        " cp.async copies it never waited for (their data never lands); "
                        "cp_async_wait<0>() before the thread ends");
  } catch (const Abort&) {
  } catch (const std::exception& e) {
    Unchecked unchecked;
    block.fail(block.header() + " thread " + where(threadIdx) + ": " + e.what());
  } catch (...) {
    Unchecked unchecked;
    block.fail(block.header() + " thread " + where(threadIdx) +
               ": threw an exception that is not a std::exception");
  }
  f.async = {};
  exit_thread(f);
  san::release(&end_token_);
  Unchecked unchecked;
  f.state = Fiber::kDone;
}

// A thread leaving the kernel drops out of every barrier it has not reached; what it did before
// happens before the threads leave the barrier or the collectives of its warp it was counted in.
void Worker::exit_thread(Fiber& f) {
  Block& b = block;
  Token* token;
  std::vector<std::shared_ptr<Group>> pending;
  {
    Unchecked unchecked;
    token = b.barrier_token_now();
    pending = b.warps[f.linear / 32].pending;
  }
  san::release(token);
  for (auto& g : pending) san::release(&g->token);
  Unchecked unchecked;
  --b.alive;
  Warp& w = b.warps[f.linear / 32];
  w.alive &= ~(1u << (f.linear % 32));
  if (b.arrived > 0 && b.arrived == b.alive) b.complete_barrier();
  for (auto& g : pending) b.try_complete(w, *g);
  pending.clear();
}

}  // namespace

int block_barrier(Site site, int pred, int mode) {
  Block& b = worker().block;
  Fiber& self = *current;
  Token* token;
  {
    Unchecked unchecked;
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
    token = b.barrier_token_now();
  }
  san::release(token);
  int result;
  {
    Unchecked unchecked;
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
    } else {
      const uint64_t gen = b.generation;
      b.barrier_waiters.push_back(&self);
      wait(b, self, [&] { return b.generation != gen; });
    }
    result = b.result;
    ++self.epoch;
  }
  san::acquire(token);
  return result;
}

std::atomic<bool> counting_accesses{false};

void count_access(const void* p, std::size_t bytes, bool store, const std::source_location& at) {
  Fiber* self = current;
  if (!self) return;  // not a kernel's thread
  Unchecked unchecked;
  const AccessAt key{at.file_name(), at.line(), at.column()};
  auto& [epoch, count] = self->accesses[key];
  if (epoch != self->epoch) epoch = self->epoch, count = 0;
  access_records.push_back(
      {self->linear / 32, self->epoch, key, count++, store, reinterpret_cast<uintptr_t>(p), bytes});
}

void warp_collective(unsigned mask, uint64_t value, int pred, Site site, WarpView& out) {
  Block& b = worker().block;
  Fiber& self = *current;
  const unsigned lane = self.linear % 32;
  std::shared_ptr<Group> g;
  {
    Unchecked unchecked;
    Warp& w = b.warps[self.linear / 32];
    check_failed(b);
    if (!((mask >> lane) & 1u)) {
      b.fail(b.header() + ": thread " + where(threadIdx) + " (lane " + std::to_string(lane) +
             ") called " + where(site) + " with mask " + std::to_string(mask) +
             " that excludes itself; the mask must include the calling lane");
      throw Abort{};
    }
    for (auto& p : w.pending)
      if (p->mask == mask) g = p;
    if (!g) {
      g = std::make_shared<Group>();
      g->mask = mask;
      g->site = site;
      w.pending.push_back(g);
    }
  }
  san::release(&g->token);
  {
    Unchecked unchecked;
    Warp& w = b.warps[self.linear / 32];
    g->value[lane] = value;
    g->pred[lane] = pred;
    g->arrived |= 1u << lane;
    if (!b.try_complete(w, *g)) {
      g->waiters.push_back(&self);
      wait(b, self, [&] { return g->done; });
    }
    std::memcpy(out.value, g->value, sizeof out.value);
    std::memcpy(out.pred, g->pred, sizeof out.pred);
    out.arrived = g->arrived;
    out.lane = lane;
    ++self.epoch;
  }
  san::acquire(&g->token);
  Unchecked unchecked;
  g.reset();
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
  Block& blk = worker().block;
  Unchecked unchecked;
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
    Block& blk = worker().block;
    Unchecked unchecked;
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
  AsyncCopies& a = current->async;
  AsyncCopy c{static_cast<unsigned char*>(dst), {}, a.committed};
  if (src_bytes > 0) std::memcpy(c.data, src, static_cast<std::size_t>(src_bytes));
  // Until the wait, the destination holds garbage: shared memory's all-ones bytes.
  std::memset(dst, kGarbageByte, sizeof c.data);
  a.copies.push_back(c);
}

void async_commit() { ++current->async.committed; }

void async_wait(int pending) {
  const uint64_t n = static_cast<uint64_t>(pending);
  AsyncCopies& a = current->async;
  // Groups below `done` are complete: all but the `pending` most recent committed ones.
  // They are a prefix of the copies.
  const uint64_t done = a.committed > n ? a.committed - n : 0;
  auto end = a.copies.begin();
  for (; end != a.copies.end() && end->group < done; ++end)
    std::memcpy(end->dst, end->data, sizeof end->data);
  a.copies.erase(a.copies.begin(), end);
}

unsigned active_lanes() {
  Unchecked unchecked;
  return worker().block.warps[current->linear / 32].alive;
}

unsigned char* dynamic_shared_memory() {
  Unchecked unchecked;
  std::vector<unsigned char>& shared = worker().shared;
  return shared.empty() ? nullptr : shared.data();
}

void trap(Site site) {
  std::string kernel;
  {
    Unchecked unchecked;
    kernel = worker().block.job->kernel;
  }
  throw KernelError("__trap() at " + where(site) + " in kernel " + kernel);
}

void check_pointer_argument(const char* kernel, std::size_t index, const void* p,
                            std::ptrdiff_t nth_in_struct) {
  std::string why = launch_pointer_problem(p);
  if (why.empty()) return;
  std::string which = "argument " + std::to_string(index);
  if (nth_in_struct < 0)
    which = "pointer " + which;
  else
    which += ", its pointer " + std::to_string(nth_in_struct) + " (counted from 0 in field order)";
  throw KernelError(std::string("kernel ") + kernel + ": " + which + ": " + why);
}

void run_grid(const char* kernel, dim3 grid, dim3 block, std::size_t shared_bytes,
              const KernelBody& body) {
  if (current)
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
  DeviceAccess kernel_threads;  // device memory is the kernel's while it runs
  Job job{kernel,
          grid,
          block,
          static_cast<unsigned>(nthreads),
          uint64_t(grid.x) * grid.y * grid.z,
          &body,
          shared_bytes};
  pool().run(job);
}

}  // namespace simt::detail

// ---- device memory (memory.h) ----
namespace simt {
namespace {
// The live device allocations and registered host ranges, and how many DeviceAccess are open.
// Under AddressSanitizer the device allocations are poisoned while none is.
struct DeviceMemory {
  struct Range {
    std::size_t bytes;
    bool device;  // false: registered host memory, never poisoned
  };
  std::mutex mutex;
  std::map<uintptr_t, Range> live;  // by first address
  int open = 0;

  static void set(uintptr_t p, std::size_t bytes, bool poisoned) {
#if defined(SIMT_ASAN)
    void* a = reinterpret_cast<void*>(p);
    if (poisoned)
      __asan_poison_memory_region(a, bytes);
    else
      __asan_unpoison_memory_region(a, bytes);
#else
    (void)p, (void)bytes, (void)poisoned;
#endif
  }
  void set_all(bool poisoned) {
    for (const auto& [p, r] : live)
      if (r.device) set(p, r.bytes, poisoned);
  }
  // The range holding p (up to one past its end), or live.end().
  std::map<uintptr_t, Range>::const_iterator find(uintptr_t p) const {
    auto it = live.upper_bound(p);
    if (it == live.begin()) return live.end();
    --it;
    return p <= it->first + it->second.bytes ? it : live.end();
  }
  void add(const void* p, std::size_t bytes, bool device, const char* what) {
    std::lock_guard lock(mutex);
    const auto a = reinterpret_cast<uintptr_t>(p);
    if (!live.emplace(a, Range{bytes, device}).second) {
      std::fprintf(stderr, "simt: %s of %p: already device or registered memory\n", what, p);
      std::abort();
    }
    if (device && open == 0) set(a, bytes, true);
  }
  void remove(const void* p, bool device, const char* what) {
    std::lock_guard lock(mutex);
    auto it = live.find(reinterpret_cast<uintptr_t>(p));
    if (it == live.end() || it->second.device != device) {
      std::fprintf(stderr, "simt: %s(%p): not %s\n", what, p,
                   device ? "a device allocation" : "registered host memory");
      std::abort();
    }
    if (device) set(it->first, it->second.bytes, false);
    live.erase(it);
  }
};
DeviceMemory& device_memory() {
  static auto* m = new DeviceMemory;  // never destroyed: buffers may be freed during exit
  return *m;
}
}  // namespace

void* device_malloc(std::size_t bytes) {
  if (bytes == 0) bytes = 1;
  void* p = nullptr;
  // Exact size, so AddressSanitizer's redzone starts at the first byte past the end.
  if (posix_memalign(&p, 256, bytes) != 0) throw std::bad_alloc();
  std::memset(p, kGarbageByte, bytes);
  device_memory().add(p, bytes, true, "device_malloc");
  return p;
}

void device_free(void* p) {
  if (!p) return;
  device_memory().remove(p, true, "device_free");
  std::free(p);
}

// Only AddressSanitizer needs the count; elsewhere a DeviceAccess takes no lock, so it adds no
// synchronisation that ThreadSanitizer would see between host threads.
DeviceAccess::DeviceAccess() {
#if defined(SIMT_ASAN)
  DeviceMemory& m = device_memory();
  std::lock_guard lock(m.mutex);
  if (m.open++ == 0) m.set_all(false);
#endif
}

DeviceAccess::~DeviceAccess() {
#if defined(SIMT_ASAN)
  DeviceMemory& m = device_memory();
  std::lock_guard lock(m.mutex);
  if (--m.open == 0) m.set_all(true);
#endif
}

HostRegistration::HostRegistration(const void* p, std::size_t bytes) : p_(p) {
  if (p) device_memory().add(p, bytes, false, "HostRegistration");
}

HostRegistration::~HostRegistration() {
  if (p_) device_memory().remove(p_, false, "~HostRegistration");
}

std::string launch_pointer_problem(const void* p) {
  if (!p) return "";
  DeviceMemory& m = device_memory();
  std::lock_guard lock(m.mutex);
  if (m.find(reinterpret_cast<uintptr_t>(p)) != m.live.end()) return "";
  return detail::hex(p) +
         " is neither device memory nor host memory registered for the device: a GPU would fault "
         "on it. Accepted: the backend's Memory (simt::device_malloc), dev::Buffer, or host "
         "memory registered with simt::HostRegistration (as cudaHostRegister)";
}

// ---- AccessCounter (simt.h) ----
AccessCounter::AccessCounter() {
  auto& t = detail::access_totals();
  std::lock_guard lock(t.mu);
  if (t.open) throw std::logic_error("simt::AccessCounter: one counts at a time");
  t.open = true;
  t.sites.clear();
  detail::counting_accesses.store(true);
}

AccessCounter::~AccessCounter() {
  auto& t = detail::access_totals();
  std::lock_guard lock(t.mu);
  detail::counting_accesses.store(false);
  t.open = false;
}

std::vector<AccessSite> AccessCounter::sites() const {
  auto& t = detail::access_totals();
  std::lock_guard lock(t.mu);
  std::vector<AccessSite> out;
  for (const auto& [key, site] : t.sites) out.push_back(site);
  return out;
}

void AccessCounter::clear() {
  auto& t = detail::access_totals();
  std::lock_guard lock(t.mu);
  t.sites.clear();
}

// SIMT_ACCESS_REPORT=1 in the environment: one AccessCounter for the whole run, its sites
// printed to stderr at exit (so that any program running simt kernels, the memlayers CLI with
// --backend simt for one, reports them). A program that makes its own AccessCounter must run
// without it.
namespace {

// `where` from the repository's folders on (kernels/, tests/...), as the build gave the path.
std::string short_where(const std::string& where) {
  for (const char* top : {"/kernels/", "/tests/", "/simt/", "/harness/", "/tools/"})
    if (const auto at = where.rfind(top); at != std::string::npos) return where.substr(at + 1);
  return where;
}

void print_access_report() {
  auto& t = detail::access_totals();
  std::lock_guard lock(t.mu);
  std::fprintf(stderr,
               "simt access report (SIMT_ACCESS_REPORT): warp-wide requests of the cache-hinted "
               "global loads and stores and cp.async copies (simt.h, AccessCounter)\n"
               "%-44s %-5s %-52s %10s %16s %6s\n",
               "kernel", "op", "where", "requests", "sectors/request", "used");
  for (const auto& [key, s] : t.sites)
    std::fprintf(stderr, "%-44s %-5s %-52s %10llu %16.2f %5.1f%%\n", s.kernel.c_str(),
                 s.store ? "store" : "load", short_where(s.where).c_str(),
                 static_cast<unsigned long long>(s.requests), s.sectors_per_request(),
                 100.0 * s.efficiency());
}

// The totals first, then the counter, then the printing: at exit they go in the reverse order,
// the report printed while the counter and the totals live, the counter closed before the totals
// go.
const bool access_report_asked = [] {
  const char* env = std::getenv("SIMT_ACCESS_REPORT");
  if (!env || std::string(env) != "1") return false;
  detail::access_totals();
  static AccessCounter counter;
  std::atexit(print_access_report);
  return true;
}();

}  // namespace

}  // namespace simt
