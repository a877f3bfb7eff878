// Internal: the one walk of every CPU call over the sets and tiles of its plan
// (plan.hpp). The forward and the backward are passes that supply the walk's
// hooks; a call runs some or all of the phases:
//   sums    per tile (forward: partial moments; backward: per-channel sums of
//           dz and dz * (x - mean)), merged in tile order
//   finish  per group, from its merged sums (forward: mean, rstd and the
//           apply's coefficients, or the moments written out; backward: dx's
//           coefficients)
//   apply   per tile, elementwise (forward: y; backward: dx)
//   fused   a tile's apply and another tile's sums in one walk (pipelined)
// The walk decides which thread runs which tile and when; it never changes
// the order in which a group's sums merge, so results are bitwise the same
// for every schedule. Schedules (plan.hpp): pipelined, whole sets, shared steps.
//
// A pass has:
//   bool run_sums, run_finish, run_apply   the phases this call runs
//   bool fusable               whether its apply may run fused with sums
//   Moments* set_totals(w)     worker w's running totals of a set's groups (backward: null)
//   Moments* step_totals()     the running totals of a step's groups (backward: null)
//   std::int64_t* held_set     per worker: the set a pipelined worker holds back, or -1
//   void sum(tile, w, totals)              sums of a tile, totals at its first group
//   void fused(held_tile, tile, w, totals) apply(held_tile) and sum(tile) in one walk
//   void finish(group, total)              total: the group's merged moments (backward: null)
//   void apply(tile, w)
//   void sum_to_slot(tile, w, slot)        shared steps: sums of a tile into round slot `slot`
//   void merge_slot(tile, slot, totals)    shared steps: slot `slot` into the totals, in tile order
#pragma once

#include <cstdint>
#include <new>

#include "groupnorm/groupnorm.hpp"
#include "cache.hpp"
#include "kernels.hpp"
#include "plan.hpp"
#include "scratch.hpp"
#include "threads.hpp"

