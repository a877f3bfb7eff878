#include "threads.hpp"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <pthread.h>
#include <vector>
#include <cstdlib>
#include <thread>

#if defined(GROUPNORM_USE_OPENMP)
#include <omp.h>
#endif

namespace groupnorm {
namespace {

int hardware_threads() {
#if defined(GROUPNORM_USE_OPENMP)
  return omp_get_max_threads();
#else
  const unsigned n = std::thread::hardware_concurrency();
  return n > 0 ? (int)n : 1;
#endif
}

std::atomic<int> g_threads{0};

}  // namespace

int max_threads() {
  static const int cap = [] {
    const unsigned hw = std::thread::hardware_concurrency();
    const long n = hw > 0 ? (long)hw : 1L;
    return (int)std::min<long>(4 * n, 1L << 16);
  }();
  return cap;
}

void set_num_threads(int n) { g_threads.store(n > 0 ? std::min(n, max_threads()) : 0); }

int get_num_threads() {
  const int n = g_threads.load();
  return n > 0 ? n : std::max(1, std::min(hardware_threads(), max_threads()));
}

namespace {
// Whether run_dynamic may use the worker pool (GROUPNORM_WORKER_POOL=0 turns
// it off at start). Off, parallel work runs in OpenMP regions: the choice
// inside a PyTorch process, whose OpenMP runtime is the one we link, so both
// libraries share one set of threads instead of two sets taking turns.
std::atomic<bool> g_worker_pool{[] {
  const char* s = std::getenv("GROUPNORM_WORKER_POOL");
  return !(s && *s == '0');
}()};
}  // namespace

void set_worker_pool(bool on) { g_worker_pool.store(on); }
bool worker_pool() { return g_worker_pool.load(); }

namespace {
// GNU libgomp is not fork-safe: in a child forked after the parent ran an
// OpenMP region, the child's first region waits forever for threads that do
// not exist there. Such a child never enters a region: OpenMP-mode calls run
// on the calling thread (as PyTorch does after fork); the worker pool, which
// starts afresh in a child, and an engine's parallel-for are unaffected.
std::atomic<bool> g_openmp_used{false};
std::atomic<bool> g_openmp_unusable{false};
void after_fork_in_child() {
  if (g_openmp_used.load(std::memory_order_relaxed)) g_openmp_unusable.store(true, std::memory_order_relaxed);
}
[[maybe_unused]] const bool g_fork_handler_registered = (pthread_atfork(nullptr, nullptr, after_fork_in_child), true);
}  // namespace

bool openmp_unusable_after_fork() { return g_openmp_unusable.load(std::memory_order_relaxed); }

namespace detail {

int resolve_threads(const Exec& e) {
  const int n = e.num_threads > 0 ? std::min(e.num_threads, max_threads()) : get_num_threads();
  // a forked child whose only parallel path would be OpenMP runs serially
  if (!e.parallel_for && !worker_pool() && openmp_unusable_after_fork()) return 1;
  return n;
}

namespace {
struct EngineTask {
  const WorkerFn* fn;
  static void call(void* ctx, std::int64_t i) { (*static_cast<EngineTask*>(ctx)->fn)((int)i); }
};
}  // namespace

void run_workers(const Exec& e, int workers, WorkerFn fn) {
  if (workers <= 1) {
    fn(0);
    return;
  }
  if (e.parallel_for) {
    EngineTask task{&fn};
    e.parallel_for(e.parallel_ctx, workers, &EngineTask::call, &task);
    return;
  }
#if defined(GROUPNORM_USE_OPENMP)
  if (openmp_unusable_after_fork()) {  // see after_fork_in_child: every worker's share, in turn
    for (int w = 0; w < workers; ++w) fn(w);
    return;
  }
  g_openmp_used.store(true, std::memory_order_relaxed);
#pragma omp parallel for schedule(static, 1) num_threads(workers)
  for (int w = 0; w < workers; ++w) fn(w);
#else
  for (int w = 0; w < workers; ++w) fn(w);
#endif
}

namespace {

// The items of one run_dynamic call: worker w's share first, then the others'.
struct Range {
  alignas(64) std::atomic<std::int64_t> next;
  std::int64_t end;
};
struct DynamicJob {
  int workers;
  Range* ranges;
  const ItemFn* fn;
  const WorkerFn* done;
  void work(int w) const {
    for (int k = 0; k < workers; ++k) {  // its own range first, then the others'
      Range& r = ranges[(w + k) % workers];
      for (;;) {
        if (r.next.load(std::memory_order_relaxed) >= r.end) break;
        const std::int64_t i = r.next.fetch_add(1, std::memory_order_relaxed);
        if (i >= r.end) break;
        (*fn)(w, i);
      }
    }
    if (done) (*done)(w);
  }
};

#if defined(GROUPNORM_USE_OPENMP)
// Threads for run_dynamic that the caller does not wait for unless they took
// work. An OpenMP region ends at a barrier every thread must reach: on a busy
// machine a thread the OS has not scheduled yet holds up the whole call even
// when the others did all the work (bench/contention.py measures it). Here
// the calling thread works as worker 0; pool thread k joins as worker k + 1 if it wakes while the job
// is open, and the caller, once no item is left to claim, closes the job and
// waits only for the workers that joined (each finishing its current item).
class Pool {
 public:
  static Pool& get() {
    static bool registered = (pthread_atfork(nullptr, nullptr, [] { g_pool = nullptr; }), true);
    (void)registered;
    Pool* p = g_pool.load(std::memory_order_acquire);
    if (!p) {  // first use, or a forked child (whose threads are gone): a new pool
      Pool* fresh = new Pool();  // never freed: threads may outlive static destructors
      if (g_pool.compare_exchange_strong(p, fresh)) p = fresh;
      else delete fresh;
    }
    return *p;
  }

