// What the walk (walk.hpp) takes from the machine and the environment, and
// the record of the schedule each call took.
#include "walk.hpp"

#include <algorithm>
#include <cstdint>
#include <cstdlib>

namespace groupnorm {
namespace detail {

namespace {
// The shared cache the plan reckons with: the L3 found, or 8 L2s where none was.
std::int64_t shared_cache_bytes(const CacheSizes& c) { return c.l3 > 0 ? c.l3 : 8 * c.l2; }

// GROUPNORM_STREAM_BYTES: outputs of at least this many bytes are written with
// non-temporal stores (0: not set, the rule below decides).
std::int64_t forced_stream_bytes() {
  static const std::int64_t v = [] {
    const char* s = std::getenv("GROUPNORM_STREAM_BYTES");
    return s && *s ? std::max<std::int64_t>(1, std::atoll(s)) : (std::int64_t)0;
  }();
  return v;
}

// The output size from which a call writes with non-temporal stores, from the
// caches found (bench/results/schedules.md has the A/B behind it):
//   forward: an output of half the L3 or more. Below that y stays in the L3,
//     where the next reader finds it, and ordinary stores measured faster (a
//     2-thread forward of a 10 MB tensor was 1.7x slower streaming: two
//     threads' stores to DRAM share less bandwidth than the L3 gives).
//   backward: x, grad_y and grad_x together beyond the threads' L2s: dx's
//     lines were read for ownership only to be evicted before reuse, and
//     streaming them measured 10-50% faster from 2.6 MB to 10 MB tensors, on
//     1 and 2 threads. A dx-only call (given sums: no pass before it brought
//     the lines in) follows the forward's rule: below it, streaming measured
//     1.7x slower on 2 threads.
std::int64_t stream_threshold(Direction d, int threads, bool one_phase) {
  if (forced_stream_bytes() > 0) return forced_stream_bytes();
  const CacheSizes& c = cache_info();
  const std::int64_t l3 = shared_cache_bytes(c);
  if (d == Direction::forward || one_phase) return std::max<std::int64_t>(l3 / 2, c.l2);
  return std::max<std::int64_t>(1, (std::int64_t)std::max(threads, 1) * c.l2 / 3);
}

thread_local ScheduleInfo t_last_schedule;
}  // namespace

Plan plan_call(const Problem& p, int threads, Direction d, bool one_phase) {
  const int streams = d == Direction::forward ? 1 : 2;
  Plan pl = make_plan(p, threads, streams, &cache_budget, stream_threshold(d, threads, one_phase), one_phase);
  // Channels-last sums walk four strided rows at once, which the hardware
  // prefetchers follow poorly from DRAM: there, requesting the rows ahead
  // measured up to 1.7x faster. Inputs that stay in the L3 between calls come
  // back fast on their own, and the extra requests measured up to 1.4x slower
  // (bench/results/schedules.md). So: when the inputs the sums read (x; x and
  // grad_y) exceed half the L3, which neighbours share; and in a forward
  // whose sets (whole samples) span several L2s, where the one call measured
  // 3-8% faster for it (at the edge of this machine's noise).
  const CacheSizes& c = cache_info();
  const std::int64_t input_bytes = p.numel() * (std::int64_t)pl.elem_bytes * streams;
  const bool beyond_l3 = input_bytes > shared_cache_bytes(c) / 2;
  const bool wide_sets = d == Direction::forward && pl.set_bytes > 4 * c.l2;
  pl.prefetch_rows = pl.channels_last && (beyond_l3 || wide_sets);
  return pl;
}

bool pipeline_on() {
  static const bool on = [] {
    const char* s = std::getenv("GROUPNORM_PIPELINE");
    return !(s && *s == '0');
  }();
  return on;
}

void record_schedule(Schedule s, const Plan& pl) {
  t_last_schedule.schedule = s;
  t_last_schedule.threads = pl.threads;
  t_last_schedule.streaming_stores = pl.stream_outputs;
}

bool overlaps(const Problem& p, const void* out, const void* in) {
  if (!out || !in) return false;
  const std::uintptr_t o = reinterpret_cast<std::uintptr_t>(out), i = reinterpret_cast<std::uintptr_t>(in);
  const std::uintptr_t bytes = (std::uintptr_t)p.numel() * dtype_size(p.dtype);
  return o < i + bytes && i < o + bytes;
}

std::size_t workspace_bytes(const Problem& p, int num_threads, Direction d) {
  if (!validate(p) || p.numel() == 0) return 0;
  Exec e;
  e.num_threads = num_threads;
  std::size_t most = 0;
  for (bool one_phase : {false, true})  // the one-call plan, and the split-phase calls' plan
    most = std::max(most, scratch_bytes(plan_call(p, resolve_threads(e), d, one_phase), p.dtype, d));
  return most;
}

}  // namespace detail

std::size_t forward_workspace_bytes(const Problem& p, int num_threads) {
  return detail::workspace_bytes(p, num_threads, detail::Direction::forward);
}
std::size_t backward_workspace_bytes(const Problem& p, int num_threads) {
  return detail::workspace_bytes(p, num_threads, detail::Direction::backward);
}

ScheduleInfo last_schedule() { return detail::t_last_schedule; }

const char* schedule_name(Schedule s) {
  switch (s) {
    case Schedule::none: return "none";
    case Schedule::pipelined: return "pipelined";
    case Schedule::whole_sets: return "whole_sets";
    case Schedule::shared_steps: return "shared_steps";
  }
  return "unknown";
}

}  // namespace groupnorm