namespace groupnorm {
namespace detail {

const IsaKernels& active_kernels();  // dispatch.cpp

// The plan of a call on this machine: its cache sizes and the GROUPNORM_CACHE_BYTES
// and GROUPNORM_STREAM_BYTES overrides (walk.cpp).
Plan plan_call(const Problem& p, int threads, Direction d, bool one_phase);
// GROUPNORM_PIPELINE=0 turns the pipelined schedule off (to measure what it is
// worth; results are the same either way, tests/test_determinism.py checks it).
bool pipeline_on();
// Records the schedule a call took, for last_schedule() (walk.cpp).
void record_schedule(Schedule s, const Plan& pl);
// Whether an output shares memory with an input (out = x): such an output is
// written without non-temporal stores, since each line was just read and sits
// in cache, where a streaming store would first evict it.
bool overlaps(const Problem& p, const void* out, const void* in);

// The scratch a call of this direction needs at most (workspace_bytes()).
std::size_t workspace_bytes(const Problem& p, int num_threads, Direction d);

// fn(A()) with the accumulation type A of this dtype: double for float64
// data, float otherwise; an allocation that fails is a status.
template <class F> Result with_accumulator(DType dtype, F fn) {
  try {
    return dtype == DType::float64 ? fn(double()) : fn(float());
  } catch (const std::bad_alloc&) {
    return {Status::out_of_memory, "out of memory"};
  }
}

inline const char* offset_ptr(const void* p, std::int64_t elems, std::size_t elem_bytes) {
  return p ? static_cast<const char*>(p) + elems * (std::int64_t)elem_bytes : nullptr;
}
inline char* offset_ptr(void* p, std::int64_t elems, std::size_t elem_bytes) {
  return p ? static_cast<char*>(p) + elems * (std::int64_t)elem_bytes : nullptr;
}

// What every tile of a call shares: shape, per-channel arrays, the worker's
// scratch and the input x (the passes add their own pointers).
template <class A>
Tile base_tile(const Problem& p, const Plan& pl, const TileRef& r, const Scratch<A>& s, const void* x, int worker) {
  Tile t;
  t.rows = r.rows; t.cols = r.cols; t.stride = r.stride;
  t.group_width = pl.group_channels;
  t.channels_last = pl.channels_last;
  t.stream = pl.stream_outputs;
  t.silu = p.activation == Activation::silu;
  t.prefetch_rows = pl.prefetch_rows;
  t.x = offset_ptr(x, r.offset, pl.elem_bytes);
  t.mean = s.chan_mean + r.chan0;
  t.scale = s.chan_scale + r.chan0;
  t.shift = s.chan_shift + r.chan0;
  if (s.chan_dx_xc) { t.dx_xc = s.chan_dx_xc + r.chan0; t.dx_shift = s.chan_dx_shift + r.chan0; }
  if (s.skip_bias) t.skip_bias = s.skip_bias + r.chan0 % pl.C;
  t.scratch = s.kernel_scratch + (std::int64_t)worker * worker_scratch(pl.C);
  return t;
}

template <class Pass> class Walk {
 public:
  Walk(const Plan& pl, const Exec& e, const Pass& pass) : pl_(pl), e_(e), pass_(pass) {}

  void run() const {
    if (pl_.whole_sets && pipelined()) {
      for (int w = 0; w < pl_.threads; ++w) pass_.held_set[w] = -1;
      const auto release = [&](int w) { release_held(w); };
      const WorkerFn done(release);
      run_dynamic(e_, pl_.threads, pl_.num_sets, [&](int w, std::int64_t set) { pipelined_set(set, w); }, &done);
      record_schedule(Schedule::pipelined, pl_);
    } else if (pl_.whole_sets) {
      run_dynamic(e_, pl_.threads, pl_.num_sets, [&](int w, std::int64_t set) { whole_set(set, w); });
      record_schedule(Schedule::whole_sets, pl_);
    } else {
      for (std::int64_t s0 = 0; s0 < pl_.num_sets; s0 += pl_.sets_per_step)
        shared_step(s0, std::min(pl_.num_sets, s0 + pl_.sets_per_step));
      record_schedule(Schedule::shared_steps, pl_);
    }
  }

 private:
  static Moments* at(Moments* totals, std::int64_t i) { return totals ? totals + i : nullptr; }
  static void clear(Moments* totals, std::int64_t n) {
    for (std::int64_t i = 0; totals && i < n; ++i) totals[i] = Moments();
  }
  std::int64_t first_group(std::int64_t set) const { return tile_of(pl_, set, 0).group0; }

  // Channels-first sets small enough that the held set stays in the private
  // cache while the next one streams in (bigger ones measured slower
  // pipelined: bench/results).
  bool pipelined() const {
    return !pl_.channels_last && pass_.run_sums && pass_.run_apply && pass_.fusable && pipeline_on() &&
           4 * pl_.set_bytes <= private_cache_bytes();
  }

  // Whole sets: a set is walked a unit at a time, its sums, finish, then its
  // apply last tiles first (the ones still in cache). Channels-first a unit is
  // a group; channels-last the whole set, applied in full rows (apply_rows).
  void whole_set(std::int64_t set, int w) const {
    Moments* totals = pass_.set_totals(w);
    const std::int64_t group0 = first_group(set);
    const bool channels_last = pl_.channels_last;
    const std::int64_t units = channels_last ? 1 : pl_.groups_per_set;
    const std::int64_t unit_groups = channels_last ? pl_.groups_per_set : 1;
    const std::int64_t unit_tiles = channels_last ? pl_.tiles_per_set : pl_.tiles_per_group;
    for (std::int64_t u = 0; u < units; ++u) {
      const std::int64_t g0 = u * unit_groups, t0 = u * unit_tiles;
      if (pass_.run_sums) {
        clear(at(totals, g0), unit_groups);
        for (std::int64_t t = t0; t < t0 + unit_tiles; ++t) {
          const TileRef r = tile_of(pl_, set, t);
          pass_.sum(r, w, at(totals, r.group0 - group0));
        }
      }
      if (pass_.run_finish)
        for (std::int64_t gi = g0; gi < g0 + unit_groups; ++gi) pass_.finish(group0 + gi, at(totals, gi));
      if (!pass_.run_apply) continue;
      // after the sums, last tiles first (the ones still in cache); an apply
      // alone finds nothing in cache and walks front to back
      const std::int64_t n = channels_last ? pl_.row_tiles : unit_tiles;
      for (std::int64_t k = 0; k < n; ++k) {
        const std::int64_t i = pass_.run_sums ? n - 1 - k : k;
        pass_.apply(channels_last ? apply_rows(pl_, set, i) : tile_of(pl_, set, t0 + i), w);
      }
    }
  }

  // Pipelined (channels-first whole sets): a worker holds back the apply of
  // its last set and runs it, tile by tile, in one walk with the sums of its
  // next set, so memory streams the next set in while the held one is
  // normalized from cache. Every set has the same tile geometry.
  void pipelined_set(std::int64_t set, int w) const {
    const std::int64_t held = pass_.held_set[w];
    Moments* totals = pass_.set_totals(w);
    const std::int64_t group0 = first_group(set);
    for (std::int64_t gi = 0; gi < pl_.groups_per_set; ++gi) {
      clear(at(totals, gi), 1);
      for (std::int64_t t = gi * pl_.tiles_per_group; t < (gi + 1) * pl_.tiles_per_group; ++t) {
        const TileRef r = tile_of(pl_, set, t);
        if (held >= 0) pass_.fused(tile_of(pl_, held, t), r, w, at(totals, gi));
        else pass_.sum(r, w, at(totals, gi));
      }
      pass_.finish(group0 + gi, at(totals, gi));
    }
    pass_.held_set[w] = set;
  }
  // After a worker's last set: the apply it still holds.
  void release_held(int w) const {
    const std::int64_t held = pass_.held_set[w];
    if (held < 0) return;
    for (std::int64_t t = pl_.tiles_per_set; t-- > 0;) pass_.apply(tile_of(pl_, held, t), w);
    pass_.held_set[w] = -1;
  }

  // Shared steps: the tiles of sets [s0, s1) spread over all threads, phase
  // by phase. The sums go a round of tiles at a time into slots, which merge
  // into the step's running totals in tile order.
  void shared_step(std::int64_t s0, std::int64_t s1) const {
    const int T = pl_.threads;
    const std::int64_t tps = pl_.tiles_per_set;
    const std::int64_t ntiles = (s1 - s0) * tps;
    Moments* totals = pass_.step_totals();
    clear(totals, (s1 - s0) * pl_.groups_per_set);
    for (std::int64_t round0 = 0; pass_.run_sums && round0 < ntiles; round0 += pl_.tiles_per_round) {
      const std::int64_t n = std::min(pl_.tiles_per_round, ntiles - round0);
      run_dynamic(e_, T, n, [&](int w, std::int64_t j) {
        const std::int64_t i = round0 + j;
        pass_.sum_to_slot(tile_of(pl_, s0 + i / tps, i % tps), w, j);
      });
      for (std::int64_t i = round0; i < round0 + n; ++i) {  // tile order = merge order
        const std::int64_t set = s0 + i / tps;
        const TileRef r = tile_of(pl_, set, i % tps);
        pass_.merge_slot(r, i - round0, at(totals, (set - s0) * pl_.groups_per_set + (r.group0 - first_group(set))));
      }
    }
    for (std::int64_t set = s0; pass_.run_finish && set < s1; ++set) {
      const std::int64_t group0 = first_group(set);
      for (std::int64_t gi = 0; gi < pl_.groups_per_set; ++gi)
        pass_.finish(group0 + gi, at(totals, (set - s0) * pl_.groups_per_set + gi));
    }
    if (pass_.run_apply)
      run_dynamic(e_, T, ntiles, [&](int w, std::int64_t i) { pass_.apply(tile_of(pl_, s0 + i / tps, i % tps), w); });
  }

  const Plan& pl_;
  const Exec& e_;
  const Pass& pass_;
};

template <class Pass> void walk(const Plan& pl, const Exec& e, const Pass& pass) { Walk<Pass>(pl, e, pass).run(); }

}  // namespace detail
}  // namespace groupnorm
