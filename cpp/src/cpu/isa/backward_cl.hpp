// One target's channels-last backward kernels (part of kernels.cpp: entries.hpp).
#pragma once

#include "../generic/channels_last_backward.hpp"
#include "entries.hpp"

namespace groupnorm {
namespace detail {
namespace GN_ISA_NS {

template <class T> void backward_sums_cl(const Tile& t, double* db, double* ds) {
  (t.silu ? cl_backward_sums<T, true> : cl_backward_sums<T, false>)(t, db, ds);
}
template <class T> void backward_apply_cl(const Tile& t) {
  (t.silu ? cl_backward_apply<T, true> : cl_backward_apply<T, false>)(t);
}

#define GN_INSTANTIATE(T)                                             \
  template void backward_sums_cl<T>(const Tile&, double*, double*);   \
  template void backward_apply_cl<T>(const Tile&);
GN_INSTANTIATE(GN_DTYPE)
#undef GN_INSTANTIATE

}  // namespace GN_ISA_NS
}  // namespace detail
}  // namespace groupnorm
