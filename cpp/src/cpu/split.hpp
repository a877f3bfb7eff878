// Internal: the statistics rule the split-phase calls share with forward().
#pragma once

#include <cstdint>
#include <limits>

#include "../chan.hpp"
#include "kernels.hpp"

namespace groupnorm {
namespace detail {

// mean and rstd of a group's merged moments, as forward() computes them: a
// group with count 0 has a NaN mean. constant: m2 is 0.
struct GivenGroup {
  double mean, rstd;
  bool constant;
};
inline GivenGroup group_of_moments(std::int64_t count, double mean, double m2, double eps) {
  Moments m;
  m.n = (double)count; m.mean = mean; m.m2 = m2;
  return {count == 0 ? std::numeric_limits<double>::quiet_NaN() : mean, chan_rstd(m, eps), m2 == 0};
}

}  // namespace detail
}  // namespace groupnorm
