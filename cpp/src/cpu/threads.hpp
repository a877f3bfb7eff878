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

// A borrowed reference to any callable taking (worker, item); never allocates.
class ItemFn {
 public:
  template <class F>
  ItemFn(const F& f)
      : obj_(&f), call_([](const void* o, int w, std::int64_t i) { (*static_cast<const F*>(o))(w, i); }) {}
  void operator()(int w, std::int64_t i) const { call_(obj_, w, i); }

 private:
  const void* obj_;
  void (*call_)(const void*, int, std::int64_t);
};

// Runs fn(w, i) once for every item i in [0, items), on `workers` workers
// (run_workers). Worker w starts with the items a static split would give it
// (items*w/workers up to items*(w+1)/workers), in order, so two phases over
// the same items keep each item on the thread that touched it last; a worker
// that runs out takes the next unclaimed items of the others' ranges. A
// thread the OS deschedules (a busy machine) then delays the call by the item
// it holds, not by its whole share. Which worker runs an item must never
// change a result (items write disjoint outputs). With OpenMP builds and no
// engine parallel-for, the workers are the calling thread and a small pool of
// threads (threads.cpp) that the call waits for only if they took work;
// otherwise the engine's threads or OpenMP's.
// done (optional): called once by every worker that ran, after its last
// item (a pipelined caller finishes the work it held back).
void run_dynamic(const Exec& e, int workers, std::int64_t items, ItemFn fn, const WorkerFn* done = nullptr);

}  // namespace detail
}  // namespace groupnorm
