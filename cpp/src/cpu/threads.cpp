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

namespace detail {

int resolve_threads(const Exec& e) {
  return e.num_threads > 0 ? std::min(e.num_threads, max_threads()) : get_num_threads();
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
#pragma omp parallel for schedule(static, 1) num_threads(workers)
  for (int w = 0; w < workers; ++w) fn(w);
#else
  for (int w = 0; w < workers; ++w) fn(w);
#endif
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
  return l2 * 3 / 4 + l3 / 2 / t;
}

}  // namespace detail
}  // namespace groupnorm
