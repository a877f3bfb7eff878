// Internal: the plan of a CPU call, pure geometry and thresholds, no data.
//
// Tiles (shape-only, so results never depend on threads or batch size):
//   channels-first: a group is group_channels rows of S contiguous elements. A
//     tile is a block of whole channels (when S < kTileElements) or one piece
//     of a channel.
//   channels-last: up to kTileChannels channels (whole groups) of a range of
//     spatial rows; the row count depends on the shape only.
// A group's tiles are summed and merged in tile order.
//
// Sets: consecutive groups of one sample (channels-first: a few groups, as
// many as fit kSetBytes; channels-last: the whole sample). The plan also picks
// the schedule walk.hpp runs (free to depend on threads and cache; never
// changes results): whole sets when there are enough sets for the threads and
// a set fits a thread's cache budget, else shared steps of as many sets as fit
// all threads' budgets.
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
constexpr std::int64_t kTileElements = 16384;
// Calls moving less than this run on the calling thread: waking threads costs more.
constexpr std::int64_t kSerialBytes = 96 << 10;
// Channels-first sets hold groups up to this many bytes: per-set overhead stays low.
constexpr std::int64_t kSetBytes = 64 << 10;
// Channels-last moments tiles span at most this many channels (whole groups):
// the per-channel accumulators stay in registers/L1.
constexpr std::int64_t kTileChannels = 2048;
// Shared steps sum a step's tiles a round at a time; a round's partials take
// about this much scratch.
constexpr std::int64_t kRoundScratch = 1 << 20;

