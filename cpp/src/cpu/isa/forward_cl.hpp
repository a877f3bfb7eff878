// One target's channels-last forward kernels (part of kernels.cpp: entries.hpp).
#pragma once

#include "../generic/channels_last_forward.hpp"
#include "entries.hpp"

namespace groupnorm {
namespace detail {
namespace GN_ISA_NS {

template <class T> void moments_cl(const Tile& t, Moments* out) {
  (t.skip ? cl_moments<T, true> : cl_moments<T, false>)(t, out);
}
template <class T, bool SKIP> void apply_cl_(const Tile& t) {
  (t.silu ? cl_apply<T, SKIP, true> : cl_apply<T, SKIP, false>)(t);
}
template <class T> void apply_cl(const Tile& t) { (t.skip ? apply_cl_<T, true> : apply_cl_<T, false>)(t); }

#define GN_INSTANTIATE(T)                              \
  template void moments_cl<T>(const Tile&, Moments*);  \
  template void apply_cl<T>(const Tile&);
GN_INSTANTIATE(GN_DTYPE)
#undef GN_INSTANTIATE

}  // namespace GN_ISA_NS
}  // namespace detail
}  // namespace groupnorm
