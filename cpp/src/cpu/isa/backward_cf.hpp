// One target's channels-first backward kernels (part of kernels.cpp: entries.hpp).
#pragma once

#include "../generic/channels_first_backward.hpp"
#include "entries.hpp"

namespace groupnorm {
namespace detail {
namespace GN_ISA_NS {

template <class T> void backward_sums_cf(const Tile& t, double* db, double* ds) {
  (t.silu ? cf_backward_sums<T, true> : cf_backward_sums<T, false>)(t, db, ds);
}
template <class T> void backward_apply_cf(const Tile& t) {
  (t.silu ? cf_backward_apply<T, true> : cf_backward_apply<T, false>)(t);
}
template <class T> void backward_apply_sums_cf(const Tile& a, const Tile& m, double* db, double* ds) {
  (a.silu ? cf_backward_apply_sums<T, true> : cf_backward_apply_sums<T, false>)(a, m, db, ds);
}

#define GN_INSTANTIATE(T)                                              \
  template void backward_sums_cf<T>(const Tile&, double*, double*);    \
  template void backward_apply_cf<T>(const Tile&);                     \
  template void backward_apply_sums_cf<T>(const Tile&, const Tile&, double*, double*);
GN_INSTANTIATE(GN_DTYPE)
#undef GN_INSTANTIATE

}  // namespace GN_ISA_NS
}  // namespace detail
}  // namespace groupnorm
