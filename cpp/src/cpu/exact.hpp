// Internal: exact statistics of one group, the rare path for data at the
// edges of the dtype's range (exact.cpp).
#pragma once

#include <cmath>
#include <cstdint>

#include "groupnorm/groupnorm.hpp"
#include "kernels.hpp"
#include "plan.hpp"

namespace groupnorm {
namespace detail {

struct GroupStats {
  double mean, m2, rstd;
  double center;  // what the apply subtracts in A: the mean, or the middle of
                  // the data's range when x - mean could overflow A
  bool constant;  // every value of the group is the same
};

// Below this, var + eps may have lost its precision in the fast sums (squares
// of deviations under A's normal range).
template <class A> struct kTinyVar;
template <> struct kTinyVar<float> { static constexpr double value = 0x1p-100; };
template <> struct kTinyVar<double> { static constexpr double value = 0x1p-1000; };

// Whether merged moments need the exact redo: the fast sums overflowed A (|x|
// beyond ~1e19 in float), or the variance is below A's normal range, or the
// data holds NaN/Inf.
template <class A> bool needs_exact(const Moments& m, double eps) {
  const double var = m.m2 / m.n;
  return !(std::isfinite(m.mean) && std::isfinite(var)) || !(var + eps >= kTinyVar<A>::value);
}

// The statistics of group ng element by element, in double, on the values
// scaled by a power of two so that neither squares nor sums can overflow or
// underflow. The values are those the kernels normalize (x + skip (+
// skip_bias), rounded to the dtype). Depends on the group's data only, like
// the fast path.
template <class A>
GroupStats exact_group_stats(const Problem& p, const ForwardArgs& a, const Plan& pl, const A* skip_bias,
                             std::int64_t ng);

}  // namespace detail
}  // namespace groupnorm
