// The CPU driver: cuts a call into tiles, runs them on threads, merges partial
// moments, and turns statistics into per-channel scale and shift.
//
// Tiles (shape-only, so results never depend on threads or batch size):
//   channels-first: a group is Cg rows of S contiguous elements. A tile is a
//     block of whole channels (when S < kChunk) or one piece of a channel.
//   channels-last: up to 2048 channels (whole groups) of a range of spatial
//     rows; the row count depends on the shape only.
// Each tile's partial moments come from a two-pass sum over the tile (see
// generic.hpp); partials merge with Chan's formula in tile order.
//
// Scheduling (free to depend on threads and cache; never changes results):
//   mode A: whole sets go to threads (channels-first: a few groups of one
//     sample; channels-last: one whole sample); a thread reads a set once
//     from memory for its moments and applies it from cache.
//   mode B: when sets are too few or too big, consecutive sets form a step
//     whose tiles are spread over all threads: moments, merge, apply, with
//     each thread applying the tiles it just summed.
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
#include "scalar.hpp"
#include "threads.hpp"

namespace groupnorm {
namespace detail {

const IsaKernels& active_kernels();  // dispatch.cpp

namespace {

constexpr std::int64_t kChunk = 16384;          // elements per tile, about
constexpr std::int64_t kSerialBytes = 96 << 10; // below this, run on the calling thread

struct Plan {
  std::int64_t N, C, G, S, Cg;
  bool cl;
  std::size_t esize;
  // tile grid of one group (cf) or one band (cl)
  std::int64_t pieces = 1, piece_len = 0, chans_per_tile = 1;  // cf
  std::int64_t rows_per_tile = 0, row_tiles = 1;               // cl
  std::int64_t sub_groups = 1, nsub = 1;                       // cl: groups per tile, tiles across a band
  std::int64_t tiles_per_group = 0;                            // cf: per group; cl: per band
  // sets
  std::int64_t band = 1, nbands = 1, nsets = 0;
  std::int64_t tiles_per_set = 0;
  std::int64_t moments_per_tile = 1;  // cf 1, cl band
  std::int64_t chans_per_set_tile = 1;  // channels a tile touches (for backward slots)
  int threads = 1;
  bool mode_a = true;
  bool stream = false;  // outputs bigger than the cache: non-temporal stores
  std::int64_t sets_per_step = 1;
  std::int64_t chunk_tiles = 1;  // mode B: tiles summed per round, so scratch never grows with x

