// Internal: a call's scratch memory, O(N*C + threads), never O(x): carved from
// the caller's workspace (Exec::workspace) or from one allocation per call.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <memory>
#include <new>
#include <string>

#include "groupnorm/groupnorm.hpp"
#include "kernels.hpp"
#include "plan.hpp"

namespace groupnorm {
namespace detail {

// Carves aligned arrays from one buffer. Without a buffer it only measures.
struct Arena {
  char* base = nullptr;
  std::size_t used = 0;
  static constexpr std::size_t kMax = std::numeric_limits<std::size_t>::max() / 2;
  template <class X> X* take(std::int64_t n) {
    // saturates at kMax (never wraps), which no allocation or workspace can satisfy
    const std::size_t cnt = (std::size_t)std::max<std::int64_t>(n, 0);
    if (used >= kMax || cnt > (kMax - used - 64) / sizeof(X)) { used = kMax; return nullptr; }
    used = (used + 63) / 64 * 64;
    X* p = base ? reinterpret_cast<X*>(base + used) : nullptr;
    used += sizeof(X) * cnt;
    return p;
  }
  std::size_t total() const { return used >= kMax ? std::numeric_limits<std::size_t>::max() : used + 64; }
};

enum class Direction { forward, backward };

// A's arrays hold what the kernels read per channel (A: float, or double for
// float64 data); the rest is double. Arrays a direction does not use are null.
template <class A> struct Scratch {
  // per (n, c): the apply's coefficients, y = (x - chan_mean) * chan_scale + chan_shift
  A *chan_mean, *chan_scale, *chan_shift;
  // per (n, c), backward: dx = chan_scale * dz + chan_dx_xc * (x - chan_mean) + chan_dx_shift
  A *chan_dx_xc, *chan_dx_shift;
  A* skip_bias;                     // per c, forward
  double *group_mean, *group_rstd;  // per (n, g)
  Moments* round_moments;           // shared steps, forward: per group of each tile of a round
  Moments* step_totals;             // shared steps, forward: running totals of a step's groups
  double *sum_dz, *sum_dz_xc;       // backward: per (n, c)
  double *round_dz, *round_dz_xc;   // shared steps, backward: per channel of each tile of a round
  A* kernel_scratch;                // per worker: worker_scratch(C)
  Moments* set_totals;              // per worker: a set's groups' running totals, and one tile's partials
  std::int64_t* held_set;           // per worker: the set whose apply it holds back (pipelined), or -1
};

template <class A> void carve(Arena& ar, const Plan& pl, Direction d, Scratch<A>& s) {
  const bool backward = d == Direction::backward;
  const std::int64_t NC = pl.N * pl.C, NG = pl.N * pl.G;
  const std::int64_t round_tiles = pl.whole_sets ? 0 : pl.tiles_per_round;
  s.chan_mean = ar.template take<A>(NC);
  s.chan_scale = ar.template take<A>(NC);
  s.chan_shift = ar.template take<A>(NC);
  s.chan_dx_xc = backward ? ar.template take<A>(NC) : nullptr;
  s.chan_dx_shift = backward ? ar.template take<A>(NC) : nullptr;
  s.skip_bias = backward ? nullptr : ar.template take<A>(pl.C);
  s.group_mean = ar.template take<double>(NG);
  s.group_rstd = ar.template take<double>(NG);
  s.round_moments = backward ? nullptr : ar.template take<Moments>(round_tiles * pl.groups_per_tile);
  s.step_totals = backward || pl.whole_sets ? nullptr : ar.template take<Moments>(pl.sets_per_step * pl.groups_per_set);
  s.sum_dz = backward ? ar.template take<double>(NC) : nullptr;
  s.sum_dz_xc = backward ? ar.template take<double>(NC) : nullptr;
  s.round_dz = backward ? ar.template take<double>(round_tiles * pl.max_tile_channels) : nullptr;
  s.round_dz_xc = backward ? ar.template take<double>(round_tiles * pl.max_tile_channels) : nullptr;
  s.kernel_scratch = ar.template take<A>((std::int64_t)pl.threads * worker_scratch(pl.C));
  s.set_totals = ar.template take<Moments>((std::int64_t)pl.threads * 2 * pl.G);
  s.held_set = ar.template take<std::int64_t>(pl.threads);
}

// The bytes carve() takes for this plan (size_t max: more than any memory).
inline std::size_t scratch_bytes(const Plan& pl, DType dtype, Direction d) {
  Arena ar;
  if (dtype == DType::float64) { Scratch<double> s{}; carve<double>(ar, pl, d, s); }
  else { Scratch<float> s{}; carve<float>(ar, pl, d, s); }
  return ar.total();
}

// Runs body(scratch) with scratch from the caller's workspace or a fresh allocation.
template <class A, class Body> Result with_scratch(const Plan& pl, Direction d, const Exec& e, Body body) {
  Arena measure;
  Scratch<A> s{};
  carve<A>(measure, pl, d, s);
  const std::size_t need = measure.total();
  if (need == std::numeric_limits<std::size_t>::max())
    return {Status::out_of_memory, "the scratch of this problem does not fit in memory"};
  std::unique_ptr<char[]> owned;
  char* base;
  if (e.workspace) {
    if (e.workspace_bytes < need)
      return {Status::workspace_too_small, "workspace of " + std::to_string(e.workspace_bytes) +
                                               " bytes is smaller than the " + std::to_string(need) + " needed"};
    base = static_cast<char*>(e.workspace);
  } else {
    owned.reset(new (std::nothrow) char[need]);
    if (!owned) return {Status::out_of_memory, "could not allocate " + std::to_string(need) + " bytes of scratch"};
    base = owned.get();
  }
  Arena ar;
  ar.base = reinterpret_cast<char*>((reinterpret_cast<std::uintptr_t>(base) + 63) / 64 * 64);
  carve<A>(ar, pl, d, s);
  body(s);
  return {};
}

}  // namespace detail
}  // namespace groupnorm
