// What the walk (walk.hpp) takes from the machine and the environment, and
// the record of the schedule each call took.
#include "walk.hpp"

#include <algorithm>
#include <cstdint>
#include <cstdlib>

namespace groupnorm {
namespace detail {

namespace {
// Outputs of at least this many bytes are written with non-temporal stores
// (GROUPNORM_STREAM_BYTES overrides it).
std::int64_t stream_threshold() {
  static const std::int64_t v = [] {
    const char* s = std::getenv("GROUPNORM_STREAM_BYTES");
    return s && *s ? std::atoll(s) : (std::int64_t)16 << 20;
  }();
  return v;
}

thread_local ScheduleInfo t_last_schedule;
}  // namespace

Plan plan_call(const Problem& p, int threads, Direction d, bool one_phase) {
  const int streams = d == Direction::forward ? 1 : 2;
  return make_plan(p, threads, streams, &cache_budget, stream_threshold(), one_phase);
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
