// parallel_for over a persistent pool of std::threads, for the CPU variants. Plain threads, not
// OpenMP: libgomp's barriers are invisible to ThreadSanitizer, which then reports false races.
//
// One parallel_for runs at a time; a call made while another is running (from another thread or
// from inside a chunk) runs serially on its caller instead of waiting, so nesting cannot deadlock.
// The pool has MEMLAYERS_THREADS threads in all (caller included), default: hardware threads.
// Between jobs its threads spin MEMLAYERS_SPIN_US microseconds (default 100) before they sleep.
#pragma once
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

namespace memlayers {

namespace parallel_detail {

struct Job {
  void (*call)(void* ctx, int64_t begin, int64_t end);
  void* ctx;
  int64_t n, grain;
  std::atomic<int64_t> next{0};
  std::mutex error_mu;
  std::exception_ptr error;

  // Chunks are claimed one by one, so a slow chunk does not hold up the others.
  void work() {
    for (int64_t b; (b = next.fetch_add(grain, std::memory_order_relaxed)) < n;) {
      try {
        call(ctx, b, std::min(b + grain, n));
      } catch (...) {
        std::lock_guard lock(error_mu);
        if (!error) error = std::current_exception();
        next.store(n, std::memory_order_relaxed);
      }
    }
  }
};

inline thread_local bool in_pool_thread = false;

// The integer in environment variable `name` when it is set and at least `least`, else `fallback`.
inline int env_int(const char* name, int least, int fallback) {
  if (const char* env = std::getenv(name)) {
    const int v = std::atoi(env);
    if (v >= least) return v;
  }
  return fallback;
}

// How long an idle thread spins before it sleeps: MEMLAYERS_SPIN_US microseconds (default 100;
// 0 sleeps at once).
inline std::chrono::microseconds configured_spin() {
  return std::chrono::microseconds(env_int("MEMLAYERS_SPIN_US", 0, 100));
}

// Polls `done` until it holds or `spin` has passed; true when it holds.
template <class Done>
bool spin_until(std::chrono::microseconds spin, Done&& done) {
  if (spin.count() == 0) return done();
  const auto until = std::chrono::steady_clock::now() + spin;
  for (int i = 1;; ++i) {
    if (done()) return true;
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
    if (i % 64 == 0 && std::chrono::steady_clock::now() >= until) return done();
  }
}

// Workers wait for jobs, and the caller for the workers, by spinning a short while and then
// sleeping on a condition variable. The spin is for the many short parallel_for calls in a row of
// a training step: a sleeping worker costs a futex wake-up, and on a VM an idle core's wake-up
// too, tens of µs each time. 1500 steps of the cpu harness's dense model took 8.7-9.6 s without
// the spin and 6.4-6.8 s with it (2-core Xeon VM).
class Pool {
 public:
  explicit Pool(int threads, std::chrono::microseconds spin) : spin_(spin) {
    for (int i = 1; i < threads; ++i) workers_.emplace_back([this] { loop(); });
  }
  ~Pool() {
    {
      std::lock_guard lock(mu_);
      stop_ = true;
    }
    wake_.notify_all();
    for (auto& t : workers_) t.join();
  }
  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;

  int size() const { return static_cast<int>(workers_.size()) + 1; }

  // Runs the job on the workers and the caller; false when the pool is busy (caller runs it).
  bool run(Job& job) {
    std::unique_lock call(call_mu_, std::try_to_lock);
    if (!call.owns_lock() || in_pool_thread) return false;
    {
      std::lock_guard lock(mu_);
      job_ = &job;
      generation_.fetch_add(1, std::memory_order_release);
    }
    wake_.notify_all();
    in_pool_thread = true;
    job.work();
    in_pool_thread = false;
    std::unique_lock lock(mu_);
    job_ = nullptr;  // a worker that has not joined yet finds no job and goes back to waiting
    if (running_.load(std::memory_order_acquire) != 0) {
      lock.unlock();
      spin_until(spin_, [&] { return running_.load(std::memory_order_acquire) == 0; });
      lock.lock();
      done_.wait(lock, [&] { return running_.load(std::memory_order_acquire) == 0; });
    }
    return true;
  }

 private:
  void loop() {
    in_pool_thread = true;
    uint64_t seen = 0;
    for (;;) {
      spin_until(spin_, [&] {
        return stop_.load(std::memory_order_acquire) ||
               generation_.load(std::memory_order_acquire) != seen;
      });
      std::unique_lock lock(mu_);
      wake_.wait(lock, [&] { return stop_.load() || generation_.load() != seen; });
      if (stop_) return;
      seen = generation_.load();
      Job* job = job_;
      if (!job) continue;  // woke after the caller finished that job
      running_.fetch_add(1, std::memory_order_relaxed);
      lock.unlock();
      job->work();
      lock.lock();
      if (running_.fetch_sub(1, std::memory_order_acq_rel) == 1) done_.notify_all();
    }
  }

  const std::chrono::microseconds spin_;
  std::vector<std::thread> workers_;
  std::mutex call_mu_;
  std::mutex mu_;  // guards job_; generation_, running_ and stop_ change only under it
  std::condition_variable wake_, done_;
  Job* job_ = nullptr;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> running_{0};
  std::atomic<bool> stop_{false};
};

// Threads of the pool, caller included: MEMLAYERS_THREADS (default: hardware threads).
inline int configured_threads() {
  return env_int("MEMLAYERS_THREADS", 1,
                 static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
}

inline Pool& pool() {
  static Pool p(configured_threads(), configured_spin());
  return p;
}

}  // namespace parallel_detail

// Threads parallel_for uses (caller included).
inline int num_threads() { return parallel_detail::pool().size(); }

// Calls fn(begin, end) over [0, n) in chunks of `grain` items (the last may be shorter), spread
// over the pool. Which thread runs a chunk is unspecified: results must not depend on it. The
// first exception a chunk throws is rethrown here after every running chunk finished.
template <class F>
void parallel_for(int64_t n, int64_t grain, F&& fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(grain, 1);
  if (n <= grain || parallel_detail::in_pool_thread) {
    for (int64_t b = 0; b < n; b += grain) fn(b, std::min(b + grain, n));
    return;
  }
  parallel_detail::Job job;
  job.call = [](void* ctx, int64_t b, int64_t e) {
    (*static_cast<std::remove_reference_t<F>*>(ctx))(b, e);
  };
  job.ctx = const_cast<void*>(static_cast<const void*>(&fn));
  job.n = n;
  job.grain = grain;
  if (!parallel_detail::pool().run(job)) job.work();
  if (job.error) std::rethrow_exception(job.error);
}

// A grain that gives each thread several chunks (for balance) but keeps chunks at least
// `min_grain`.
inline int64_t balanced_grain(int64_t n, int64_t min_grain = 1, int chunks_per_thread = 4) {
  int64_t chunks = int64_t{num_threads()} * chunks_per_thread;
  return std::max<int64_t>(min_grain, (n + chunks - 1) / chunks);
}

// fn(r) for every row r in [0, rows), threaded; `row_cost` (the elements a row touches) sizes
// the chunks so each holds at least ~4096 elements of work.
template <class F>
void parallel_rows(int64_t rows, int64_t row_cost, F&& fn) {
  const int64_t min_rows = std::max<int64_t>(1, 4096 / std::max<int64_t>(row_cost, 1));
  parallel_for(rows, balanced_grain(rows, min_rows), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) fn(r);
  });
}

}  // namespace memlayers
