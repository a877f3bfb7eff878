// Internal: what the per-instruction-set kernels look like to the scheduler.
//
// A tile is a 2-D block of one sample: `rows` rows of `cols` elements, rows
// `stride` elements apart. Channels-first tiles are channels x spatial (the
// channel is the row); channels-last tiles are spatial x channels (the channel
// is the column). Per-channel parameters are arrays in the accumulation type A
// (float, or double for float64 data), indexed from the tile's first channel.
#pragma once

#include <cstdint>

#include "../chan.hpp"

namespace groupnorm {
namespace detail {

// Partial moments of a set of elements: count, mean, sum of squared deviations.
struct Moments {
  double n = 0, mean = 0, m2 = 0;
};

struct Tile {
  std::int64_t rows = 0, cols = 0, stride = 0;
  std::int64_t group_width = 1;  // channels-last: channels per group (cols is a multiple)
  bool channels_last = false;
  bool silu = false;
  bool stream = false;           // write outputs with non-temporal stores
  // data, already offset to the tile's first element
  const void* x = nullptr;
  const void* skip = nullptr;    // optional: x + skip (+ skip_bias) rounded to T
  void* y = nullptr;             // forward output
  void* sum_out = nullptr;       // optional: the rounded x + skip
  const void* dy = nullptr;      // backward
  void* dx = nullptr;
  // per-channel arrays (type A)
  const void* skip_bias = nullptr;
  const void* mean = nullptr;    // group mean of the channel's group
  const void* scale = nullptr;   // weight * rstd
  const void* shift = nullptr;   // bias
  const void* dx_xc = nullptr;     // backward: dx = scale*dz + dx_xc*(x-mean) + dx_shift
  const void* dx_shift = nullptr;
  void* scratch = nullptr;       // channels-last: worker_scratch(cols) elements of A
  // channels-last: prefetch the rows ahead of the four-row walks (a hint
  // only: results never depend on it)
  bool prefetch_rows = false;
};

// Elements of A a worker's channels-last scratch holds for tiles `cols` wide:
// the moments' three arrays (and three more for a group's exact redo), or the
// apply's channel parameters repeated into rings of cols + 16 (five at most).
constexpr std::int64_t worker_scratch(std::int64_t cols) { return 6 * cols + 128; }

struct KernelSet {
  // Moments of the tile. Channels-first: one Moments (the tile lies in one group).
  // Channels-last: one Moments per group of the tile's columns.
  void (*moments)(const Tile&, Moments* out);
  // y = act((x - mean) * scale + shift); also writes sum_out when asked.
  void (*apply)(const Tile&);
  // Channels-first only: apply(a) and moments(m, out) in one walk, for two
  // tiles of the same geometry (a without sum_out); results as the two calls.
  void (*apply_moments)(const Tile& a, const Tile& m, Moments* out);
  // Per channel of the tile: db += sum dz, ds += sum dz * (x - mean),
  // dz = dy (through silu when asked). db/ds are indexed like the channels.
  void (*backward_sums)(const Tile&, double* db, double* ds);
  // dx = scale * dz + dx_xc * (x - mean) + dx_shift.
  void (*backward_apply)(const Tile&);
  // Channels-first only: backward_apply(a) and backward_sums(m, db, ds) in one
  // walk, for two tiles of the same geometry; results as the two calls.
  void (*backward_apply_sums)(const Tile& a, const Tile& m, double* db, double* ds);
};

struct IsaKernels {
  const char* name;
  KernelSet by_dtype[4];  // indexed by DType
};

}  // namespace detail
}  // namespace groupnorm
