// Internal: the plan of a CPU call, pure geometry and thresholds, no data.
//
// Tiles (shape-only, so results never depend on threads or batch size):
//   channels-first: a group is Cg rows of S contiguous elements. A tile is a
//     block of whole channels (when S < kChunk) or one piece of a channel.
//   channels-last: up to kTileChannels channels (whole groups) of a range of
//     spatial rows; the row count depends on the shape only.
// A group's tiles are summed and merged in tile order (the `chunk` index).
//
// Scheduling (free to depend on threads and cache; never changes results):
//   mode A: whole sets go to threads (channels-first: a few groups of one
//     sample; channels-last: one whole sample); a thread reads a set once
//     from memory for its moments and applies it from cache.
//   mode B: when sets are too few or too big, consecutive sets form a step
//     whose tiles are spread over all threads: moments, merge, apply, with
//     each thread applying the tiles it just summed.
// All sizes are int64: plans of tensors over 2^31 elements are exact
// (cpp/tests/test_plan.cpp checks them without data).
#pragma once

#include <algorithm>
#include <cstdint>

#include "groupnorm/groupnorm.hpp"
#include "kernels.hpp"

namespace groupnorm {
namespace detail {

// Elements per moments tile, about: 64 KB of float32, big enough that a tile's
// fixed cost (a call, a partial, a merge) is noise, small enough for L1/L2.
constexpr std::int64_t kChunk = 16384;
// Calls moving less than this run on the calling thread: waking threads costs more.
constexpr std::int64_t kSerialBytes = 96 << 10;
// Channels-first sets hold groups up to this many bytes: per-set overhead stays low.
constexpr std::int64_t kSetBytes = 64 << 10;
// Channels-last moments tiles span at most this many channels (whole groups):
// the per-channel accumulators stay in registers/L1.
constexpr std::int64_t kTileChannels = 2048;
// Mode B sums a step's tiles in chunks whose partials take about this much scratch.
constexpr std::int64_t kChunkScratch = 1 << 20;

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
  std::int64_t set_bytes = 0;  // the bytes of one set (all its streams)
  std::int64_t sets_per_step = 1;
  std::int64_t chunk_tiles = 1;  // mode B: tiles summed per round, so scratch never grows with x

  std::int64_t band_groups(std::int64_t b) const { return std::min(band, G - b * band); }
};

inline std::int64_t largest_divisor_at_most(std::int64_t n, std::int64_t cap) {
  for (std::int64_t d = std::min(n, std::max<std::int64_t>(cap, 1)); d > 1; --d)
    if (n % d == 0) return d;
  return 1;
}

// The plan of a call on `threads` threads whose outputs and inputs make `streams`
// streams of x's size (forward 1, backward 2), on a machine whose per-thread
// cache budget for t threads is budget(t) and whose non-temporal-store threshold
// is stream_bytes. Pure: no data, no environment (testable on any shape).
// one_phase: the call runs one pass over x (moments alone, or apply alone), so
// there is no cache reuse to plan for: sets go to threads whatever their size,
// and mode B runs all sets as one step (fewest barriers).
inline Plan make_plan(const Problem& p, int threads, int streams, std::int64_t (*budget_of)(int),
                      std::int64_t stream_bytes, bool one_phase = false) {
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
  const std::int64_t budget = budget_of(t);

  if (!pl.cl) {
    // several small groups per set keep per-set overhead low
    pl.band = std::max<std::int64_t>(1, std::min<std::int64_t>(pl.G, kSetBytes / std::max<std::int64_t>(group_bytes, 1)));
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
    pl.sub_groups = largest_divisor_at_most(pl.band, std::max<std::int64_t>(1, kTileChannels / pl.Cg));
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
  pl.set_bytes = set_bytes;
  pl.stream = p.numel() * (std::int64_t)pl.esize >= stream_bytes;
  pl.threads = t;
  pl.mode_a = t == 1 || (pl.nsets >= t && (pl.nsets % t == 0 || pl.nsets >= 4 * t) &&
                          (one_phase || set_bytes <= budget));
  if (!pl.mode_a) {
    pl.sets_per_step = one_phase ? pl.nsets : std::max<std::int64_t>(1, (budget * t) / std::max<std::int64_t>(set_bytes, 1));
    pl.sets_per_step = std::min(pl.sets_per_step, pl.nsets);
    pl.threads = (int)std::min<std::int64_t>(t, pl.sets_per_step * pl.tiles_per_set);  // no idle workers
    // a step's tiles are summed a chunk at a time (partials of about 1 MB at most,
    // at least 16 tiles a thread) and merged into running totals in tile order
    const std::int64_t tile_scratch = (std::int64_t)sizeof(Moments) * pl.moments_per_tile +
                                      (std::int64_t)sizeof(double) * 2 * pl.chans_per_set_tile;
    pl.chunk_tiles = std::max<std::int64_t>((std::int64_t)pl.threads * 16, kChunkScratch / tile_scratch);
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

inline TileRef tile_of(const Plan& pl, std::int64_t set, std::int64_t t) {
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

inline std::int64_t set_groups(const Plan& pl, std::int64_t set) { return pl.band_groups(set % pl.nbands); }

// Channels-last elementwise passes (apply) have no summation order to keep, so
// a thread applies whole rows of its band, rows_per_tile at a time: full-width
// contiguous runs instead of the moments tiles' sub-bands.
inline TileRef band_rows(const Plan& pl, std::int64_t set, std::int64_t rc) {
  TileRef r = tile_of(pl, set, rc * pl.nsub);
  r.cols = pl.band_groups(set % pl.nbands) * pl.Cg;
  r.nchan = r.cols;
  return r;
}

}  // namespace detail
}  // namespace groupnorm
