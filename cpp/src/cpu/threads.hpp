// Internal: running work on the caller's engine, OpenMP, or the calling thread.
#pragma once

#include <cstdint>

#include "groupnorm/groupnorm.hpp"

namespace groupnorm {
namespace detail {

// Threads to use for a call: e.num_threads, else the global setting.
int resolve_threads(const Exec& e);

// A borrowed reference to any callable taking a worker index: unlike
// std::function it never allocates (the callable must outlive the call).
class WorkerFn {
 public:
  template <class F>
  WorkerFn(const F& f) : obj_(&f), call_([](const void* o, int w) { (*static_cast<const F*>(o))(w); }) {}
  void operator()(int w) const { call_(obj_, w); }

 private:
  const void* obj_;
  void (*call_)(const void*, int);
};

// Runs fn(w) for every worker w in [0, workers). One worker runs inline.
// With OpenMP, worker w is always thread w of the region, so a worker's data
// stays in its core's cache from one phase to the next.
void run_workers(const Exec& e, int workers, WorkerFn fn);

// Per-thread cache budget in bytes for a call on `threads` threads
// (GROUPNORM_CACHE_BYTES overrides it). Affects speed only, never results.
std::int64_t cache_budget(int threads);

}  // namespace detail
}  // namespace groupnorm