struct Plan {
  std::int64_t N, C, G, S;
  std::int64_t group_channels;  // channels per group, C / G
  bool channels_last;           // also (N, C) without spatial dims: the same memory
  std::size_t elem_bytes;
  // tile grid
  std::int64_t pieces = 1, piece_len = 0, channels_per_tile = 1;  // cf: a channel's pieces, or whole channels
  std::int64_t rows_per_tile = 0, row_tiles = 1;                  // cl: spatial rows of a tile, tiles down a sample
  std::int64_t tile_groups = 1, tiles_across = 1;                 // cl: groups per tile, tiles across a sample
  std::int64_t tiles_per_group = 0;                               // cf: of one group; cl: of one set
  // sets
  std::int64_t groups_per_set = 1, sets_per_sample = 1, num_sets = 0;
  std::int64_t tiles_per_set = 0;
  std::int64_t groups_per_tile = 1;    // cf 1, cl tile_groups
  std::int64_t max_tile_channels = 1;  // channels a tile touches, at most (the backward's slots)
  int threads = 1;
  bool whole_sets = true;        // else shared steps
  bool stream_outputs = false;   // outputs bigger than the cache: non-temporal stores
  bool prefetch_rows = false;    // channels-last sums request rows ahead (data beyond the L3)
  std::int64_t set_bytes = 0;    // the bytes of one set (all its streams)
  std::int64_t sets_per_step = 1;
  std::int64_t tiles_per_round = 1;  // shared steps: tiles summed per round, so scratch never grows with x
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
// and shared steps run all sets as one step (fewest barriers).
inline Plan make_plan(const Problem& p, int threads, int streams, std::int64_t (*budget_of)(int),
                      std::int64_t stream_bytes, bool one_phase = false) {
  Plan pl;
  pl.N = p.batch; pl.C = p.channels; pl.G = p.groups; pl.S = p.spatial;
  pl.group_channels = p.channels / p.groups;
  pl.elem_bytes = dtype_size(p.dtype);
  // (N, C) with no spatial dims is the same memory in both layouts; the
  // channels-last kernels vectorize it across channels.
  pl.channels_last = p.channels_last || p.spatial == 1;
  const std::int64_t group_bytes = pl.group_channels * pl.S * (std::int64_t)pl.elem_bytes * streams;
  if (!pl.channels_last) {
    if (pl.S >= kTileElements) {
      pl.pieces = (pl.S + kTileElements - 1) / kTileElements;
      pl.piece_len = (pl.S + pl.pieces - 1) / pl.pieces;
      pl.piece_len = std::min(pl.S, (pl.piece_len + 63) / 64 * 64);
      pl.pieces = (pl.S + pl.piece_len - 1) / pl.piece_len;
      pl.channels_per_tile = 1;
      pl.tiles_per_group = pl.group_channels * pl.pieces;
    } else {
      pl.piece_len = pl.S;
      pl.channels_per_tile =
          std::min(pl.group_channels, std::max<std::int64_t>(1, kTileElements / std::max<std::int64_t>(pl.S, 1)));
      pl.tiles_per_group = (pl.group_channels + pl.channels_per_tile - 1) / pl.channels_per_tile;
    }
  } else {
    // rows per tile from the shape only: about 64K elements over min(C, 256) channels
    const std::int64_t width = std::min(pl.C, std::max<std::int64_t>(pl.group_channels, 256));
    pl.rows_per_tile = std::min(pl.S, std::max<std::int64_t>(16, (4 * kTileElements) / width));
    pl.rows_per_tile = std::max<std::int64_t>(pl.rows_per_tile, 1);
    pl.row_tiles = (pl.S + pl.rows_per_tile - 1) / pl.rows_per_tile;
  }

  const std::int64_t total_bytes = p.numel() * (std::int64_t)pl.elem_bytes * (streams + 1);
  int t = std::max(1, threads);
  if (total_bytes < kSerialBytes) t = 1;
  const std::int64_t budget = budget_of(t);

  if (!pl.channels_last) {
    // several small groups per set keep per-set overhead low
    std::int64_t& gps = pl.groups_per_set;
    gps = std::max<std::int64_t>(1, std::min<std::int64_t>(pl.G, kSetBytes / std::max<std::int64_t>(group_bytes, 1)));
    while (t > 1 && gps > 1 && pl.N * ((pl.G + gps - 1) / gps) < 4 * t) gps = (gps + 1) / 2;
    pl.groups_per_set = largest_divisor_at_most(pl.G, pl.groups_per_set);
  } else {
    // A set is the whole sample: every row read in full, front to back (sets
    // of a few groups would read each row in strided pieces, which measured
    // slower: bench/results); threads share a sample's rows instead (shared
    // steps) when there are fewer samples than threads.
    pl.groups_per_set = pl.G;
    // moments tiles span up to 2048 channels (whole groups)
    pl.tile_groups =
        largest_divisor_at_most(pl.groups_per_set, std::max<std::int64_t>(1, kTileChannels / pl.group_channels));
    pl.tiles_across = pl.groups_per_set / pl.tile_groups;
    pl.tiles_per_group = pl.row_tiles * pl.tiles_across;
  }
  pl.sets_per_sample = (pl.G + pl.groups_per_set - 1) / pl.groups_per_set;
  pl.num_sets = pl.N * pl.sets_per_sample;
  if (!pl.channels_last) {
    pl.tiles_per_set = pl.groups_per_set * pl.tiles_per_group;
    pl.groups_per_tile = 1;
    pl.max_tile_channels = pl.channels_per_tile;
  } else {
    pl.tiles_per_set = pl.tiles_per_group;
    pl.groups_per_tile = pl.tile_groups;
    pl.max_tile_channels = pl.tile_groups * pl.group_channels;
  }
  const std::int64_t set_bytes = pl.groups_per_set * group_bytes;
  pl.set_bytes = set_bytes;
  pl.stream_outputs = p.numel() * (std::int64_t)pl.elem_bytes >= stream_bytes;
  pl.threads = t;
  pl.whole_sets = t == 1 || (pl.num_sets >= t && (pl.num_sets % t == 0 || pl.num_sets >= 4 * t) &&
                             (one_phase || set_bytes <= budget));
  if (!pl.whole_sets) {
    pl.sets_per_step =
        one_phase ? pl.num_sets : std::max<std::int64_t>(1, (budget * t) / std::max<std::int64_t>(set_bytes, 1));
    pl.sets_per_step = std::min(pl.sets_per_step, pl.num_sets);
    pl.threads = (int)std::min<std::int64_t>(t, pl.sets_per_step * pl.tiles_per_set);  // no idle workers
    // a step's tiles are summed a round at a time (partials of about 1 MB at most,
    // at least 16 tiles a thread) and merged into running totals in tile order
    const std::int64_t tile_scratch = (std::int64_t)sizeof(Moments) * pl.groups_per_tile +
                                      (std::int64_t)sizeof(double) * 2 * pl.max_tile_channels;
    pl.tiles_per_round = std::max<std::int64_t>((std::int64_t)pl.threads * 16, kRoundScratch / tile_scratch);
    pl.tiles_per_round = std::min(pl.tiles_per_round, pl.sets_per_step * pl.tiles_per_set);
  } else {
    pl.threads = (int)std::min<std::int64_t>(t, std::max<std::int64_t>(pl.num_sets, 1));
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
};

inline TileRef tile_of(const Plan& pl, std::int64_t set, std::int64_t t) {
  const std::int64_t n = set / pl.sets_per_sample, b = set % pl.sets_per_sample;
  const std::int64_t g0 = b * pl.groups_per_set;
  TileRef r;
  if (!pl.channels_last) {
    const std::int64_t g = g0 + t / pl.tiles_per_group, j = t % pl.tiles_per_group;
    std::int64_t c, rows, cols, s0;
    if (pl.pieces > 1) {
      c = j / pl.pieces;
      const std::int64_t piece = j % pl.pieces;
      s0 = piece * pl.piece_len;
      rows = 1;
      cols = std::min(pl.piece_len, pl.S - s0);
    } else {
      c = j * pl.channels_per_tile;
      s0 = 0;
      rows = std::min(pl.channels_per_tile, pl.group_channels - c);
      cols = pl.S;
    }
    r.chan0 = n * pl.C + g * pl.group_channels + c;
    r.offset = r.chan0 * pl.S + s0;
    r.rows = rows; r.cols = cols; r.stride = pl.S;
    r.nchan = rows;
    r.group0 = n * pl.G + g;
  } else {
    const std::int64_t rc = t / pl.tiles_across, sub = t % pl.tiles_across;
    const std::int64_t r0 = rc * pl.rows_per_tile, gs = g0 + sub * pl.tile_groups;
    r.rows = std::min(pl.rows_per_tile, pl.S - r0);
    r.cols = pl.tile_groups * pl.group_channels;
    r.stride = pl.C;
    r.offset = (n * pl.S + r0) * pl.C + gs * pl.group_channels;
    r.chan0 = n * pl.C + gs * pl.group_channels;
    r.nchan = r.cols;
    r.group0 = n * pl.G + gs;
  }
  return r;
}

// Channels-last elementwise passes (apply) have no summation order to keep, so
// a thread applies whole rows of its set, rows_per_tile at a time: full-width
// contiguous runs instead of the moments tiles' column blocks.
inline TileRef apply_rows(const Plan& pl, std::int64_t set, std::int64_t rc) {
  TileRef r = tile_of(pl, set, rc * pl.tiles_across);
  r.cols = pl.groups_per_set * pl.group_channels;
  r.nchan = r.cols;
  return r;
}

}  // namespace detail
}  // namespace groupnorm