  // Runs the job on the calling thread and up to job.workers - 1 pool threads;
  // false (nothing run) when another call holds the pool.
  bool run(const DynamicJob& job) {
    std::unique_lock<std::mutex> master(master_mu_, std::try_to_lock);
    if (!master.owns_lock()) return false;
    try {
      while ((int)threads_.size() < job.workers - 1) {
        const int id = (int)threads_.size() + 1;
        threads_.emplace_back([this, id] { loop(id); });
        threads_.back().detach();
      }
    } catch (...) {  // no more threads: the workers there are take every item
    }
    job_.store(&job, std::memory_order_seq_cst);
    open_.store(true, std::memory_order_seq_cst);
    epoch_.fetch_add(1, std::memory_order_seq_cst);
    { std::lock_guard<std::mutex> lock(mu_); }
    cv_.notify_all();
    job.work(0);
    open_.store(false, std::memory_order_seq_cst);
    for (int spins = 0; active_.load(std::memory_order_seq_cst) != 0; ++spins) {
      if (spins > 1000) std::this_thread::yield();
    }
    return true;
  }

 private:
  void loop(int id) {
    std::uint64_t seen = 0;
    for (;;) {
      // a short spin catches the next phase of the same call; then sleep
      for (int spins = 0; spins < 2000 && epoch_.load(std::memory_order_acquire) == seen; ++spins) {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
      }
      if (epoch_.load(std::memory_order_acquire) == seen) {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return epoch_.load(std::memory_order_acquire) != seen; });
      }
      seen = epoch_.load(std::memory_order_seq_cst);
      // join: count in first, then check the job is still the open one, so the
      // caller (which closes first, then waits for the count) never returns
      // while this thread may still read the job
      active_.fetch_add(1, std::memory_order_seq_cst);
      if (open_.load(std::memory_order_seq_cst) && epoch_.load(std::memory_order_seq_cst) == seen) {
        const DynamicJob* job = job_.load(std::memory_order_seq_cst);
        if (id < job->workers) job->work(id);
      }
      active_.fetch_sub(1, std::memory_order_seq_cst);
    }
  }

  static std::atomic<Pool*> g_pool;
  std::mutex master_mu_;  // one job at a time
  std::mutex mu_;
  std::condition_variable cv_;
  std::atomic<std::uint64_t> epoch_{0};
  std::atomic<const DynamicJob*> job_{nullptr};
  std::atomic<bool> open_{false};
  std::atomic<int> active_{0};
  std::vector<std::thread> threads_;
};
std::atomic<Pool*> Pool::g_pool{nullptr};
#endif

}  // namespace


void run_dynamic(const Exec& e, int workers, std::int64_t items, ItemFn fn, const WorkerFn* done) {
  constexpr int kMaxWorkers = 256;  // cursors live on the stack: calls never allocate
  if (workers > items) workers = (int)std::max<std::int64_t>(items, 1);
  if (workers <= 1) {
    for (std::int64_t i = 0; i < items; ++i) fn(0, i);
    if (done) (*done)(0);
    return;
  }
  // GROUPNORM_STATIC_SCHEDULE=1: static ranges on OpenMP's threads, the
  // schedule before run_dynamic (to measure what it is worth; results are the
  // same either way)
  static const bool static_only = [] {
    const char* s = std::getenv("GROUPNORM_STATIC_SCHEDULE");
    return s && *s && *s != '0';
  }();
  if (workers > kMaxWorkers || static_only) {  // static ranges
    run_workers(e, workers, [&](int w) {
      for (std::int64_t i = items * w / workers; i < items * (w + 1) / workers; ++i) fn(w, i);
      if (done) (*done)(w);
    });
    return;
  }
  Range ranges[kMaxWorkers];
  for (int w = 0; w < workers; ++w) {
    ranges[w].next.store(items * w / workers, std::memory_order_relaxed);
    ranges[w].end = items * (w + 1) / workers;
  }
  const DynamicJob job{workers, ranges, &fn, done};
#if defined(GROUPNORM_USE_OPENMP)
  if (!e.parallel_for && worker_pool() && Pool::get().run(job)) return;
#endif
  // the engine's threads, or OpenMP's when another call holds the pool
  run_workers(e, workers, [&](int w) { job.work(w); });
}

}  // namespace detail
}  // namespace groupnorm