  std::int64_t band_groups(std::int64_t b) const { return std::min(band, G - b * band); }
};

std::int64_t stream_threshold() {
  static const std::int64_t v = [] {
    const char* s = std::getenv("GROUPNORM_STREAM_BYTES");
    return s && *s ? std::atoll(s) : (std::int64_t)16 << 20;
  }();
  return v;
}

std::int64_t largest_divisor_at_most(std::int64_t n, std::int64_t cap) {
  for (std::int64_t d = std::min(n, std::max<std::int64_t>(cap, 1)); d > 1; --d)
    if (n % d == 0) return d;
  return 1;
}

Plan make_plan(const Problem& p, int threads, int streams) {
  Plan pl;
  pl.N = p.batch; pl.C = p.channels; pl.G = p.groups; pl.S = p.spatial;
  pl.Cg = p.channels / p.groups;
  pl.esize = dtype_size(p.dtype);
  // (N, C) with no spatial dims is the same memory in both layouts; the
  // channels-last kernels vectorize it across channels.
  pl.cl = p.channels_last || p.spatial == 1;
  const std::int64_t group_bytes = pl.Cg * pl.S * (std::int64_t)pl.esize * streams;
  if (!pl.cl) {
    if (pl.S >= kChunk) {
      pl.pieces = (pl.S + kChunk - 1) / kChunk;
      pl.piece_len = (pl.S + pl.pieces - 1) / pl.pieces;
      pl.piece_len = std::min(pl.S, (pl.piece_len + 63) / 64 * 64);
      pl.pieces = (pl.S + pl.piece_len - 1) / pl.piece_len;
      pl.chans_per_tile = 1;
      pl.tiles_per_group = pl.Cg * pl.pieces;
    } else {
      pl.piece_len = pl.S;
      pl.chans_per_tile = std::min(pl.Cg, std::max<std::int64_t>(1, kChunk / std::max<std::int64_t>(pl.S, 1)));
      pl.tiles_per_group = (pl.Cg + pl.chans_per_tile - 1) / pl.chans_per_tile;
    }
  } else {
    // rows per tile from the shape only: about 64K elements over min(C, 256) channels
    const std::int64_t width = std::min(pl.C, std::max<std::int64_t>(pl.Cg, 256));
    pl.rows_per_tile = std::min(pl.S, std::max<std::int64_t>(16, (4 * kChunk) / width));
    pl.rows_per_tile = std::max<std::int64_t>(pl.rows_per_tile, 1);
    pl.row_tiles = (pl.S + pl.rows_per_tile - 1) / pl.rows_per_tile;
  }

  const std::int64_t total_bytes = p.numel() * (std::int64_t)pl.esize * (streams + 1);
  int t = std::max(1, threads);
  if (total_bytes < kSerialBytes) t = 1;
  const std::int64_t budget = cache_budget(t);

  if (!pl.cl) {
    // several small groups per set keep per-set overhead low
    pl.band = std::max<std::int64_t>(1, std::min<std::int64_t>(pl.G, (64 << 10) / std::max<std::int64_t>(group_bytes, 1)));
    while (t > 1 && pl.band > 1 && pl.N * ((pl.G + pl.band - 1) / pl.band) < 4 * t) pl.band = (pl.band + 1) / 2;
    pl.band = largest_divisor_at_most(pl.G, pl.band);
  } else {
    // A band is the whole sample: every row read in full, front to back. Bands
    // of a few groups (to fit a cache) read each row in strided pieces, which
    // measured slower in every case, 2-3x slower with two threads on one sample
    // (they split the row between them); threads share a sample's rows instead
    // (mode B) when there are fewer samples than threads.
    pl.band = pl.G;
    // moments tiles span up to 2048 channels (whole groups)
    pl.sub_groups = largest_divisor_at_most(pl.band, std::max<std::int64_t>(1, 2048 / pl.Cg));
    pl.nsub = pl.band / pl.sub_groups;
    pl.tiles_per_group = pl.row_tiles * pl.nsub;
  }
  pl.nbands = (pl.G + pl.band - 1) / pl.band;
  pl.nsets = pl.N * pl.nbands;
  if (!pl.cl) {
    pl.tiles_per_set = pl.band * pl.tiles_per_group;
    pl.moments_per_tile = 1;
    pl.chans_per_set_tile = pl.chans_per_tile;
  } else {
    pl.tiles_per_set = pl.tiles_per_group;
    pl.moments_per_tile = pl.sub_groups;
    pl.chans_per_set_tile = pl.sub_groups * pl.Cg;
  }
  const std::int64_t set_bytes = pl.band * group_bytes;
  pl.stream = p.numel() * (std::int64_t)pl.esize >= stream_threshold();
  pl.threads = t;
  pl.mode_a = t == 1 || (pl.nsets >= t && (pl.nsets % t == 0 || pl.nsets >= 4 * t) && set_bytes <= budget);
  if (!pl.mode_a) {
    pl.sets_per_step = std::max<std::int64_t>(1, (budget * t) / std::max<std::int64_t>(set_bytes, 1));
    pl.sets_per_step = std::min(pl.sets_per_step, pl.nsets);
    pl.threads = (int)std::min<std::int64_t>(t, pl.sets_per_step * pl.tiles_per_set);  // no idle workers
    // a step's tiles are summed a chunk at a time (partials of about 1 MB at most,
    // at least 16 tiles a thread) and merged into running totals in tile order
    const std::int64_t tile_scratch = (std::int64_t)sizeof(Moments) * pl.moments_per_tile +
                                      (std::int64_t)sizeof(double) * 2 * pl.chans_per_set_tile;
    pl.chunk_tiles = std::max<std::int64_t>((std::int64_t)pl.threads * 16, (1 << 20) / tile_scratch);
    pl.chunk_tiles = std::min(pl.chunk_tiles, pl.sets_per_step * pl.tiles_per_set);
  } else {
    pl.threads = (int)std::min<std::int64_t>(t, std::max<std::int64_t>(pl.nsets, 1));
  }
  return pl;
}

// A tile of a set: where it starts, its shape, which groups/channels it covers.
struct TileRef {
  std::int64_t offset;     // element offset in x
  std::int64_t rows, cols, stride;
  std::int64_t chan0;      // first channel (n*C + c) it touches
  std::int64_t nchan;      // channels it touches
  std::int64_t group0;     // first group (n*G + g)
  std::int64_t chunk;      // index of the tile inside its group (cf) or band (cl): merge order
};

TileRef tile_of(const Plan& pl, std::int64_t set, std::int64_t t) {
  const std::int64_t n = set / pl.nbands, b = set % pl.nbands;
  const std::int64_t g0 = b * pl.band;
  TileRef r;
  if (!pl.cl) {
    const std::int64_t g = g0 + t / pl.tiles_per_group, j = t % pl.tiles_per_group;
    std::int64_t c, rows, cols, s0;
    if (pl.pieces > 1) {
      c = j / pl.pieces;
      const std::int64_t piece = j % pl.pieces;
      s0 = piece * pl.piece_len;
      rows = 1;
      cols = std::min(pl.piece_len, pl.S - s0);
    } else {
      c = j * pl.chans_per_tile;
      s0 = 0;
      rows = std::min(pl.chans_per_tile, pl.Cg - c);
      cols = pl.S;
    }
    r.chan0 = n * pl.C + g * pl.Cg + c;
    r.offset = r.chan0 * pl.S + s0;
    r.rows = rows; r.cols = cols; r.stride = pl.S;
    r.nchan = rows;
    r.group0 = n * pl.G + g;
    r.chunk = j;
  } else {
    const std::int64_t rc = t / pl.nsub, sub = t % pl.nsub;
    const std::int64_t r0 = rc * pl.rows_per_tile, gs = g0 + sub * pl.sub_groups;
    r.rows = std::min(pl.rows_per_tile, pl.S - r0);
    r.cols = pl.sub_groups * pl.Cg;
    r.stride = pl.C;
    r.offset = (n * pl.S + r0) * pl.C + gs * pl.Cg;
    r.chan0 = n * pl.C + gs * pl.Cg;
    r.nchan = r.cols;
    r.group0 = n * pl.G + gs;
    r.chunk = rc;
  }
  return r;
}

std::int64_t set_groups(const Plan& pl, std::int64_t set) { return pl.band_groups(set % pl.nbands); }

// Channels-last elementwise passes (apply) have no summation order to keep, so
// a thread applies whole rows of its band, rows_per_tile at a time: full-width
// contiguous runs instead of the moments tiles' sub-bands.
TileRef band_rows(const Plan& pl, std::int64_t set, std::int64_t rc) {
  TileRef r = tile_of(pl, set, rc * pl.nsub);
  r.cols = pl.band_groups(set % pl.nbands) * pl.Cg;
  r.nchan = r.cols;
  return r;
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
  A* worker;                      // per worker: 4 * C
  Moments* running;               // per worker: 2 * G
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
  s.worker = ar.template take<A>((std::int64_t)pl.threads * 6 * pl.C);
  s.running = ar.template take<Moments>((std::int64_t)pl.threads * 2 * pl.G);
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
  t.scratch = s.worker + (std::int64_t)worker * 6 * pl.C;
  return t;
}

inline const char* cptr(const void* p, std::int64_t off, std::size_t es) {
  return p ? static_cast<const char*>(p) + off * (std::int64_t)es : nullptr;
}
inline char* mptr(void* p, std::int64_t off, std::size_t es) {
  return p ? static_cast<char*>(p) + off * (std::int64_t)es : nullptr;
}

// ---------------------------------------------------------------- forward
// Below this, var + eps may have lost its precision in the fast sums (squares
// of deviations under A's normal range); the group is then recomputed exactly.
template <class A> struct kTinyVar;
template <> struct kTinyVar<float> { static constexpr double value = 0x1p-100; };
template <> struct kTinyVar<double> { static constexpr double value = 0x1p-1000; };

struct GroupStats {
  double mean, rstd;
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
    r.rstd = std::numeric_limits<double>::quiet_NaN();
    return r;
  }
  if (lo == hi) {
    r.constant = true;
    r.mean = r.center = lo;
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
  const double eps_k = std::ldexp(p.eps, -2 * e);
  // var + eps = (var_k + eps k^2) / k^2 with k = 2^-e; when eps k^2 overflows,
  // var is nothing next to eps
  r.rstd = std::isinf(eps_k) ? 1.0 / std::sqrt(p.eps) : std::ldexp(1.0 / std::sqrt(var + eps_k), -e);
  const double big = (double)std::numeric_limits<A>::max() / 2;
  r.center = (hi - r.mean > big || r.mean - lo > big) ? lo / 2 + hi / 2 : r.mean;
  return r;
}

template <class A> struct Forward {
  const Problem& p;
  const ForwardArgs& a;
  const Plan& pl;
  const KernelSet& k;
  Scratch<A>& s;

  Tile tile(const TileRef& r, int worker) const {
    Tile t = make_tile<A>(p, pl, r, s, a.x, worker);
    t.skip = cptr(a.skip, r.offset, pl.esize);
    if (!a.skip || !a.skip_bias) t.skip_bias = nullptr;
    t.y = mptr(a.y, r.offset, pl.esize);
    t.sum_out = mptr(a.sum_out, r.offset, pl.esize);
    return t;
  }

  // statistics of group ng -> per-channel mean/scale/shift
  void finish_group(std::int64_t ng, const Moments& m) const {
    const double var = m.m2 / m.n;
    double mean = m.mean, rstd, center = m.mean;
    bool constant = m.m2 == 0;
    if (!(std::isfinite(mean) && std::isfinite(var)) || !(var + p.eps >= kTinyVar<A>::value)) {
      // rare: the fast sums overflowed A (|x| beyond ~1e19 in float), or the
      // variance is below A's normal range, or the data holds NaN/Inf
      const GroupStats gs = exact_group_stats<A>(p, a, pl, s.skip_bias, ng);
      mean = gs.mean;
      rstd = gs.rstd;
      center = gs.center;
      constant = gs.constant;
    } else {
      rstd = 1.0 / std::sqrt(var + p.eps);
    }
    s.gmean[ng] = mean;
    s.grstd[ng] = rstd;
    const std::int64_t n = ng / pl.G, g = ng % pl.G;
    for (std::int64_t c = g * pl.Cg; c < (g + 1) * pl.Cg; ++c) {
      const double w = a.weight ? load_scalar(a.weight, p.param_dtype, c) : 1.0;
      const double b = a.bias ? load_scalar(a.bias, p.param_dtype, c) : 0.0;
      // the part of the mean that A cannot hold goes into the shift:
      // (x - hi) * scale + (b - lo * scale), so large offsets cost no accuracy
      const A hi = (A)center;
      const double lo = mean - (double)hi;
      double scale = w * rstd;
      // weight * rstd beyond A's range (a spread below ~1e-38 in float, or a
      // tiny eps): a constant group is still exactly the bias (0 * inf would
      // be NaN); any other group is NaN rather than a wrong finite value
      if (std::isfinite(rstd) && !std::isfinite((double)(A)scale))
        scale = constant ? 0.0 : std::numeric_limits<double>::quiet_NaN();
      s.mean_c[n * pl.C + c] = hi;
      s.scale_c[n * pl.C + c] = (A)scale;
      s.shift_c[n * pl.C + c] = (A)(b - lo * scale);
    }
  }

  void set_mode_a(std::int64_t set, int worker) const {
    const std::int64_t ngr = set_groups(pl, set);
    if (!pl.cl) {
      for (std::int64_t gi = 0; gi < ngr; ++gi) {
        const std::int64_t t0 = gi * pl.tiles_per_group;
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
        for (std::int64_t t = t0; t < t0 + pl.tiles_per_group; ++t) k.apply(tile(tile_of(pl, set, t), worker));
      }
    } else {
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
      for (std::int64_t rc = 0; rc < pl.row_tiles; ++rc) k.apply(tile(band_rows(pl, set, rc), worker));
    }
  }
};

template <class A> Result run_forward(const Problem& p, const ForwardArgs& a, const Exec& e, const Plan& pl,
                                      const KernelSet& k) {
  return with_scratch<A>(pl, false, e, [&](Scratch<A>& s) {
    for (std::int64_t c = 0; c < pl.C; ++c)
      s.skip_bias[c] = (A)(a.skip_bias ? load_scalar(a.skip_bias, p.param_dtype, c) : 0.0);
    Forward<A> f{p, a, pl, k, s};
    if (pl.mode_a) {
      const int T = pl.threads;
      run_workers(e, T, [&](int w) {
        const std::int64_t b = pl.nsets * w / T, en = pl.nsets * (w + 1) / T;
        for (std::int64_t set = b; set < en; ++set) f.set_mode_a(set, w);
      });
    } else {
      const int T = pl.threads;
      for (std::int64_t s0 = 0; s0 < pl.nsets; s0 += pl.sets_per_step) {
        const std::int64_t s1 = std::min(pl.nsets, s0 + pl.sets_per_step);
        const std::int64_t ntiles = (s1 - s0) * pl.tiles_per_set;
        auto range = [&](int w, std::int64_t& b, std::int64_t& en) {
          b = ntiles * w / T; en = ntiles * (w + 1) / T;
        };
        // sums a chunk of tiles at a time; partials merge into the step's running
        // totals in tile order, so each group sees its tiles in order
        Moments* run = s.step_run;
        for (std::int64_t i = 0; i < (s1 - s0) * pl.band; ++i) run[i] = Moments();
        for (std::int64_t c0 = 0; c0 < ntiles; c0 += pl.chunk_tiles) {
          const std::int64_t nc = std::min(pl.chunk_tiles, ntiles - c0);
          run_workers(e, T, [&](int w) {
            for (std::int64_t i = c0 + nc * w / T; i < c0 + nc * (w + 1) / T; ++i) {
              const TileRef r = tile_of(pl, s0 + i / pl.tiles_per_set, i % pl.tiles_per_set);
              k.moments(f.tile(r, w), s.slots + (i - c0) * pl.moments_per_tile);
            }
          });
          for (std::int64_t i = c0; i < c0 + nc; ++i) {
            const std::int64_t set = s0 + i / pl.tiles_per_set;
            const TileRef r = tile_of(pl, set, i % pl.tiles_per_set);
            Moments* dst = run + (set - s0) * pl.band + (r.group0 - tile_of(pl, set, 0).group0);
            for (std::int64_t gi = 0; gi < pl.moments_per_tile; ++gi)
              merge(dst[gi], s.slots[(i - c0) * pl.moments_per_tile + gi]);
          }
        }
        for (std::int64_t set = s0; set < s1; ++set) {
          const std::int64_t group0 = tile_of(pl, set, 0).group0;
          for (std::int64_t gi = 0; gi < set_groups(pl, set); ++gi)
            f.finish_group(group0 + gi, run[(set - s0) * pl.band + gi]);
        }
        run_workers(e, T, [&](int w) {
          std::int64_t b, en;
          range(w, b, en);
          for (std::int64_t i = b; i < en; ++i)
            k.apply(f.tile(tile_of(pl, s0 + i / pl.tiles_per_set, i % pl.tiles_per_set), w));
        });
      }
    }
    const DType st = stats_dtype(p.dtype);
    for (std::int64_t i = 0; i < pl.N * pl.G; ++i) {
      if (a.mean) store_scalar(a.mean, st, i, s.gmean[i]);
      if (a.rstd) store_scalar(a.rstd, st, i, s.grstd[i]);
    }
  });
}

// ---------------------------------------------------------------- backward
template <class A> struct Backward {
  const Problem& p;
  const BackwardArgs& a;
  const Plan& pl;
  const KernelSet& k;
  Scratch<A>& s;

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
    const double D = (double)pl.Cg * (double)pl.S;
    const double c2 = -rstd * rstd * rstd * s2 / D;
    const double c3 = -rstd * s1 / D;
    for (std::int64_t c = g * pl.Cg; c < (g + 1) * pl.Cg; ++c) {
      s.c2_c[n * pl.C + c] = (A)c2;
      s.c3_c[n * pl.C + c] = (A)c3;
    }
  }

