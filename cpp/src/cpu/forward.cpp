// The forward pass: its hooks for the walk (walk.hpp) and its entry points,
// the one-call forward() and the split-phase moments() and forward() with
// given statistics (the same pass with some phases off).
#include <cstdint>
#include <limits>

#include "groupnorm/groupnorm.hpp"
#include "../chan.hpp"
#include "exact.hpp"
#include "scalar.hpp"
#include "split.hpp"
#include "walk.hpp"

namespace groupnorm {
namespace detail {
namespace {

// Which phases a forward call runs: all of them (the one-call path), the
// moments alone (written to `moments_out`), or the apply alone (statistics `given`).
enum class ForwardPhases { all, moments, apply };
struct ForwardCall {
  ForwardPhases phases = ForwardPhases::all;
  const MomentsArgs* moments_out = nullptr;
  const GivenStats* given = nullptr;
};

// The statistics given to an apply-only call, for group ng.
GivenGroup given_group(const Problem& p, const GivenStats& g, std::int64_t ng) {
  if (g.count) return group_of_moments(g.count[ng], g.mean[ng], g.m2[ng], p.eps);
  const DType st = stats_dtype(p.dtype);
  return {load_scalar(g.stats_mean, st, ng), load_scalar(g.stats_rstd, st, ng), false};
}

template <class A> struct ForwardPass {
  const Problem& p;
  const ForwardArgs& a;
  const Plan& pl;
  const KernelSet& k;
  const Scratch<A>& s;
  const ForwardCall& call;
  bool run_sums, run_finish, run_apply, fusable;
  std::int64_t* held_set;

  ForwardPass(const Problem& p_, const ForwardArgs& a_, const Plan& pl_, const KernelSet& k_, const Scratch<A>& s_,
              const ForwardCall& c)
      : p(p_), a(a_), pl(pl_), k(k_), s(s_), call(c), held_set(s_.held_set) {
    run_sums = run_finish = c.phases != ForwardPhases::apply;
    run_apply = c.phases != ForwardPhases::moments;
    fusable = !a.sum_out;
  }

  Moments* set_totals(int w) const { return s.set_totals + (std::int64_t)w * 2 * pl.G; }
  Moments* tile_partials(int w) const { return set_totals(w) + pl.G; }
  Moments* step_totals() const { return s.step_totals; }

  Tile tile(const TileRef& r, int w) const {
    Tile t = base_tile<A>(p, pl, r, s, a.x, w);
    t.skip = offset_ptr(a.skip, r.offset, pl.elem_bytes);
    if (!a.skip || !a.skip_bias) t.skip_bias = nullptr;
    t.y = offset_ptr(a.y, r.offset, pl.elem_bytes);
    t.sum_out = offset_ptr(a.sum_out, r.offset, pl.elem_bytes);
    return t;
  }

  void sum(const TileRef& r, int w, Moments* totals) const {
    Moments* part = tile_partials(w);
    k.moments(tile(r, w), part);
    for (std::int64_t gi = 0; gi < pl.groups_per_tile; ++gi) chan_merge(totals[gi], part[gi]);
  }
  void fused(const TileRef& held, const TileRef& r, int w, Moments* totals) const {
    Moments* part = tile_partials(w);
    k.apply_moments(tile(held, w), tile(r, w), part);
    chan_merge(totals[0], part[0]);  // channels-first: a tile lies in one group
  }
  void apply(const TileRef& r, int w) const { k.apply(tile(r, w)); }
  void sum_to_slot(const TileRef& r, int w, std::int64_t slot) const {
    k.moments(tile(r, w), s.round_moments + slot * pl.groups_per_tile);
  }
  void merge_slot(const TileRef&, std::int64_t slot, Moments* totals) const {
    for (std::int64_t gi = 0; gi < pl.groups_per_tile; ++gi)
      chan_merge(totals[gi], s.round_moments[slot * pl.groups_per_tile + gi]);
  }

  // group ng's merged moments -> the moments output, or the apply's coefficients
  void finish(std::int64_t ng, const Moments* total) const {
    const Moments& m = *total;
    const bool rare = needs_exact<A>(m, p.eps);
    const GroupStats gs = rare ? exact_group_stats<A>(p, a, pl, s.skip_bias, ng) : GroupStats{};
    if (call.phases == ForwardPhases::moments) {
      call.moments_out->count[ng] = (std::int64_t)m.n;
      call.moments_out->mean[ng] = rare ? gs.mean : m.mean;
      call.moments_out->m2[ng] = rare ? gs.m2 : m.m2;
      return;
    }
    if (rare) set_coefficients(ng, gs.mean, gs.rstd, gs.center, gs.constant);
    else set_coefficients(ng, m.mean, chan_rstd(m, p.eps), m.mean, m.m2 == 0);
  }

  // group ng's mean and rstd -> per-channel mean/scale/shift; the apply
  // subtracts `center` (the mean, or the middle of a huge range) in A
  void set_coefficients(std::int64_t ng, double mean, double rstd, double center, bool constant) const {
    s.group_mean[ng] = mean;
    s.group_rstd[ng] = rstd;
    const std::int64_t n = ng / pl.G, g = ng % pl.G;
    for (std::int64_t c = g * pl.group_channels; c < (g + 1) * pl.group_channels; ++c) {
      const double w = a.weight ? load_scalar(a.weight, p.param_dtype, c) : 1.0;
      const double b = a.bias ? load_scalar(a.bias, p.param_dtype, c) : 0.0;
      fold_coefficients_at<A>(mean, center, rstd, w, b, constant, s.chan_mean[n * pl.C + c],
                              s.chan_scale[n * pl.C + c], s.chan_shift[n * pl.C + c]);
    }
  }
};

Result run_forward(const Problem& p, const ForwardArgs& a, const Exec& e, const ForwardCall& call) {
  Plan pl = plan_call(p, resolve_threads(e), Direction::forward, call.phases != ForwardPhases::all);
  if (overlaps(p, a.y, a.x) || overlaps(p, a.y, a.skip) || overlaps(p, a.sum_out, a.x)) pl.stream_outputs = false;
  const KernelSet& k = active_kernels().by_dtype[(int)p.dtype];
  return with_accumulator(p.dtype, [&](auto zero) {
    typedef decltype(zero) A;
    return with_scratch<A>(pl, Direction::forward, e, [&](Scratch<A>& s) {
      for (std::int64_t c = 0; c < pl.C; ++c)
        s.skip_bias[c] = (A)(a.skip_bias ? load_scalar(a.skip_bias, p.param_dtype, c) : 0.0);
      const ForwardPass<A> f(p, a, pl, k, s, call);
      if (call.phases == ForwardPhases::apply)  // no moments phase: coefficients from the given stats
        for (std::int64_t ng = 0; ng < pl.N * pl.G; ++ng) {
          const GivenGroup gg = given_group(p, *call.given, ng);
          f.set_coefficients(ng, gg.mean, gg.rstd, gg.mean, gg.constant);
        }
      walk(pl, e, f);
      if (call.phases == ForwardPhases::moments) return;
      const DType st = stats_dtype(p.dtype);
      for (std::int64_t i = 0; i < pl.N * pl.G; ++i) {
        if (a.mean) store_scalar(a.mean, st, i, s.group_mean[i]);
        if (a.rstd) store_scalar(a.rstd, st, i, s.group_rstd[i]);
      }
    });
  });
}

void fill_nan_stats(const Problem& p, void* mean, void* rstd) {
  const DType st = stats_dtype(p.dtype);
  const double nan = std::numeric_limits<double>::quiet_NaN();
  for (std::int64_t i = 0; i < p.batch * p.groups; ++i) {
    if (mean) store_scalar(mean, st, i, nan);
    if (rstd) store_scalar(rstd, st, i, nan);
  }
}

}  // namespace
}  // namespace detail

using namespace detail;

Result forward(const Problem& p, const ForwardArgs& a, const Exec& e) {
  Result r = validate_args(p, a);
  if (!r) return r;
  if (p.numel() == 0) {
    if (p.spatial == 0) fill_nan_stats(p, a.mean, a.rstd);
    return {};
  }
  return run_forward(p, a, e, ForwardCall());
}

Result moments(const Problem& p, const MomentsArgs& m, const Exec& e) {
  Result r = validate_args(p, m);
  if (!r) return r;
  if (p.numel() == 0) {  // no elements: every group's moments are the identity
    for (std::int64_t i = 0; i < p.batch * p.groups; ++i) { m.count[i] = 0; m.mean[i] = 0; m.m2[i] = 0; }
    return {};
  }
  ForwardArgs a;
  a.x = m.x; a.skip = m.skip; a.skip_bias = m.skip_bias;
  ForwardCall call;
  call.phases = ForwardPhases::moments;
  call.moments_out = &m;
  return run_forward(p, a, e, call);
}

Result forward(const Problem& p, const ForwardArgs& a, const GivenStats& g, const Exec& e) {
  Result r = validate_args(p, a, g);
  if (!r) return r;
  if (p.numel() == 0) {  // nothing to apply; the stats used still go out when asked
    const DType st = stats_dtype(p.dtype);
    for (std::int64_t ng = 0; ng < p.batch * p.groups; ++ng) {
      const GivenGroup gg = given_group(p, g, ng);
      if (a.mean) store_scalar(a.mean, st, ng, gg.mean);
      if (a.rstd) store_scalar(a.rstd, st, ng, gg.rstd);
    }
    return {};
  }
  ForwardCall call;
  call.phases = ForwardPhases::apply;
  call.given = &g;
  return run_forward(p, a, e, call);
}

}  // namespace groupnorm
