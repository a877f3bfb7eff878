// Internal: the statistics math shared by the CPU (Moments) and CUDA (Part)
// code, one copy of each formula: Chan et al.'s pairwise merge of partial
// moments, rstd of merged moments, and the fold of mean, rstd, weight and bias
// into per-channel coefficients. M is any struct with double fields n (count),
// mean and m2 (sum of squared deviations); callers merge in a fixed order so
// that results are deterministic.
#pragma once

#include <math.h>

#if defined(__CUDACC__)
#define GN_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define GN_HOST_DEVICE inline
#endif

namespace groupnorm {
namespace detail {

template <class M> GN_HOST_DEVICE void chan_merge(M& a, const M& b) {
  if (b.n == 0) return;
  if (a.n == 0) { a = b; return; }
  const double n = a.n + b.n;
  const double d = b.mean - a.mean;
  a.mean += d * (b.n / n);
  a.m2 += b.m2 + d * d * (a.n * b.n / n);
  a.n = n;
}

// rstd = 1 / sqrt(var + eps) of merged moments, var = m2 / n (biased).
template <class M> GN_HOST_DEVICE double chan_rstd(const M& m, double eps) { return 1.0 / sqrt(m.m2 / m.n + eps); }

// y = (x - hi) * scale + shift == w * (x - mean) * rstd + b, in the accumulation
// type A. hi is the mean rounded to A; the part of the mean that A cannot hold
// (lo) goes into the shift, so a large offset costs no accuracy.
template <class A>
GN_HOST_DEVICE void fold_coefficients(double mean, double rstd, double w, double b, A& hi, A& scale, A& shift) {
  hi = (A)mean;
  const double lo = mean - (double)hi;
  scale = (A)(w * rstd);
  shift = (A)(b - lo * (w * rstd));
}

}  // namespace detail
}  // namespace groupnorm