  void set_mode_a(std::int64_t set, int worker) const {
    const std::int64_t ngr = set_groups(pl, set);
    std::int64_t group0 = tile_of(pl, set, 0).group0;
    if (!pl.cl) {
      for (std::int64_t gi = 0; gi < ngr; ++gi) {
        const std::int64_t t0 = gi * pl.tiles_per_group;
        for (std::int64_t t = t0; t < t0 + pl.tiles_per_group; ++t) {
          const TileRef r = tile_of(pl, set, t);
          k.backward_sums(tile(r, worker), s.db + r.chan0, s.ds + r.chan0);
        }
        finish_group(group0 + gi);
        if (a.grad_x)
          for (std::int64_t t = t0; t < t0 + pl.tiles_per_group; ++t) k.backward_apply(tile(tile_of(pl, set, t), worker));
      }
    } else {
      for (std::int64_t t = 0; t < pl.tiles_per_set; ++t) {
        const TileRef r = tile_of(pl, set, t);
        k.backward_sums(tile(r, worker), s.db + r.chan0, s.ds + r.chan0);
      }
      for (std::int64_t gi = 0; gi < ngr; ++gi) finish_group(group0 + gi);
      if (a.grad_x)
        for (std::int64_t rc = 0; rc < pl.row_tiles; ++rc) k.backward_apply(tile(band_rows(pl, set, rc), worker));
    }
  }
};

template <class A> Result run_backward(const Problem& p, const BackwardArgs& a, const Exec& e, const Plan& pl,
                                       const KernelSet& k) {
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
        s.db[n * pl.C + c] = 0;
        s.ds[n * pl.C + c] = 0;
      }
    }
    Backward<A> bw{p, a, pl, k, s};
    const int T = pl.threads;
    if (pl.mode_a) {
      run_workers(e, T, [&](int w) {
        const std::int64_t b = pl.nsets * w / T, en = pl.nsets * (w + 1) / T;
        for (std::int64_t set = b; set < en; ++set) bw.set_mode_a(set, w);
      });
    } else {
      const std::int64_t ct = pl.chans_per_set_tile;
      for (std::int64_t s0 = 0; s0 < pl.nsets; s0 += pl.sets_per_step) {
        const std::int64_t s1 = std::min(pl.nsets, s0 + pl.sets_per_step);
        const std::int64_t ntiles = (s1 - s0) * pl.tiles_per_set;
        for (std::int64_t c0 = 0; c0 < ntiles; c0 += pl.chunk_tiles) {  // a chunk of tiles at a time
          const std::int64_t nc = std::min(pl.chunk_tiles, ntiles - c0);
          run_workers(e, T, [&](int w) {
            for (std::int64_t i = c0 + nc * w / T; i < c0 + nc * (w + 1) / T; ++i) {
              const TileRef r = tile_of(pl, s0 + i / pl.tiles_per_set, i % pl.tiles_per_set);
              double* db = s.slot_db + (i - c0) * ct;
              double* ds = s.slot_ds + (i - c0) * ct;
              std::fill(db, db + r.nchan, 0.0);
              std::fill(ds, ds + r.nchan, 0.0);
              k.backward_sums(bw.tile(r, w), db, ds);
            }
          });
          for (std::int64_t i = c0; i < c0 + nc; ++i) {  // tile order = merge order
            const TileRef r = tile_of(pl, s0 + i / pl.tiles_per_set, i % pl.tiles_per_set);
            for (std::int64_t c = 0; c < r.nchan; ++c) {
              s.db[r.chan0 + c] += s.slot_db[(i - c0) * ct + c];
              s.ds[r.chan0 + c] += s.slot_ds[(i - c0) * ct + c];
            }
          }
        }
        for (std::int64_t set = s0; set < s1; ++set) {
          const std::int64_t group0 = tile_of(pl, set, 0).group0;
          for (std::int64_t gi = 0; gi < set_groups(pl, set); ++gi) bw.finish_group(group0 + gi);
        }
        if (a.grad_x)
          run_workers(e, T, [&](int w) {
            const std::int64_t b = ntiles * w / T, en = ntiles * (w + 1) / T;
            for (std::int64_t i = b; i < en; ++i)
              k.backward_apply(bw.tile(tile_of(pl, s0 + i / pl.tiles_per_set, i % pl.tiles_per_set), w));
          });
      }
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

std::size_t forward_workspace_bytes(const Problem& p, int num_threads) {
  if (!validate(p) || empty_call(p)) return 0;
  Exec e;
  e.num_threads = num_threads;
  const Plan pl = make_plan(p, resolve_threads(e), 1);
  Arena ar;
  if (p.dtype == DType::float64) { Scratch<double> s{}; carve<double>(ar, pl, false, s); }
  else { Scratch<float> s{}; carve<float>(ar, pl, false, s); }
  return ar.total();
}

std::size_t backward_workspace_bytes(const Problem& p, int num_threads) {
  if (!validate(p) || empty_call(p)) return 0;
  Exec e;
  e.num_threads = num_threads;
  const Plan pl = make_plan(p, resolve_threads(e), 2);
  Arena ar;
  if (p.dtype == DType::float64) { Scratch<double> s{}; carve<double>(ar, pl, true, s); }
  else { Scratch<float> s{}; carve<float>(ar, pl, true, s); }
  return ar.total();
}

Result forward(const Problem& p, const ForwardArgs& a, const Exec& e) {
  Result r = validate_args(p, a);
  if (!r) return r;
  if (empty_call(p)) {
    if (p.spatial == 0) fill_nan_stats(p, a.mean, a.rstd);
    return {};
  }
  const Plan pl = make_plan(p, resolve_threads(e), 1);
  const KernelSet& k = active_kernels().by_dtype[(int)p.dtype];
  try {
    return p.dtype == DType::float64 ? run_forward<double>(p, a, e, pl, k) : run_forward<float>(p, a, e, pl, k);
  } catch (const std::bad_alloc&) {
    return {Status::out_of_memory, "out of memory"};
  }
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
  const Plan pl = make_plan(p, resolve_threads(e), 2);
  const KernelSet& k = active_kernels().by_dtype[(int)p.dtype];
  try {
    return p.dtype == DType::float64 ? run_backward<double>(p, a, e, pl, k) : run_backward<float>(p, a, e, pl, k);
  } catch (const std::bad_alloc&) {
    return {Status::out_of_memory, "out of memory"};
  }
}

}  // namespace groupnorm
