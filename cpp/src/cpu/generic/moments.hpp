// Part of the generic kernels (cpu/generic/): partial moments of a tile from
// one pass of shifted sums. With a shift K (the tile's first element, or per
// group of a channels-last tile), sum d = x - K and d*d; then
//   mean = K + sum(d)/n,  M2 = sum(d*d) - sum(d)^2/n.
// When K turns out far from the mean (shift_ok() fails: the cancellation in M2
// would cost more than 6 bits) the tile is redone with the exact two-pass sums
// (its own mean first, then deviations from it). Tiles then merge with Chan's
// formula in a fixed order (cpu/walk.hpp).
#pragma once

#include "../kernels.hpp"
#include "namespace.hpp"

GN_KERNELS_BEGIN

// Moments from sums of deviations from `shift`.
inline Moments shifted_moments(double n, double shift, double sd, double q) {
  Moments mo;
  mo.n = n;
  mo.mean = shift + sd / n;
  mo.m2 = q - sd * sd / n;
  if (mo.m2 < 0) mo.m2 = 0;  // rounding; NaN stays NaN
  return mo;
}

// Accept moments from sums shifted by K when the shift was close to the mean:
// n*(mean-K)^2 <= 64*M2 keeps the cancellation in M2 = q - sd^2/n below
// 6 bits. Otherwise the caller falls back to the exact two-pass sums.
inline bool shift_ok(double n, double sd, double q) {
  const double m2 = q - sd * sd / n;
  return !(sd * sd / n > 64.0 * m2);  // NaN data: accepted (stays NaN)
}

GN_KERNELS_END
