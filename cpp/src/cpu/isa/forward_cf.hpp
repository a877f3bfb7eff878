// One target's channels-first forward kernels (part of kernels.cpp: entries.hpp).
#pragma once

#include "../generic/channels_first_forward.hpp"
#include "entries.hpp"

namespace groupnorm {
namespace detail {
namespace GN_ISA_NS {

template <class T> void moments_cf(const Tile& t, Moments* out) {
  (t.skip ? cf_moments<T, true> : cf_moments<T, false>)(t, out);
}
template <class T, bool SKIP> void apply_cf_(const Tile& t) {
  (t.silu ? cf_apply<T, SKIP, true> : cf_apply<T, SKIP, false>)(t);
}
template <class T> void apply_cf(const Tile& t) { (t.skip ? apply_cf_<T, true> : apply_cf_<T, false>)(t); }
template <class T, bool SKIP> void apply_moments_cf_(const Tile& a, const Tile& m, Moments* out) {
  (a.silu ? cf_apply_moments<T, SKIP, true> : cf_apply_moments<T, SKIP, false>)(a, m, out);
}
template <class T> void apply_moments_cf(const Tile& a, const Tile& m, Moments* out) {
  (m.skip ? apply_moments_cf_<T, true> : apply_moments_cf_<T, false>)(a, m, out);
}

#define GN_INSTANTIATE(T)                                  \
  template void moments_cf<T>(const Tile&, Moments*);      \
  template void apply_cf<T>(const Tile&);                  \
  template void apply_moments_cf<T>(const Tile&, const Tile&, Moments*);
GN_INSTANTIATE(GN_DTYPE)
#undef GN_INSTANTIATE

}  // namespace GN_ISA_NS
}  // namespace detail
}  // namespace groupnorm
