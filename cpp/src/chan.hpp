// Internal: Chan et al.'s pairwise merge of partial moments, the one copy of
// this formula for the CPU (Moments) and CUDA (Part) code. M is any struct with
// double fields n (count), mean and m2 (sum of squared deviations); callers
// apply it in a fixed order so that results are deterministic.
#pragma once

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

}  // namespace detail
}  // namespace groupnorm
