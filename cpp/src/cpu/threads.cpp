#include "threads.hpp"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <thread>
#include <unistd.h>

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

void set_num_threads(int n) { g_threads.store(n > 0 ? n : 0); }

int get_num_threads() {
  const int n = g_threads.load();
  return n > 0 ? n : hardware_threads();
}

namespace detail {

int resolve_threads(const Exec& e) { return e.num_threads > 0 ? e.num_threads : get_num_threads(); }

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
#pragma omp parallel for schedule(static, 1) num_threads(workers)
  for (int w = 0; w < workers; ++w) fn(w);
#else
  for (int w = 0; w < workers; ++w) fn(w);
#endif
}

void run_dynamic(const Exec& e, int workers, std::int64_t items, ItemFn fn) {
  constexpr int kMaxWorkers = 256;  // cursors live on the stack: calls never allocate
  if (workers > items) workers = (int)std::max<std::int64_t>(items, 1);
  if (workers <= 1) {
    for (std::int64_t i = 0; i < items; ++i) fn(0, i);
    return;
  }
  // GROUPNORM_STATIC_SCHEDULE=1: static ranges only (to measure what the
  // dynamic part is worth; results are the same either way)
  static const bool static_only = [] {
    const char* s = std::getenv("GROUPNORM_STATIC_SCHEDULE");
    return s && *s && *s != '0';
  }();
  if (workers > kMaxWorkers || static_only) {  // static ranges
    run_workers(e, workers, [&](int w) {
      for (std::int64_t i = items * w / workers; i < items * (w + 1) / workers; ++i) fn(w, i);
    });
    return;
  }
  struct alignas(64) Range {
    std::atomic<std::int64_t> next;
    std::int64_t end;
  };
  Range ranges[kMaxWorkers];
  for (int w = 0; w < workers; ++w) {
    ranges[w].next.store(items * w / workers, std::memory_order_relaxed);
    ranges[w].end = items * (w + 1) / workers;
  }
  run_workers(e, workers, [&](int w) {
    for (int k = 0; k < workers; ++k) {  // its own range first, then the others'
      Range& r = ranges[(w + k) % workers];
      for (;;) {
        if (r.next.load(std::memory_order_relaxed) >= r.end) break;
        const std::int64_t i = r.next.fetch_add(1, std::memory_order_relaxed);
        if (i >= r.end) break;
        fn(w, i);
      }
    }
  });
}

std::int64_t cache_budget(int threads) {
  static const std::int64_t fixed = [] {
    const char* s = std::getenv("GROUPNORM_CACHE_BYTES");
    return s ? std::atoll(s) : 0LL;
  }();
  if (fixed > 0) return fixed;
  static const std::int64_t l2 = [] {
    long v = 0;
#ifdef _SC_LEVEL2_CACHE_SIZE
    v = sysconf(_SC_LEVEL2_CACHE_SIZE);
#endif
    return v > 0 ? (std::int64_t)v : (std::int64_t)1 << 20;
  }();
  static const std::int64_t l3 = [] {
    long v = 0;
#ifdef _SC_LEVEL3_CACHE_SIZE
    v = sysconf(_SC_LEVEL3_CACHE_SIZE);
#endif
    return v > 0 ? (std::int64_t)v : (std::int64_t)0;
  }();
  const int t = threads > 0 ? threads : 1;
  // most of the private L2, plus a fair share of half the shared L3
  return l2 * 3 / 4 + l3 / (2 * t);
}

}  // namespace detail
}  // namespace groupnorm
