// The CPU driver: the one scheduler of every CPU entry point. A call runs as
// phases over the tiles of its plan (plan.hpp): moments (kernels' partials
// merged with Chan's formula in tile order), coefficients (mean/rstd folded
// with weight and bias into one scale and shift per channel), apply; the
// backward: per-channel sums, coefficients, dx. The one-call forward/backward
// runs them all; the split-phase entry points (moments(), forward() with given
// statistics, backward_sums(), backward() with given sums) run some of them on
// the same plan and kernels.
//
// Each tile's partial moments come from one pass of sums shifted by the tile's
// first element, or an exact two-pass sum when that shift is far from the
// mean (see generic.hpp).
//
// Scheduling (free to depend on threads and cache; never changes results):
//   mode A: whole sets go to threads (channels-first: a few groups of one
//     sample; channels-last: one whole sample); a thread reads a set once
//     from memory for its moments and applies it from cache.
//   mode B: when sets are too few or too big, consecutive sets form a step
//     whose tiles are spread over all threads: moments, merge, apply, with
//     each thread applying the tiles it just summed.
//   Sets (mode A) and tiles (mode B phases) go to threads through
//   run_dynamic: each thread starts on its static share and takes unclaimed
//   items from the others when it runs out, so a descheduled thread (a busy
//   machine) delays a call by one item, not by its share.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <limits>
#include <memory>
#include <new>
#include <vector>

#include "groupnorm/groupnorm.hpp"
#include "kernels.hpp"
#include "plan.hpp"
#include "scalar.hpp"
#include "threads.hpp"

