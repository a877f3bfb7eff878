// Exact statistics of one group (exact.hpp).
#include "exact.hpp"

#include <limits>

#include "scalar.hpp"

namespace groupnorm {
namespace detail {

template <class A>
GroupStats exact_group_stats(const Problem& p, const ForwardArgs& a, const Plan& pl, const A* skip_bias,
                             std::int64_t ng) {
  const std::int64_t n = ng / pl.G, g = ng % pl.G;
  const std::int64_t c0 = g * pl.group_channels;
  auto value = [&](std::int64_t c, std::int64_t sp) {
    const std::int64_t i = pl.channels_last ? (n * pl.S + sp) * pl.C + c : (n * pl.C + c) * pl.S + sp;
    A v = (A)load_scalar(a.x, p.dtype, i);
    if (a.skip) {
      v = v + (A)load_scalar(a.skip, p.dtype, i);
      if (a.skip_bias) v = v + skip_bias[c];
      v = (A)round_to_storage(p.dtype, v);
    }
    return (double)v;
  };
  auto each = [&](auto f) {
    for (std::int64_t c = c0; c < c0 + pl.group_channels; ++c)
      for (std::int64_t sp = 0; sp < pl.S; ++sp) f(value(c, sp));
  };
  const double count = (double)pl.group_channels * (double)pl.S;
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

template GroupStats exact_group_stats<float>(const Problem&, const ForwardArgs&, const Plan&, const float*,
                                             std::int64_t);
template GroupStats exact_group_stats<double>(const Problem&, const ForwardArgs&, const Plan&, const double*,
                                              std::int64_t);

}  // namespace detail
}  // namespace groupnorm
