// The split-phase calls that work on statistics alone, not on data: the
// merges of moments and of backward sums from several tiles, and mean/rstd of
// merged moments. (The split-phase calls on data run the forward and backward
// passes: forward.cpp, backward.cpp.)
#include <cmath>
#include <cstdint>
#include <string>

#include "groupnorm/groupnorm.hpp"
#include "../rules.hpp"
#include "scalar.hpp"
#include "split.hpp"

namespace groupnorm {

using detail::check_counts;
using detail::fail;

Result merge_moments(std::int64_t size, std::int64_t parts, const std::int64_t* const* counts,
                     const double* const* means, const double* const* m2s, std::int64_t* count, double* mean,
                     double* m2) {
  if (size < 0) return fail(Status::invalid_size, "size must be >= 0, got " + std::to_string(size));
  if (parts < 0) return fail(Status::invalid_size, "parts must be >= 0, got " + std::to_string(parts));
  if (size == 0) return {};
  if (!count || !mean || !m2) return fail(Status::null_pointer, "the count, mean and m2 outputs are required");
  if (parts > 0 && (!counts || !means || !m2s)) return fail(Status::null_pointer, "the part arrays are null");
  for (std::int64_t j = 0; j < parts; ++j) {
    if (!counts[j] || !means[j] || !m2s[j])
      return fail(Status::null_pointer, "part " + std::to_string(j) + " has a null array");
    Result r = check_counts(counts[j], size, "part " + std::to_string(j) + " count");
    if (!r) return r;
  }
  // counts add as integers (a double loses them above 2^53), checked before anything is written
  for (std::int64_t i = 0; i < size; ++i) {
    std::int64_t total = 0;
    for (std::int64_t j = 0; j < parts; ++j)
      if (__builtin_add_overflow(total, counts[j][i], &total))
        return fail(Status::size_overflow, "the merged count of entry " + std::to_string(i) +
                                               " does not fit in int64 (parts 0.." + std::to_string(j) + ")");
  }
  for (std::int64_t i = 0; i < size; ++i) {
    detail::Moments acc;
    std::int64_t total = 0;
    for (std::int64_t j = 0; j < parts; ++j) {
      detail::Moments b;
      b.n = (double)counts[j][i]; b.mean = means[j][i]; b.m2 = m2s[j][i];
      detail::chan_merge(acc, b);
      total += counts[j][i];
    }
    count[i] = total; mean[i] = acc.mean; m2[i] = acc.m2;
  }
  return {};
}

Result mean_rstd(std::int64_t size, const std::int64_t* count, const double* mean, const double* m2, double eps,
                 DType dtype, void* mean_out, void* rstd_out) {
  if (size < 0) return fail(Status::invalid_size, "size must be >= 0, got " + std::to_string(size));
  if (!std::isfinite(eps) || eps < 0)
    return fail(Status::invalid_eps, "eps must be finite and >= 0, got " + std::to_string(eps));
  if ((int)dtype < 0 || (int)dtype > 3) return fail(Status::invalid_dtype, "unknown dtype code " + std::to_string((int)dtype));
  if (size == 0) return {};
  if (!count || !mean || !m2) return fail(Status::null_pointer, "count, mean and m2 are required");
  Result r = check_counts(count, size, "count");
  if (!r) return r;
  const DType st = stats_dtype(dtype);
  for (std::int64_t i = 0; i < size; ++i) {
    const detail::GivenGroup g = detail::group_of_moments(count[i], mean[i], m2[i], eps);
    if (mean_out) detail::store_scalar(mean_out, st, i, g.mean);
    if (rstd_out) detail::store_scalar(rstd_out, st, i, g.rstd);
  }
  return {};
}

Result merge_backward_sums(std::int64_t size, std::int64_t parts, const double* const* sum_dz,
                           const double* const* sum_dz_xc, double* out_dz, double* out_dz_xc) {
  if (size < 0) return fail(Status::invalid_size, "size must be >= 0, got " + std::to_string(size));
  if (parts < 0) return fail(Status::invalid_size, "parts must be >= 0, got " + std::to_string(parts));
  if (size == 0) return {};
  if (!out_dz || !out_dz_xc) return fail(Status::null_pointer, "the outputs are required");
  if (parts > 0 && (!sum_dz || !sum_dz_xc)) return fail(Status::null_pointer, "the part arrays are null");
  for (std::int64_t j = 0; j < parts; ++j)
    if (!sum_dz[j] || !sum_dz_xc[j]) return fail(Status::null_pointer, "part " + std::to_string(j) + " has a null array");
  for (std::int64_t i = 0; i < size; ++i) {
    double d = 0, q = 0;
    for (std::int64_t j = 0; j < parts; ++j) { d += sum_dz[j][i]; q += sum_dz_xc[j][i]; }
    out_dz[i] = d; out_dz_xc[i] = q;
  }
  return {};
}

}  // namespace groupnorm