namespace groupnorm {
namespace detail {

const IsaKernels& active_kernels();  // dispatch.cpp

namespace {

std::int64_t stream_threshold() {
  static const std::int64_t v = [] {
    const char* s = std::getenv("GROUPNORM_STREAM_BYTES");
    return s && *s ? std::atoll(s) : (std::int64_t)16 << 20;
  }();
  return v;
}

// The plan of a call on this machine (cache sizes, GROUPNORM_* overrides).
Plan make_plan(const Problem& p, int threads, int streams, bool one_phase = false) {
  return detail::make_plan(p, threads, streams, &cache_budget, stream_threshold(), one_phase);
}

// GROUPNORM_PIPELINE=0: the channels-first forward and backward without
// their pipelined walks (to measure what they are worth; results are the
// same either way, tests/test_determinism.py checks it).
bool pipeline_on() {
  static const bool on = [] {
    const char* s = std::getenv("GROUPNORM_PIPELINE");
    return !(s && *s == '0');
  }();
  return on;
}

// Scratch carved from one buffer (the caller's workspace or one allocation).
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

template <class A> struct Scratch {
  A *mean_c, *scale_c, *shift_c, *c2_c, *c3_c, *skip_bias;  // per (n, c); skip_bias per c
  double *gmean, *grstd;          // per (n, g)
  Moments* slots;                 // mode B: per tile of a chunk
  Moments* step_run;              // mode B: running totals of a step's groups
  double *db, *ds;                // backward: per (n, c)
  double *slot_db, *slot_ds;      // backward mode B: per tile channel of a chunk
  A* worker;                      // per worker: worker_scratch(C)
  Moments* running;               // per worker: 2 * G
  std::int64_t* pending;          // per worker: the set whose apply it holds back (pipelined mode A)
};

template <class A> void carve(Arena& ar, const Plan& pl, bool backward, Scratch<A>& s) {
  const std::int64_t NC = pl.N * pl.C, NG = pl.N * pl.G;
  const std::int64_t step_tiles = pl.mode_a ? 0 : pl.chunk_tiles;
  s.mean_c = ar.template take<A>(NC);
  s.scale_c = ar.template take<A>(NC);
  s.shift_c = ar.template take<A>(NC);
  s.c2_c = backward ? ar.template take<A>(NC) : nullptr;
  s.c3_c = backward ? ar.template take<A>(NC) : nullptr;
  s.skip_bias = backward ? nullptr : ar.template take<A>(pl.C);
  s.gmean = ar.template take<double>(NG);
  s.grstd = ar.template take<double>(NG);
  s.slots = backward ? nullptr : ar.template take<Moments>(step_tiles * pl.moments_per_tile);
  s.step_run = backward || pl.mode_a ? nullptr : ar.template take<Moments>(pl.sets_per_step * pl.band);
  s.db = backward ? ar.template take<double>(NC) : nullptr;
  s.ds = backward ? ar.template take<double>(NC) : nullptr;
  s.slot_db = backward ? ar.template take<double>(step_tiles * pl.chans_per_set_tile) : nullptr;
  s.slot_ds = backward ? ar.template take<double>(step_tiles * pl.chans_per_set_tile) : nullptr;
  s.worker = ar.template take<A>((std::int64_t)pl.threads * worker_scratch(pl.C));
  s.running = ar.template take<Moments>((std::int64_t)pl.threads * 2 * pl.G);
  s.pending = ar.template take<std::int64_t>(pl.threads);
}

// Runs body with scratch from the caller's workspace or a fresh allocation.
template <class A, class Body>
Result with_scratch(const Plan& pl, bool backward, const Exec& e, Body body) {
  Arena measure;
  Scratch<A> s{};
  carve<A>(measure, pl, backward, s);
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
  carve<A>(ar, pl, backward, s);
  body(s);
  return {};
}

// What every tile of a call shares: shape, per-channel arrays, the worker's
// scratch and the input x (forward and backward add their own pointers).
template <class A>
Tile make_tile(const Problem& p, const Plan& pl, const TileRef& r, const Scratch<A>& s, const void* x, int worker) {
  Tile t;
  t.rows = r.rows; t.cols = r.cols; t.stride = r.stride;
  t.group_width = pl.Cg;
  t.channels_last = pl.cl;
  t.stream = pl.stream;
  t.silu = p.activation == Activation::silu;
  t.prefetch_rows = pl.cl;
  t.x = x ? static_cast<const char*>(x) + r.offset * (std::int64_t)pl.esize : nullptr;
  t.mean = s.mean_c + r.chan0;
  t.scale = s.scale_c + r.chan0;
  t.shift = s.shift_c + r.chan0;
  if (s.c2_c) { t.c2 = s.c2_c + r.chan0; t.c3 = s.c3_c + r.chan0; }
  if (s.skip_bias) t.skip_bias = s.skip_bias + r.chan0 % pl.C;
  t.scratch = s.worker + (std::int64_t)worker * worker_scratch(pl.C);
  return t;
}

inline const char* cptr(const void* p, std::int64_t off, std::size_t es) {
  return p ? static_cast<const char*>(p) + off * (std::int64_t)es : nullptr;
}
inline char* mptr(void* p, std::int64_t off, std::size_t es) {
  return p ? static_cast<char*>(p) + off * (std::int64_t)es : nullptr;
}

// 1 / sqrt(var + eps) of merged moments: the one formula of forward() and mean_rstd().
inline double rstd_of(const Moments& m, double eps) { return chan_rstd(m, eps); }

// ---------------------------------------------------------------- forward
// Below this, var + eps may have lost its precision in the fast sums (squares
// of deviations under A's normal range); the group is then recomputed exactly.
template <class A> struct kTinyVar;
template <> struct kTinyVar<float> { static constexpr double value = 0x1p-100; };
template <> struct kTinyVar<double> { static constexpr double value = 0x1p-1000; };

struct GroupStats {
  double mean, m2, rstd;
  double center;  // what the apply subtracts in A: the mean, or the middle of
                  // the data's range when x - mean could overflow A
  bool constant;  // every value of the group is the same
};

// The statistics of group ng element by element, in double, on the values
// scaled by a power of two so that neither squares nor sums can overflow or
// underflow: the rare path for data at the edges of the dtype's range. The
// values are those the kernels normalize (x + skip (+ skip_bias), rounded to
// the dtype). Depends on the group's data only, like the fast path.
template <class A>
GroupStats exact_group_stats(const Problem& p, const ForwardArgs& a, const Plan& pl, const A* skip_bias,
                             std::int64_t ng) {
  const std::int64_t n = ng / pl.G, g = ng % pl.G;
  const std::int64_t c0 = g * pl.Cg;
  auto value = [&](std::int64_t c, std::int64_t sp) {
    const std::int64_t i = pl.cl ? (n * pl.S + sp) * pl.C + c : (n * pl.C + c) * pl.S + sp;
    A v = (A)load_scalar(a.x, p.dtype, i);
    if (a.skip) {
      v = v + (A)load_scalar(a.skip, p.dtype, i);
      if (a.skip_bias) v = v + skip_bias[c];
      v = (A)round_to_storage(p.dtype, v);
    }
    return (double)v;
  };
  auto each = [&](auto f) {
    for (std::int64_t c = c0; c < c0 + pl.Cg; ++c)
      for (std::int64_t sp = 0; sp < pl.S; ++sp) f(value(c, sp));
  };
  const double count = (double)pl.Cg * (double)pl.S;
  double lo = INFINITY, hi = -INFINITY, sum = 0;
  bool finite = true;
  each([&](double v) {
    if (!std::isfinite(v)) finite = false;
    lo = std::fmin(lo, v);
    hi = std::fmax(hi, v);
    sum += v;
  });
  GroupStats r;
  r.constant = false;
  if (!finite) {  // NaN/Inf data: NaN statistics, as the fast path gives
    r.mean = r.center = sum / count;
    r.m2 = r.rstd = std::numeric_limits<double>::quiet_NaN();
    return r;
  }
  if (lo == hi) {
    r.constant = true;
    r.mean = r.center = lo;
    r.m2 = 0;
    r.rstd = 1.0 / std::sqrt(p.eps);  // inf for eps = 0
    return r;
  }
  int e;
  std::frexp(std::fmax(std::fabs(lo), std::fabs(hi)), &e);
  // values * 2^-e in [-1, 1) (ldexp: exact, even where 2^-e itself is not a double)
  double s1 = 0;
  each([&](double v) { s1 += std::ldexp(v, -e); });
  const double m = s1 / count;
  double sd = 0, sq = 0;
  each([&](double v) {
    const double d = std::ldexp(v, -e) - m;
    sd += d;
    sq += d * d;
  });
  const double var = std::fmax(sq - sd * sd / count, 0.0) / count;  // of the scaled values
  r.mean = std::ldexp(m + sd / count, e);
  r.m2 = std::ldexp(var * count, 2 * e);  // inf when it does not fit (float64 data near its max)
  const double eps_k = std::ldexp(p.eps, -2 * e);
  // var + eps = (var_k + eps k^2) / k^2 with k = 2^-e; when eps k^2 overflows,
  // var is nothing next to eps
  r.rstd = std::isinf(eps_k) ? 1.0 / std::sqrt(p.eps) : std::ldexp(1.0 / std::sqrt(var + eps_k), -e);
  const double big = (double)std::numeric_limits<A>::max() / 2;
  r.center = (hi - r.mean > big || r.mean - lo > big) ? lo / 2 + hi / 2 : r.mean;
  return r;
}

// Which phases a forward call runs: all of them (the one-call path), the
// moments alone (written to `out`), or the apply alone (statistics `given`).
enum class Phase { all, moments, apply };
struct ForwardPhases {
  Phase phase = Phase::all;
  const MomentsArgs* out = nullptr;
  const GivenStats* given = nullptr;
};

template <class A> struct Forward {
  const Problem& p;
  const ForwardArgs& a;
  const Plan& pl;
  const KernelSet& k;
  Scratch<A>& s;
  const ForwardPhases& ph;

  Tile tile(const TileRef& r, int worker) const {
    Tile t = make_tile<A>(p, pl, r, s, a.x, worker);
    t.skip = cptr(a.skip, r.offset, pl.esize);
    if (!a.skip || !a.skip_bias) t.skip_bias = nullptr;
    t.y = mptr(a.y, r.offset, pl.esize);
    t.sum_out = mptr(a.sum_out, r.offset, pl.esize);
    return t;
  }

  // merged moments of group ng -> the moments output, or per-channel mean/scale/shift
  void finish_group(std::int64_t ng, const Moments& m) const {
    const double var = m.m2 / m.n;
    // rare: the fast sums overflowed A (|x| beyond ~1e19 in float), or the
    // variance is below A's normal range, or the data holds NaN/Inf
    const bool rare = !(std::isfinite(m.mean) && std::isfinite(var)) || !(var + p.eps >= kTinyVar<A>::value);
    const GroupStats gs = rare ? exact_group_stats<A>(p, a, pl, s.skip_bias, ng) : GroupStats{};
    if (ph.phase == Phase::moments) {
      ph.out->count[ng] = (std::int64_t)m.n;
      ph.out->mean[ng] = rare ? gs.mean : m.mean;
      ph.out->m2[ng] = rare ? gs.m2 : m.m2;
      return;
    }
    if (rare) set_stats(ng, gs.mean, gs.rstd, gs.center, gs.constant);
    else set_stats(ng, m.mean, rstd_of(m, p.eps), m.mean, m.m2 == 0);
  }

  // the statistics given to an apply-only call, as (mean, rstd) in double;
  // *constant: the given moments say the group is constant (m2 = 0)
  void given_stats(std::int64_t ng, double* mean, double* rstd, bool* constant) const {
    const GivenStats& g = *ph.given;
    *constant = false;
    if (g.count) {
      Moments m;
      m.n = (double)g.count[ng]; m.mean = g.mean[ng]; m.m2 = g.m2[ng];
      *mean = g.count[ng] == 0 ? std::numeric_limits<double>::quiet_NaN() : m.mean;  // as mean_rstd()
      *rstd = rstd_of(m, p.eps);
      *constant = m.m2 == 0;
    } else {
      const DType st = stats_dtype(p.dtype);
      *mean = load_scalar(g.stats_mean, st, ng);
      *rstd = load_scalar(g.stats_rstd, st, ng);
    }
  }

  // group ng's mean and rstd -> per-channel mean/scale/shift; the apply
  // subtracts `center` (the mean, or the middle of a huge range) in A
  void set_stats(std::int64_t ng, double mean, double rstd, double center, bool constant) const {
    s.gmean[ng] = mean;
    s.grstd[ng] = rstd;
    const std::int64_t n = ng / pl.G, g = ng % pl.G;
    for (std::int64_t c = g * pl.Cg; c < (g + 1) * pl.Cg; ++c) {
      const double w = a.weight ? load_scalar(a.weight, p.param_dtype, c) : 1.0;
      const double b = a.bias ? load_scalar(a.bias, p.param_dtype, c) : 0.0;
      fold_coefficients_at<A>(mean, center, rstd, w, b, constant, s.mean_c[n * pl.C + c], s.scale_c[n * pl.C + c],
                              s.shift_c[n * pl.C + c]);
    }
  }

  // Channels-first mode A, pipelined: a worker holds back the apply of its
  // last set and runs it, tile by tile, in one walk with the moments of its
  // next set (apply_moments), so memory streams the next set in while the
  // held one is normalized from cache. Every set of the plan has the same
  // tile geometry. done() applies what a worker still holds. Only for sets
  // small enough that the held set stays in the private cache while the next
  // one streams in (bigger ones measured slower pipelined: vae_512, 1 MB
  // groups, 1.35 -> 1.46x a copy).
  bool pipelined() const {
    return !pl.cl && pl.mode_a && ph.phase == Phase::all && !a.sum_out && pipeline_on() &&
           4 * pl.set_bytes <= private_cache_bytes();
  }
  void set_pipelined(std::int64_t set, int worker) const {
    const std::int64_t held = s.pending[worker];
    for (std::int64_t gi = 0; gi < set_groups(pl, set); ++gi) {
      Moments acc;
      std::int64_t ng = 0;
      for (std::int64_t t = gi * pl.tiles_per_group; t < (gi + 1) * pl.tiles_per_group; ++t) {
        const TileRef r = tile_of(pl, set, t);
        ng = r.group0;
        Moments m;
        if (held >= 0) k.apply_moments(tile(tile_of(pl, held, t), worker), tile(r, worker), &m);
        else k.moments(tile(r, worker), &m);
        merge(acc, m);
      }
      finish_group(ng, acc);
    }
    s.pending[worker] = set;
  }
  void done_pipelined(int worker) const {
    const std::int64_t held = s.pending[worker];
    if (held < 0) return;
    for (std::int64_t t = pl.tiles_per_set; t-- > 0;) k.apply(tile(tile_of(pl, held, t), worker));
    s.pending[worker] = -1;
  }

  void set_mode_a(std::int64_t set, int worker) const {
    const std::int64_t ngr = set_groups(pl, set);
    if (!pl.cl) {
      for (std::int64_t gi = 0; gi < ngr; ++gi) {
        const std::int64_t t0 = gi * pl.tiles_per_group;
        if (ph.phase != Phase::apply) {
          Moments acc;
          std::int64_t ng = 0;
          for (std::int64_t t = t0; t < t0 + pl.tiles_per_group; ++t) {
            const TileRef r = tile_of(pl, set, t);
            ng = r.group0;
            Moments m;
            k.moments(tile(r, worker), &m);
            merge(acc, m);
          }
          finish_group(ng, acc);
        }
        if (ph.phase != Phase::moments)  // last tiles first: they are the ones still in cache
          for (std::int64_t t = t0 + pl.tiles_per_group; t-- > t0;) k.apply(tile(tile_of(pl, set, t), worker));
      }
    } else {
      if (ph.phase != Phase::apply) {
        Moments* run = s.running + (std::int64_t)worker * 2 * pl.G;  // running totals
        Moments* tile_out = run + pl.G;                                // one tile's partials
        for (std::int64_t gi = 0; gi < ngr; ++gi) run[gi] = Moments();
        const std::int64_t group0 = tile_of(pl, set, 0).group0;
        for (std::int64_t t = 0; t < pl.tiles_per_set; ++t) {  // row tiles in order, per sub-band
          const TileRef r = tile_of(pl, set, t);
          k.moments(tile(r, worker), tile_out);
          Moments* dst = run + (r.group0 - group0);
          for (std::int64_t gi = 0; gi < pl.sub_groups; ++gi) merge(dst[gi], tile_out[gi]);
        }
        for (std::int64_t gi = 0; gi < ngr; ++gi) finish_group(group0 + gi, run[gi]);
      }
      if (ph.phase != Phase::moments)
        for (std::int64_t rc = pl.row_tiles; rc-- > 0;) k.apply(tile(band_rows(pl, set, rc), worker));  // as above
    }
  }
};

template <class A> Result run_forward(const Problem& p, const ForwardArgs& a, const Exec& e, const Plan& pl,
                                      const KernelSet& k, const ForwardPhases& ph) {
  return with_scratch<A>(pl, false, e, [&](Scratch<A>& s) {
    for (std::int64_t c = 0; c < pl.C; ++c)
      s.skip_bias[c] = (A)(a.skip_bias ? load_scalar(a.skip_bias, p.param_dtype, c) : 0.0);
    Forward<A> f{p, a, pl, k, s, ph};
    if (ph.phase == Phase::apply) {  // the moments phase is skipped: coefficients from the given stats
      for (std::int64_t ng = 0; ng < pl.N * pl.G; ++ng) {
        double mean, rstd;
        bool constant;
        f.given_stats(ng, &mean, &rstd, &constant);
        f.set_stats(ng, mean, rstd, mean, constant);
      }
    }
    if (pl.mode_a && f.pipelined()) {
      for (int w = 0; w < pl.threads; ++w) s.pending[w] = -1;
      const auto finish = [&](int w) { f.done_pipelined(w); };
      const WorkerFn done(finish);
      run_dynamic(e, pl.threads, pl.nsets, [&](int w, std::int64_t set) { f.set_pipelined(set, w); }, &done);
    } else if (pl.mode_a) {
      const int T = pl.threads;
      run_dynamic(e, T, pl.nsets, [&](int w, std::int64_t set) { f.set_mode_a(set, w); });
    } else {
      const int T = pl.threads;
      for (std::int64_t s0 = 0; s0 < pl.nsets; s0 += pl.sets_per_step) {
        const std::int64_t s1 = std::min(pl.nsets, s0 + pl.sets_per_step);
        const std::int64_t ntiles = (s1 - s0) * pl.tiles_per_set;
        // sums a chunk of tiles at a time; partials merge into the step's running
        // totals in tile order, so each group sees its tiles in order
        Moments* run = s.step_run;
        for (std::int64_t i = 0; i < (s1 - s0) * pl.band; ++i) run[i] = Moments();
        for (std::int64_t c0 = 0; ph.phase != Phase::apply && c0 < ntiles; c0 += pl.chunk_tiles) {
          const std::int64_t nc = std::min(pl.chunk_tiles, ntiles - c0);
          run_dynamic(e, T, nc, [&](int w, std::int64_t j) {
            const std::int64_t i = c0 + j;
            const TileRef r = tile_of(pl, s0 + i / pl.tiles_per_set, i % pl.tiles_per_set);
            k.moments(f.tile(r, w), s.slots + j * pl.moments_per_tile);
          });
          for (std::int64_t i = c0; i < c0 + nc; ++i) {
            const std::int64_t set = s0 + i / pl.tiles_per_set;
            const TileRef r = tile_of(pl, set, i % pl.tiles_per_set);
            Moments* dst = run + (set - s0) * pl.band + (r.group0 - tile_of(pl, set, 0).group0);
            for (std::int64_t gi = 0; gi < pl.moments_per_tile; ++gi)
              merge(dst[gi], s.slots[(i - c0) * pl.moments_per_tile + gi]);
          }
        }
        for (std::int64_t set = s0; ph.phase != Phase::apply && set < s1; ++set) {
          const std::int64_t group0 = tile_of(pl, set, 0).group0;
          for (std::int64_t gi = 0; gi < set_groups(pl, set); ++gi)
            f.finish_group(group0 + gi, run[(set - s0) * pl.band + gi]);
        }
        if (ph.phase != Phase::moments) run_dynamic(e, T, ntiles, [&](int w, std::int64_t i) {
          k.apply(f.tile(tile_of(pl, s0 + i / pl.tiles_per_set, i % pl.tiles_per_set), w));
        });
      }
    }
    const DType st = stats_dtype(p.dtype);
    for (std::int64_t i = 0; ph.phase != Phase::moments && i < pl.N * pl.G; ++i) {
      if (a.mean) store_scalar(a.mean, st, i, s.gmean[i]);
      if (a.rstd) store_scalar(a.rstd, st, i, s.grstd[i]);
    }
  });
}

// ---------------------------------------------------------------- backward
// Which phases a backward call runs: all (the one-call path), the sums alone
// (written to out_*), or dx from given sums of the whole tensor (in_*, over
// total_spatial elements per channel).
struct BackwardPhases {
  double *out_dz = nullptr, *out_dz_xc = nullptr;
  const double *in_dz = nullptr, *in_dz_xc = nullptr;
  std::int64_t total_spatial = 0;
  bool sums_only() const { return out_dz != nullptr; }
  bool given() const { return in_dz != nullptr; }
};

template <class A> struct Backward {
  const Problem& p;
  const BackwardArgs& a;
  const Plan& pl;
  const KernelSet& k;
  Scratch<A>& s;
  const BackwardPhases& ph;

  Tile tile(const TileRef& r, int worker) const {
    Tile t = make_tile<A>(p, pl, r, s, a.x, worker);
    t.dy = cptr(a.grad_y, r.offset, pl.esize);
    t.dx = mptr(a.grad_x, r.offset, pl.esize);
    return t;
  }

  // coefficients of dx for group ng from its channels' db/ds
  void finish_group(std::int64_t ng) const {
    const std::int64_t n = ng / pl.G, g = ng % pl.G;
    double s1 = 0, s2 = 0;
    for (std::int64_t c = g * pl.Cg; c < (g + 1) * pl.Cg; ++c) {
      const double w = a.weight ? load_scalar(a.weight, p.param_dtype, c) : 1.0;
      s1 += w * s.db[n * pl.C + c];
      s2 += w * s.ds[n * pl.C + c];
    }
    const double rstd = s.grstd[ng];
    const double D = (double)pl.Cg * (double)(ph.given() ? ph.total_spatial : pl.S);
    const double c2 = -rstd * rstd * rstd * s2 / D;
    const double c3 = -rstd * s1 / D;
    for (std::int64_t c = g * pl.Cg; c < (g + 1) * pl.Cg; ++c) {
      s.c2_c[n * pl.C + c] = (A)c2;
      s.c3_c[n * pl.C + c] = (A)c3;
    }
  }

  // Channels-first mode A, pipelined as the forward's: dx of a worker's last
  // set in one walk with the sums of its next set.
  bool pipelined() const {
    return !pl.cl && pl.mode_a && !ph.given() && !ph.sums_only() && a.grad_x && pipeline_on() &&
           4 * pl.set_bytes <= private_cache_bytes();
  }
  void set_pipelined(std::int64_t set, int worker) const {
    const std::int64_t held = s.pending[worker];
    const std::int64_t group0 = tile_of(pl, set, 0).group0;
    for (std::int64_t gi = 0; gi < set_groups(pl, set); ++gi) {
      for (std::int64_t t = gi * pl.tiles_per_group; t < (gi + 1) * pl.tiles_per_group; ++t) {
        const TileRef r = tile_of(pl, set, t);
        double* db = s.db + r.chan0;
        double* ds = s.ds + r.chan0;
        if (held >= 0) k.backward_apply_sums(tile(tile_of(pl, held, t), worker), tile(r, worker), db, ds);
        else k.backward_sums(tile(r, worker), db, ds);
      }
      finish_group(group0 + gi);
    }
    s.pending[worker] = set;
  }
  void done_pipelined(int worker) const {
    const std::int64_t held = s.pending[worker];
    if (held < 0) return;
    for (std::int64_t t = pl.tiles_per_set; t-- > 0;) k.backward_apply(tile(tile_of(pl, held, t), worker));
    s.pending[worker] = -1;
  }

  void set_mode_a(std::int64_t set, int worker) const {
    const std::int64_t ngr = set_groups(pl, set);
    std::int64_t group0 = tile_of(pl, set, 0).group0;
    if (!pl.cl) {
      for (std::int64_t gi = 0; gi < ngr; ++gi) {
        const std::int64_t t0 = gi * pl.tiles_per_group;
        for (std::int64_t t = t0; !ph.given() && t < t0 + pl.tiles_per_group; ++t) {
          const TileRef r = tile_of(pl, set, t);
          k.backward_sums(tile(r, worker), s.db + r.chan0, s.ds + r.chan0);
        }
        if (ph.sums_only()) continue;
        finish_group(group0 + gi);
        if (a.grad_x)  // last tiles first: they are the ones still in cache
          for (std::int64_t t = t0 + pl.tiles_per_group; t-- > t0;) k.backward_apply(tile(tile_of(pl, set, t), worker));
      }
    } else {
      for (std::int64_t t = 0; !ph.given() && t < pl.tiles_per_set; ++t) {
        const TileRef r = tile_of(pl, set, t);
        k.backward_sums(tile(r, worker), s.db + r.chan0, s.ds + r.chan0);
      }
      if (ph.sums_only()) return;
      for (std::int64_t gi = 0; gi < ngr; ++gi) finish_group(group0 + gi);
      if (a.grad_x)
        for (std::int64_t rc = pl.row_tiles; rc-- > 0;) k.backward_apply(tile(band_rows(pl, set, rc), worker));
    }
  }
};

template <class A> Result run_backward(const Problem& p, const BackwardArgs& a, const Exec& e, const Plan& pl,
                                       const KernelSet& k, const BackwardPhases& ph) {
  return with_scratch<A>(pl, true, e, [&](Scratch<A>& s) {
    const DType st = stats_dtype(p.dtype);
    for (std::int64_t ng = 0; ng < pl.N * pl.G; ++ng) {
      s.gmean[ng] = load_scalar(a.mean, st, ng);
      s.grstd[ng] = load_scalar(a.rstd, st, ng);
      const std::int64_t n = ng / pl.G, g = ng % pl.G;
      for (std::int64_t c = g * pl.Cg; c < (g + 1) * pl.Cg; ++c) {
        const double w = a.weight ? load_scalar(a.weight, p.param_dtype, c) : 1.0;
        const double b = a.bias ? load_scalar(a.bias, p.param_dtype, c) : 0.0;
        s.mean_c[n * pl.C + c] = (A)s.gmean[ng];
        s.scale_c[n * pl.C + c] = (A)(w * s.grstd[ng]);
        s.shift_c[n * pl.C + c] = (A)b;
        s.db[n * pl.C + c] = ph.given() ? ph.in_dz[n * pl.C + c] : 0.0;
        s.ds[n * pl.C + c] = ph.given() ? ph.in_dz_xc[n * pl.C + c] : 0.0;
      }
    }
    Backward<A> bw{p, a, pl, k, s, ph};
    const int T = pl.threads;
    if (pl.mode_a && bw.pipelined()) {
      for (int w = 0; w < T; ++w) s.pending[w] = -1;
      const auto finish = [&](int w) { bw.done_pipelined(w); };
      const WorkerFn done(finish);
      run_dynamic(e, T, pl.nsets, [&](int w, std::int64_t set) { bw.set_pipelined(set, w); }, &done);
    } else if (pl.mode_a) {
      run_dynamic(e, T, pl.nsets, [&](int w, std::int64_t set) { bw.set_mode_a(set, w); });
    } else {
      const std::int64_t ct = pl.chans_per_set_tile;
      for (std::int64_t s0 = 0; s0 < pl.nsets; s0 += pl.sets_per_step) {
        const std::int64_t s1 = std::min(pl.nsets, s0 + pl.sets_per_step);
        const std::int64_t ntiles = (s1 - s0) * pl.tiles_per_set;
        for (std::int64_t c0 = 0; !ph.given() && c0 < ntiles; c0 += pl.chunk_tiles) {  // a chunk of tiles at a time
          const std::int64_t nc = std::min(pl.chunk_tiles, ntiles - c0);
          run_dynamic(e, T, nc, [&](int w, std::int64_t j) {
            const std::int64_t i = c0 + j;
            const TileRef r = tile_of(pl, s0 + i / pl.tiles_per_set, i % pl.tiles_per_set);
            double* db = s.slot_db + j * ct;
            double* ds = s.slot_ds + j * ct;
            std::fill(db, db + r.nchan, 0.0);
            std::fill(ds, ds + r.nchan, 0.0);
            k.backward_sums(bw.tile(r, w), db, ds);
          });
          for (std::int64_t i = c0; i < c0 + nc; ++i) {  // tile order = merge order
            const TileRef r = tile_of(pl, s0 + i / pl.tiles_per_set, i % pl.tiles_per_set);
            for (std::int64_t c = 0; c < r.nchan; ++c) {
              s.db[r.chan0 + c] += s.slot_db[(i - c0) * ct + c];
              s.ds[r.chan0 + c] += s.slot_ds[(i - c0) * ct + c];
            }
          }
        }
        for (std::int64_t set = s0; !ph.sums_only() && set < s1; ++set) {
          const std::int64_t group0 = tile_of(pl, set, 0).group0;
          for (std::int64_t gi = 0; gi < set_groups(pl, set); ++gi) bw.finish_group(group0 + gi);
        }
        if (a.grad_x)
          run_dynamic(e, T, ntiles, [&](int w, std::int64_t i) {
            k.backward_apply(bw.tile(tile_of(pl, s0 + i / pl.tiles_per_set, i % pl.tiles_per_set), w));
          });
      }
    }
    if (ph.sums_only()) {
      std::copy(s.db, s.db + pl.N * pl.C, ph.out_dz);
      std::copy(s.ds, s.ds + pl.N * pl.C, ph.out_dz_xc);
    }
    if (a.grad_weight || a.grad_bias) {
      for (std::int64_t c = 0; c < pl.C; ++c) {
        double gw = 0, gb = 0;
        for (std::int64_t n = 0; n < pl.N; ++n) {
          gw += s.grstd[n * pl.G + c / pl.Cg] * s.ds[n * pl.C + c];
          gb += s.db[n * pl.C + c];
        }
        if (a.grad_weight) store_scalar(a.grad_weight, p.param_dtype, c, gw);
        if (a.grad_bias) store_scalar(a.grad_bias, p.param_dtype, c, gb);
      }
    }
  });
}

bool empty_call(const Problem& p) { return p.numel() == 0; }

// Whether an output shares memory with an input (in place: out=x). Such an
// output is written without non-temporal stores: each line was just read and
// sits in cache, so a plain store dirties it there (one read and one write of
// memory, like a copy), where a streaming store would first evict it
// (in place vae_512 forward: 1.36x a copy with streaming stores).
bool overlaps(const Problem& p, const void* out, const void* in) {
  if (!out || !in) return false;
  const std::uintptr_t o = reinterpret_cast<std::uintptr_t>(out), i = reinterpret_cast<std::uintptr_t>(in);
  const std::uintptr_t bytes = (std::uintptr_t)p.numel() * dtype_size(p.dtype);
  return o < i + bytes && i < o + bytes;
}

void fill_nan_stats(const Problem& p, void* mean, void* rstd) {
  const DType st = stats_dtype(p.dtype);
  const double nan = std::numeric_limits<double>::quiet_NaN();
  for (std::int64_t i = 0; i < p.batch * p.groups; ++i) {
    if (mean) store_scalar(mean, st, i, nan);
    if (rstd) store_scalar(rstd, st, i, nan);
  }
}

Result run_forward_phases(const Problem& p, const ForwardArgs& a, const Exec& e, const ForwardPhases& ph) {
  Plan pl = make_plan(p, resolve_threads(e), 1, ph.phase != Phase::all);
  if (overlaps(p, a.y, a.x) || overlaps(p, a.y, a.skip) || overlaps(p, a.sum_out, a.x)) pl.stream = false;
  const KernelSet& k = active_kernels().by_dtype[(int)p.dtype];
  try {
    return p.dtype == DType::float64 ? run_forward<double>(p, a, e, pl, k, ph) : run_forward<float>(p, a, e, pl, k, ph);
  } catch (const std::bad_alloc&) {
    return {Status::out_of_memory, "out of memory"};
  }
}

Result run_backward_phases(const Problem& p, const BackwardArgs& a, const Exec& e, const BackwardPhases& ph) {
  Plan pl = make_plan(p, resolve_threads(e), 2, ph.sums_only() || ph.given());
  if (overlaps(p, a.grad_x, a.grad_y) || overlaps(p, a.grad_x, a.x)) pl.stream = false;
  const KernelSet& k = active_kernels().by_dtype[(int)p.dtype];
  try {
    return p.dtype == DType::float64 ? run_backward<double>(p, a, e, pl, k, ph)
                                     : run_backward<float>(p, a, e, pl, k, ph);
  } catch (const std::bad_alloc&) {
    return {Status::out_of_memory, "out of memory"};
  }
}

}  // namespace
}  // namespace detail

using namespace detail;

std::size_t forward_workspace_bytes(const Problem& p, int num_threads) {
  if (!validate(p) || empty_call(p)) return 0;
  Exec e;
  e.num_threads = num_threads;
  std::size_t most = 0;
  for (bool one_phase : {false, true}) {  // the one-call plan, and the split-phase calls' plan
    const Plan pl = make_plan(p, resolve_threads(e), 1, one_phase);
    Arena ar;
    if (p.dtype == DType::float64) { Scratch<double> s{}; carve<double>(ar, pl, false, s); }
    else { Scratch<float> s{}; carve<float>(ar, pl, false, s); }
    most = std::max(most, ar.total());
  }
  return most;
}

std::size_t backward_workspace_bytes(const Problem& p, int num_threads) {
  if (!validate(p) || empty_call(p)) return 0;
  Exec e;
  e.num_threads = num_threads;
  std::size_t most = 0;
  for (bool one_phase : {false, true}) {  // the one-call plan, and the split-phase calls' plan
    const Plan pl = make_plan(p, resolve_threads(e), 2, one_phase);
    Arena ar;
    if (p.dtype == DType::float64) { Scratch<double> s{}; carve<double>(ar, pl, true, s); }
    else { Scratch<float> s{}; carve<float>(ar, pl, true, s); }
    most = std::max(most, ar.total());
  }
  return most;
}

Result forward(const Problem& p, const ForwardArgs& a, const Exec& e) {
  Result r = validate_args(p, a);
  if (!r) return r;
  if (empty_call(p)) {
    if (p.spatial == 0) fill_nan_stats(p, a.mean, a.rstd);
    return {};
  }
  return run_forward_phases(p, a, e, ForwardPhases());
}

Result backward(const Problem& p, const BackwardArgs& a, const Exec& e) {
  Result r = validate_args(p, a);
  if (!r) return r;
  if (empty_call(p)) {
    if (a.grad_weight || a.grad_bias)  // the caller's C entries
      for (std::int64_t c = 0; c < p.channels; ++c) {
        if (a.grad_weight) store_scalar(a.grad_weight, p.param_dtype, c, 0.0);
        if (a.grad_bias) store_scalar(a.grad_bias, p.param_dtype, c, 0.0);
      }
    return {};
  }
  return run_backward_phases(p, a, e, BackwardPhases());
}

// ------------------------------------------------------------ split phase
namespace {
Result fail(Status s, std::string m) { return {s, std::move(m)}; }

// Counts of merged moments are element counts: never negative.
Result check_counts(const std::int64_t* count, std::int64_t size, const std::string& what) {
  for (std::int64_t i = 0; i < size; ++i)
    if (count[i] < 0)
      return fail(Status::invalid_size, what + "[" + std::to_string(i) + "] is " + std::to_string(count[i]) +
                                            ": a count must be >= 0");
  return {};
}
}  // namespace

Result moments(const Problem& p, const MomentsArgs& m, const Exec& e) {
  Result r = validate_args(p, m);
  if (!r) return r;
  if (empty_call(p)) {  // no elements: every group's moments are the identity
    for (std::int64_t i = 0; i < p.batch * p.groups; ++i) { m.count[i] = 0; m.mean[i] = 0; m.m2[i] = 0; }
    return {};
  }
  ForwardArgs a;
  a.x = m.x; a.skip = m.skip; a.skip_bias = m.skip_bias;
  ForwardPhases ph;
  ph.phase = Phase::moments;
  ph.out = &m;
  return run_forward_phases(p, a, e, ph);
}

Result merge_moments(std::int64_t size, std::int64_t parts, const std::int64_t* const* counts,
                     const double* const* means, const double* const* m2s, std::int64_t* count, double* mean,
                     double* m2) {
  if (size < 0) return fail(Status::invalid_size, "size must be >= 0, got " + std::to_string(size));
  if (parts < 0) return fail(Status::invalid_size, "parts must be >= 0, got " + std::to_string(parts));
  if (size == 0) return {};
  if (!count || !mean || !m2) return fail(Status::null_pointer, "the count, mean and m2 outputs are required");
  if (parts > 0 && (!counts || !means || !m2s)) return fail(Status::null_pointer, "the part arrays are null");
  for (std::int64_t j = 0; j < parts; ++j) {
    if (!counts[j] || !means[j] || !m2s[j])
      return fail(Status::null_pointer, "part " + std::to_string(j) + " has a null array");
    Result r = check_counts(counts[j], size, "part " + std::to_string(j) + " count");
    if (!r) return r;
  }
  // counts add as integers (a double loses them above 2^53), checked before anything is written
  for (std::int64_t i = 0; i < size; ++i) {
    std::int64_t total = 0;
    for (std::int64_t j = 0; j < parts; ++j)
      if (__builtin_add_overflow(total, counts[j][i], &total))
        return fail(Status::size_overflow, "the merged count of entry " + std::to_string(i) +
                                               " does not fit in int64 (parts 0.." + std::to_string(j) + ")");
  }
  for (std::int64_t i = 0; i < size; ++i) {
    Moments acc;
    std::int64_t total = 0;
    for (std::int64_t j = 0; j < parts; ++j) {
      Moments b;
      b.n = (double)counts[j][i]; b.mean = means[j][i]; b.m2 = m2s[j][i];
      merge(acc, b);
      total += counts[j][i];
    }
    count[i] = total; mean[i] = acc.mean; m2[i] = acc.m2;
  }
  return {};
}

Result mean_rstd(std::int64_t size, const std::int64_t* count, const double* mean, const double* m2, double eps,
                 DType dtype, void* mean_out, void* rstd_out) {
  if (size < 0) return fail(Status::invalid_size, "size must be >= 0, got " + std::to_string(size));
  if (!std::isfinite(eps) || eps < 0)
    return fail(Status::invalid_eps, "eps must be finite and >= 0, got " + std::to_string(eps));
  if ((int)dtype < 0 || (int)dtype > 3) return fail(Status::invalid_dtype, "unknown dtype code " + std::to_string((int)dtype));
  if (size == 0) return {};
  if (!count || !mean || !m2) return fail(Status::null_pointer, "count, mean and m2 are required");
  Result r = check_counts(count, size, "count");
  if (!r) return r;
  const DType st = stats_dtype(dtype);
  for (std::int64_t i = 0; i < size; ++i) {
    Moments m;
    m.n = (double)count[i]; m.mean = mean[i]; m.m2 = m2[i];
    const bool empty = count[i] == 0;
    if (mean_out) store_scalar(mean_out, st, i, empty ? std::numeric_limits<double>::quiet_NaN() : m.mean);
    if (rstd_out) store_scalar(rstd_out, st, i, rstd_of(m, eps));
  }
  return {};
}

Result forward(const Problem& p, const ForwardArgs& a, const GivenStats& g, const Exec& e) {
  Result r = validate_args(p, a, g);
  if (!r) return r;
  const bool by_moments = g.count || g.mean || g.m2, by_stats = g.stats_mean || g.stats_rstd;
  if (by_moments && by_stats)
    return fail(Status::invalid_combination, "give either moments (count, mean, m2) or mean/rstd, not both");
  if (p.batch > 0 && (by_moments ? !(g.count && g.mean && g.m2) : !(g.stats_mean && g.stats_rstd)))
    return fail(Status::null_pointer, by_moments ? "moments need count, mean and m2" : "stats need mean and rstd");
  if (g.count) {
    r = check_counts(g.count, p.batch * p.groups, "count");
    if (!r) return r;
  }
  ForwardPhases ph;
  ph.phase = Phase::apply;
  ph.given = &g;
  if (empty_call(p)) {  // nothing to apply; the stats used still go out when asked
    const DType st = stats_dtype(p.dtype);
    for (std::int64_t ng = 0; ng < p.batch * p.groups; ++ng) {
      double mean, rstd;
      if (g.count) {
        Moments m;
        m.n = (double)g.count[ng]; m.mean = g.mean[ng]; m.m2 = g.m2[ng];
        mean = g.count[ng] == 0 ? std::numeric_limits<double>::quiet_NaN() : m.mean;
        rstd = rstd_of(m, p.eps);
      } else {
        mean = load_scalar(g.stats_mean, st, ng); rstd = load_scalar(g.stats_rstd, st, ng);
      }
      if (a.mean) store_scalar(a.mean, st, ng, mean);
      if (a.rstd) store_scalar(a.rstd, st, ng, rstd);
    }
    return {};
  }
  return run_forward_phases(p, a, e, ph);
}

Result backward_sums(const Problem& p, const BackwardArgs& a, double* sum_dz, double* sum_dz_xc, const Exec& e) {
  Result r = validate_args(p, a);
  if (!r) return r;
  if (p.batch > 0 && (!sum_dz || !sum_dz_xc)) return fail(Status::null_pointer, "sum_dz and sum_dz_xc are required");
  if (empty_call(p)) {
    std::fill(sum_dz, sum_dz + p.batch * p.channels, 0.0);
    std::fill(sum_dz_xc, sum_dz_xc + p.batch * p.channels, 0.0);
    return {};
  }
  BackwardArgs b = a;
  b.grad_x = nullptr; b.grad_weight = nullptr; b.grad_bias = nullptr;
  BackwardPhases ph;
  ph.out_dz = sum_dz; ph.out_dz_xc = sum_dz_xc;
  return run_backward_phases(p, b, e, ph);
}

Result merge_backward_sums(std::int64_t size, std::int64_t parts, const double* const* sum_dz,
                           const double* const* sum_dz_xc, double* out_dz, double* out_dz_xc) {
  if (size < 0) return fail(Status::invalid_size, "size must be >= 0, got " + std::to_string(size));
  if (parts < 0) return fail(Status::invalid_size, "parts must be >= 0, got " + std::to_string(parts));
  if (size == 0) return {};
  if (!out_dz || !out_dz_xc) return fail(Status::null_pointer, "the outputs are required");
  if (parts > 0 && (!sum_dz || !sum_dz_xc)) return fail(Status::null_pointer, "the part arrays are null");
  for (std::int64_t j = 0; j < parts; ++j)
    if (!sum_dz[j] || !sum_dz_xc[j]) return fail(Status::null_pointer, "part " + std::to_string(j) + " has a null array");
  for (std::int64_t i = 0; i < size; ++i) {
    double d = 0, q = 0;
    for (std::int64_t j = 0; j < parts; ++j) { d += sum_dz[j][i]; q += sum_dz_xc[j][i]; }
    out_dz[i] = d; out_dz_xc[i] = q;
  }
  return {};
}

Result backward(const Problem& p, const BackwardArgs& a, const double* sum_dz, const double* sum_dz_xc,
                std::int64_t total_spatial, const Exec& e) {
  Result r = validate_args(p, a);
  if (!r) return r;
  if (p.batch > 0 && (!sum_dz || !sum_dz_xc)) return fail(Status::null_pointer, "sum_dz and sum_dz_xc are required");
  if (total_spatial < p.spatial)
    return fail(Status::invalid_size, "total_spatial " + std::to_string(total_spatial) +
                                          " is smaller than the tile's spatial size " + std::to_string(p.spatial));
  BackwardPhases ph;
  ph.in_dz = sum_dz; ph.in_dz_xc = sum_dz_xc; ph.total_spatial = total_spatial;
  if (empty_call(p)) {  // no elements in this tile; it still owes the global grad_weight/grad_bias
    if (p.batch > 0 && (a.grad_weight || a.grad_bias) && !a.rstd) return fail(Status::null_pointer, "rstd is null");
    const DType st = stats_dtype(p.dtype);
    const std::int64_t Cg = p.channels / p.groups;
    for (std::int64_t c = 0; c < p.channels; ++c) {
      double gw = 0, gb = 0;
      for (std::int64_t n = 0; n < p.batch; ++n) {
        gw += load_scalar(a.rstd, st, n * p.groups + c / Cg) * sum_dz_xc[n * p.channels + c];
        gb += sum_dz[n * p.channels + c];
      }
      if (a.grad_weight) store_scalar(a.grad_weight, p.param_dtype, c, gw);
      if (a.grad_bias) store_scalar(a.grad_bias, p.param_dtype, c, gb);
    }
    return {};
  }
  return run_backward_phases(p, a, e, ph);
}

}  // namespace groupnorm
